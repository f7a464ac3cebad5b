"""The request timeout and memory rules (prefork.watchdog), with a fake scoreboard and
fake memory readings: no fork, no clock."""

from __future__ import annotations

from prefork.figures import WorkerState, WorkerStats
from prefork.pool import WorkerRecord
from prefork.watchdog import MEMORY_CHECK_INTERVAL, Watchdog

MiB = 2**20


def stats(state: WorkerState = WorkerState.IDLE, started: float = 0.0) -> WorkerStats:
    return WorkerStats(
        slot=0,
        pid=1,
        number=0,
        generation=0,
        state=state,
        requests=0,
        denied=0,
        request_started=started,
        booted_at=0.0,
    )


class FakeScoreboard:
    """Slot readings by slot number."""

    def __init__(self) -> None:
        self.slots: dict[int, WorkerStats] = {}

    def read(self, slot: int) -> WorkerStats:
        return self.slots.get(slot, stats())


def record(slot: int, *, booted: bool = True, spawned_at: float = 0.0, pid: int = 0) -> WorkerRecord:
    return WorkerRecord(slot, 0, slot, spawned_at, pid=pid or 100 + slot, booted=booted)


def test_a_worker_busy_past_the_request_timeout_is_named_and_an_idle_one_never() -> None:
    board = FakeScoreboard()
    busy, idle, recent = record(0), record(1), record(2)
    board.slots[0] = stats(WorkerState.BUSY, started=100.0)
    board.slots[1] = stats(WorkerState.IDLE, started=0.0)
    board.slots[2] = stats(WorkerState.BUSY, started=125.0)
    watchdog = Watchdog(30.0, 0, board.read)
    verdicts = watchdog.timed_out([busy, idle, recent], now=130.0)
    assert [v.record for v in verdicts] == [busy]
    assert "busy on one request for 30.0 s (request_timeout 30 s)" in verdicts[0].reason
    assert watchdog.deadlines([busy, idle, recent]) == [130.0, 155.0]


def test_a_worker_booting_past_the_request_timeout_is_named() -> None:
    watchdog = Watchdog(5.0, 0, FakeScoreboard().read)
    slow = record(0, booted=False, spawned_at=10.0)
    assert watchdog.timed_out([slow], now=14.9) == []
    (verdict,) = watchdog.timed_out([slow], now=15.0)
    assert verdict.reason == "did not boot within 5 s"
    assert watchdog.deadlines([slow]) == [15.0]


def test_an_aborted_worker_is_not_named_again() -> None:
    board = FakeScoreboard()
    board.slots[0] = stats(WorkerState.BUSY, started=1.0)
    aborted = record(0)
    aborted.aborted = True
    watchdog = Watchdog(1.0, 0, board.read)
    assert watchdog.timed_out([aborted], now=100.0) == []
    assert watchdog.deadlines([aborted]) == []


def test_no_request_timeout_names_nobody() -> None:
    board = FakeScoreboard()
    board.slots[0] = stats(WorkerState.BUSY, started=1.0)
    watchdog = Watchdog(0.0, 0, board.read)
    assert watchdog.timed_out([record(0), record(1, booted=False)], now=1e6) == []
    assert watchdog.deadlines([record(0)]) == []


def test_memory_is_checked_once_per_interval_and_names_workers_over_the_limit() -> None:
    sizes = {100: 600 * MiB, 101: 100 * MiB, 102: None}
    reads: list[int] = []

    def memory_of(pid: int) -> int | None:
        reads.append(pid)
        return sizes[pid]

    watchdog = Watchdog(0.0, 512 * MiB, FakeScoreboard().read, memory_of)
    large, small, gone = record(0), record(1), record(2)
    (verdict,) = watchdog.too_large([large, small, gone], now=50.0)
    assert verdict.record is large
    assert verdict.reason.startswith("uses 600.0 MiB, over max_worker_memory (512.0 MiB)")
    assert watchdog.too_large([large], now=50.0 + MEMORY_CHECK_INTERVAL / 2) == []
    assert reads == [100, 101, 102]
    assert watchdog.deadlines([]) == [50.0 + MEMORY_CHECK_INTERVAL]
    large.stop(60.0)  # already stopping: not named again
    assert watchdog.too_large([large], now=50.0 + MEMORY_CHECK_INTERVAL) == []


def test_no_memory_limit_reads_nothing() -> None:
    def memory_of(pid: int) -> int | None:
        raise AssertionError("read")

    watchdog = Watchdog(0.0, 0, FakeScoreboard().read, memory_of)
    assert watchdog.too_large([record(0)], now=1.0) == []
    assert watchdog.deadlines([record(0)]) == []


def test_a_limit_below_a_fresh_worker_is_said_once() -> None:
    board = FakeScoreboard()  # every slot: 0 requests served
    watchdog = Watchdog(0.0, 10 * MiB, board.read, lambda pid: 50 * MiB)
    first = watchdog.too_large([record(0), record(1)], now=1.0)
    assert [("fresh worker" in v.reason) for v in first] == [True, False]
    later = watchdog.too_large([record(2)], now=1.0 + MEMORY_CHECK_INTERVAL)
    assert "fresh worker" not in later[0].reason
