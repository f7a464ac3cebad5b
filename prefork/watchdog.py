"""The request timeout and the memory limit: which workers to stop, and why.

The :class:`Watchdog` reads the master's records (:mod:`prefork.pool`) and the workers'
scoreboard slots, and returns :class:`Verdict` s; the master acts on them (SIGABRT for a
request timeout, a graceful stop for memory) and logs. It sends no signal itself, and takes
the time and the memory reader as arguments, so its rules are tested with a fake clock and
fake readings (``tests/test_watchdog.py``).

The promises (docs/supervision.md): a worker busy on one request, or booting, for
``request_timeout`` seconds is aborted, and idle workers never are (as gunicorn's timeout);
a worker whose resident memory is over ``max_worker_memory`` bytes is recycled after its
request, checked about once a second (as uWSGI's reload-on-rss).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

from prefork.figures import WorkerState, WorkerStats
from prefork.pool import WorkerRecord

#: Seconds between two checks of the workers' memory (max_worker_memory).
MEMORY_CHECK_INTERVAL = 1.0


class Verdict(NamedTuple):
    """A worker to stop, and why (a sentence for the log: "has been busy on one request ...")."""

    record: WorkerRecord
    reason: str


def rss_of(pid: int) -> int | None:
    """The resident memory (bytes) of process ``pid`` (psutil), or None when it is gone."""
    import psutil  # here: only a pool with max_worker_memory pays for importing it

    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


class Watchdog:
    """Checks the workers against ``request_timeout`` (seconds; 0: off) and
    ``max_worker_memory`` (bytes; 0: off). Used by the master, in the master.

    ``read_slot`` returns a scoreboard slot's reading (:meth:`Scoreboard.read
    <prefork.scoreboard.Scoreboard.read>`); ``memory_of`` a worker's memory in bytes by pid
    (None: gone), by default its RSS.
    """

    def __init__(
        self,
        request_timeout: float,
        max_worker_memory: int,
        read_slot: Callable[[int], WorkerStats],
        memory_of: Callable[[int], int | None] = rss_of,
    ) -> None:
        self.request_timeout = request_timeout
        self.max_worker_memory = max_worker_memory
        self.read_slot = read_slot
        self.memory_of = memory_of
        #: Monotonic time of the next memory check.
        self.next_memory_check = 0.0
        #: The hint that max_worker_memory is below a fresh worker's size was given.
        self.warned_fresh = False

    def timed_out(self, records: Iterable[WorkerRecord], now: float) -> list[Verdict]:
        """Workers busy on one request (from the scoreboard), or booting, for
        ``request_timeout`` seconds or more at ``now`` (monotonic seconds), not aborted yet.
        Idle workers never time out."""
        limit = self.request_timeout
        if not limit:
            return []
        verdicts = []
        for record in records:
            if record.aborted:
                continue
            if not record.booted:
                if now - record.spawned_at >= limit:
                    verdicts.append(Verdict(record, f"did not boot within {limit:g} s"))
                continue
            busy = self.read_slot(record.slot).busy_for(now)
            if busy >= limit:
                reason = f"has been busy on one request for {busy:.1f} s (request_timeout {limit:g} s)"
                verdicts.append(Verdict(record, reason))
        return verdicts

    def too_large(self, records: Iterable[WorkerRecord], now: float) -> list[Verdict]:
        """Every ``MEMORY_CHECK_INTERVAL`` seconds (else []), the workers not already stopping
        whose memory is over ``max_worker_memory`` bytes. The first such worker that is idle
        and has served no request gets a hint in its reason (once): the limit is below a
        fresh worker's size, so every worker would be recycled each second."""
        limit = self.max_worker_memory
        if not limit or now < self.next_memory_check:
            return []
        self.next_memory_check = now + MEMORY_CHECK_INTERVAL
        verdicts = []
        for record in records:
            if record.stopping:
                continue
            size = self.memory_of(record.pid)
            if size is not None and size > limit:
                reason = f"uses {size / 2**20:.1f} MiB, over max_worker_memory ({limit / 2**20:.1f} MiB)"
                stats = self.read_slot(record.slot)
                if not self.warned_fresh and stats.state is WorkerState.IDLE and not stats.requests:
                    self.warned_fresh = True  # said once: every fresh worker would be recycled
                    reason += "; it served no request yet: max_worker_memory is below a fresh worker's size"
                verdicts.append(Verdict(record, reason))
        return verdicts

    def deadlines(self, records: Iterable[WorkerRecord]) -> list[float]:
        """Monotonic times at which a worker will be over ``request_timeout`` (booting, or
        busy on its current request), and of the next memory check: when the master loop
        must wake at the latest."""
        deadlines = [self.next_memory_check] if self.max_worker_memory else []
        limit = self.request_timeout
        if not limit:
            return deadlines
        for record in records:
            if record.aborted:
                continue
            if not record.booted:
                deadlines.append(record.spawned_at + limit)
                continue
            stats = self.read_slot(record.slot)
            if stats.state is WorkerState.BUSY and stats.request_started >= 1.0:  # see busy_for
                deadlines.append(stats.request_started + limit)
        return deadlines
