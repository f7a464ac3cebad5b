"""The master's bookkeeping rules (prefork.pool), on records alone: no fork, no clock."""

from __future__ import annotations

import math

from prefork.pool import BOOT_BACKOFF, BOOT_BACKOFF_MAX, MAX_BOOT_FAILURES, BootBackoff, Pool, WorkerRecord


def pool_of(*records: WorkerRecord) -> Pool:
    pool = Pool()
    for pid, record in enumerate(records, start=100):
        record.pid = pid
        pool.add(record)
    return pool


def worker(number: int, generation: int = 0, *, booted: bool = True, spawned_at: float = 0.0) -> WorkerRecord:
    return WorkerRecord(number, generation, slot=number, spawned_at=spawned_at, booted=booted)


def test_an_empty_pool_misses_every_number() -> None:
    assert Pool().missing(3, 0) == [0, 1, 2]


def test_a_stopping_worker_is_missing_but_one_aborted_while_booting_is_not() -> None:
    stopping, aborted = worker(0), worker(1, booted=False)
    stopping.stop(10.0)
    aborted.stop(10.0)
    aborted.aborted = True
    pool = pool_of(stopping, aborted, worker(2))
    # Worker 1 is replaced once its exit has counted as a boot failure (and the backoff applies).
    assert pool.missing(3, 0) == [0]


def test_reload_retires_an_old_worker_only_once_its_replacement_is_ready() -> None:
    old0, old1 = worker(0, 0), worker(1, 0)
    new0, new1 = worker(0, 1, booted=True), worker(1, 1, booted=False)
    pool = pool_of(old0, old1, new0, new1)
    assert pool.missing(2, 1) == []
    assert pool.to_retire(2, 1) == [old0]
    new1.booted = True
    assert pool.to_retire(2, 1) == [old0, old1]


def test_a_stopping_worker_is_not_retired_twice() -> None:
    old = worker(0, 0)
    pool = pool_of(old, worker(0, 1))
    old.stop(5.0)
    assert pool.to_retire(1, 1) == []


def test_ttou_retires_the_workers_numbered_beyond_the_size() -> None:
    records = [worker(n) for n in range(4)]
    pool = pool_of(*records)
    assert pool.to_retire(3, 0) == [records[3]]
    assert pool.to_retire(1, 0) == records[1:]
    assert pool.missing(1, 0) == []


def test_ready_numbers_and_serving() -> None:
    ready, booting, stopping = worker(0, 1), worker(1, 1, booted=False), worker(2, 1)
    stopping.stop(1.0)
    pool = pool_of(ready, booting, stopping, worker(3, 0))
    assert pool.ready_numbers(1) == {0, 2}
    assert pool.ready_numbers(1, serving=True) == {0}
    assert pool.serving() == [ready, pool.get(103)]


def test_deadlines_the_earliest_stop_wins_and_a_killed_worker_has_none() -> None:
    first, second = worker(0), worker(1)
    first.stop(5.0)
    first.stop(9.0)  # a later stop does not postpone the kill
    second.stop(7.0)
    pool = pool_of(first, second)
    assert pool.stop_deadlines() == [5.0, 7.0]
    assert pool.late(6.0) == [first]
    first.killed = True
    assert pool.late(6.0) == []
    assert pool.stop_deadlines() == [7.0]


def test_remove_and_get_by_pid() -> None:
    record = worker(0)
    pool = pool_of(record)
    assert pool.get(record.pid) is record and len(pool) == 1
    pool.remove(record)
    assert pool.get(record.pid) is None and not pool


def test_iterating_is_safe_while_removing() -> None:
    pool = pool_of(worker(0), worker(1))
    for record in pool:
        pool.remove(record)
    assert len(pool) == 0


def test_a_boot_failure_is_a_worker_that_exits_before_ready_unless_it_was_stopped() -> None:
    booting = worker(0, booted=False)
    assert booting.failed_to_boot()
    booting.stop(1.0)  # stopped by the master (reload, TTOU): not its fault
    assert not booting.failed_to_boot()
    booting.aborted = True  # aborted by the request timeout while booting: counts
    assert booting.failed_to_boot()
    assert not worker(0).failed_to_boot()


def test_boot_failures_of_one_round_count_once() -> None:
    backoff = BootBackoff()
    round_one = [worker(n, booted=False, spawned_at=0.0) for n in range(8)]
    for index, record in enumerate(round_one):
        backoff.failed(record, now=1.0 + index / 100)
    assert backoff.failures == 1
    backoff.failed(worker(0, booted=False, spawned_at=1.5), now=2.0)  # forked after: a new round
    assert backoff.failures == 2


def test_the_backoff_doubles_up_to_its_longest_and_exhausts_after_the_limit() -> None:
    backoff = BootBackoff()
    assert backoff.next_attempt() == -math.inf and not backoff.waiting(0.0)
    delays = []
    for attempt in range(MAX_BOOT_FAILURES):
        backoff.failed(worker(0, booted=False, spawned_at=attempt * 10.0 + 0.5), now=attempt * 10.0 + 1.0)
        delays.append(round(backoff.next_attempt() - backoff.last_failure, 6))
        assert backoff.waiting(backoff.last_failure) != backoff.waiting(backoff.next_attempt())
    assert delays == [min(BOOT_BACKOFF * 2**n, BOOT_BACKOFF_MAX) for n in range(MAX_BOOT_FAILURES)]
    assert backoff.exhausted
    backoff.succeeded()
    assert not backoff.exhausted and not backoff.waiting(1e9)


def test_the_backoff_never_waits_longer_than_its_longest() -> None:
    backoff = BootBackoff(limit=100, first=1.0, longest=3.0)
    for attempt in range(10):
        backoff.failed(worker(0, booted=False, spawned_at=attempt + 0.5), now=attempt + 1.0)
    assert backoff.next_attempt() - backoff.last_failure == 3.0


def test_judging_a_boot_failure() -> None:
    from prefork.pool import BootVerdict, judge_boot_failure

    backoff = BootBackoff(limit=2)
    old, new = worker(0, 0), worker(0, 1, booted=False, spawned_at=1.0)
    backoff.failed(new, now=2.0)
    assert judge_boot_failure(new, [old], backoff) is BootVerdict.RETRY
    backoff.failed(worker(0, 1, booted=False, spawned_at=3.0), now=4.0)
    assert judge_boot_failure(new, [old], backoff) is BootVerdict.RELOAD_FAILED  # old ones serve
    replacement = worker(1, 0, booted=False, spawned_at=5.0)
    assert judge_boot_failure(replacement, [old], backoff) is BootVerdict.DEGRADED  # same generation
    assert judge_boot_failure(replacement, [], backoff) is BootVerdict.HALT  # nothing serves
