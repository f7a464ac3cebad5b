"""The master's record of each worker, and the questions the master asks of the pool.

A :class:`WorkerRecord` is what the master knows of one worker process (its number, pid,
boot state, stop deadline); it is not the worker process's own object
(:class:`prefork.workers.Worker`, built in the child after the fork). :class:`Pool` holds the
records and answers the master's questions (which numbers are missing, which workers to
retire, which serve, when the next deadline is); :class:`BootBackoff` counts boot failures
and spaces the attempts. Nothing here makes a system call or reads a clock: the master passes
the time in, so these rules are tested without forking (``tests/test_pool.py``).

A worker's life, as the master records it::

    spawned (booted False) --READY--> serving (booted) --stop()--> stopping --kill()--> killed
        \\--exit before READY: a boot failure, unless the master stopped it first

``aborted`` marks a worker sent SIGABRT by the request timeout (it is also stopping).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator

#: Consecutive boot failures after which the master gives up (stops the pool, or a reload).
MAX_BOOT_FAILURES = 5
#: Delay before forking again after the first boot failure, doubled after each further one.
BOOT_BACKOFF = 0.1
#: Longest delay between boot attempts (seconds).
BOOT_BACKOFF_MAX = 5.0


class WorkerRecord:
    """The master's record of one worker process. Lives in the master only.

    ``number`` is K in 0 .. workers-1 (a replacement reuses it); ``generation`` the reload
    count it was forked in; ``slot`` its scoreboard slot; ``spawned_at`` the monotonic time
    (seconds) of its fork; ``pid`` and ``pidfd`` (-1: none) its process. A class with
    ``__slots__`` written out rather than ``@dataclass(slots=True)``: ``dataclasses`` imports
    ``inspect``, 10 ms of the command's start-up (docs/performance.md).
    """

    __slots__ = (
        "aborted",
        "boot_error",
        "booted",
        "generation",
        "killed",
        "max_requests",
        "number",
        "pid",
        "pidfd",
        "slot",
        "spawned_at",
        "stop_cause",
        "stop_deadline",
    )

    def __init__(
        self,
        number: int,
        generation: int,
        slot: int,
        spawned_at: float,
        pid: int = 0,
        *,
        booted: bool = False,
    ) -> None:
        self.number = number
        self.generation = generation
        self.slot = slot
        self.spawned_at = spawned_at
        self.pid = pid
        self.pidfd = -1
        #: The worker reported READY.
        self.booted = booted
        #: The cause it reported (BOOT_ERROR) or the master found when it failed to boot.
        self.boot_error = ""
        #: Monotonic time at which a stopping worker gets SIGKILL; None while not stopping.
        self.stop_deadline: float | None = None
        #: Sent SIGABRT by the request timeout.
        self.aborted = False
        #: Sent SIGKILL (its stop deadline passed).
        self.killed = False
        #: Requests after which it exits by itself (``max_requests`` plus its jitter; 0: never).
        self.max_requests = 0
        #: Why the master stopped it ("reload", "resize", "memory"; None: the pool stops).
        self.stop_cause: str | None = None

    def __repr__(self) -> str:
        state = (
            "killed"
            if self.killed
            else "stopping"
            if self.stopping
            else "serving"
            if self.booted
            else "booting"
        )
        return f"<WorkerRecord {self.number} pid={self.pid} gen={self.generation} {state}>"

    @property
    def stopping(self) -> bool:
        """The master told it to stop (TERM, QUIT, ABRT or KILL)."""
        return self.stop_deadline is not None

    @property
    def serving(self) -> bool:
        """Booted and not told to stop."""
        return self.booted and self.stop_deadline is None

    def stop(self, deadline: float, cause: str | None = None) -> None:
        """Record a stop signal: it gets SIGKILL at ``deadline`` (monotonic seconds) unless an
        earlier deadline is already set. The first ``cause`` given is kept (see
        :func:`prefork.stats.exit_cause`)."""
        if self.stop_deadline is None or deadline < self.stop_deadline:
            self.stop_deadline = deadline
        self.stop_cause = self.stop_cause or cause

    def failed_to_boot(self) -> bool:
        """Whether its exit is a boot failure: it never reported READY, and the master had
        not told it to stop (but for the request timeout, which counts)."""
        return not self.booted and (self.stop_deadline is None or self.aborted)


class Pool:
    """The master's records of its live (not yet reaped) workers, by pid.

    The questions the master asks are methods; each takes the state it converges to (the
    pool ``size``, the current ``generation``) or the time (``now``, monotonic seconds).
    """

    def __init__(self) -> None:
        self._by_pid: dict[int, WorkerRecord] = {}

    def __len__(self) -> int:
        return len(self._by_pid)

    def __iter__(self) -> Iterator[WorkerRecord]:
        """The records, in order of forking (a copy: the pool may change while iterating)."""
        return iter(list(self._by_pid.values()))

    def add(self, record: WorkerRecord) -> None:
        """Add the record of a forked worker (its ``pid`` set)."""
        self._by_pid[record.pid] = record

    def remove(self, record: WorkerRecord) -> None:
        """Drop the record of a reaped worker."""
        del self._by_pid[record.pid]

    def get(self, pid: int) -> WorkerRecord | None:
        """The record of the worker ``pid``, or None when it is not ours (or reaped)."""
        return self._by_pid.get(pid)

    def missing(self, size: int, generation: int) -> list[int]:
        """The numbers 0 .. ``size``-1 that have no worker of ``generation`` to fork one for.

        A worker told to stop no longer counts, except one aborted while booting: it is
        replaced after its exit is counted as a boot failure (so the backoff applies).
        """
        present = {
            r.number
            for r in self._by_pid.values()
            if r.generation == generation and (r.stop_deadline is None or (r.aborted and not r.booted))
        }
        return [number for number in range(size) if number not in present]

    def ready_numbers(self, generation: int, *, serving: bool = False) -> set[int]:
        """The numbers whose worker of ``generation`` reported READY (with ``serving``: and
        has not been told to stop)."""
        return {
            r.number
            for r in self._by_pid.values()
            if r.generation == generation and r.booted and not (serving and r.stopping)
        }

    def to_retire(self, size: int, generation: int) -> list[WorkerRecord]:
        """Workers to stop gracefully: those numbered ``size`` or above (the pool shrank,
        TTOU), and those of an older generation whose replacement (same number, current
        ``generation``) has reported READY (the rolling reload of HUP). Workers already
        stopping are left out."""
        ready = self.ready_numbers(generation)
        return [
            r
            for r in self._by_pid.values()
            if r.stop_deadline is None
            and (r.number >= size or (r.generation != generation and r.number in ready))
        ]

    def serving(self) -> list[WorkerRecord]:
        """Workers that booted and have not been told to stop."""
        return [r for r in self._by_pid.values() if r.serving]

    def stop_deadlines(self) -> list[float]:
        """The SIGKILL deadlines of the stopping workers not yet killed."""
        return [
            r.stop_deadline for r in self._by_pid.values() if r.stop_deadline is not None and not r.killed
        ]

    def late(self, now: float) -> list[WorkerRecord]:
        """Stopping workers whose deadline has passed at ``now`` and that are not killed yet."""
        return [
            r
            for r in self._by_pid.values()
            if r.stop_deadline is not None and r.stop_deadline <= now and not r.killed
        ]


class BootVerdict(enum.Enum):
    """What a boot failure means once counted (see :func:`judge_boot_failure`)."""

    RETRY = "retry"  # fork again after the backoff
    RELOAD_FAILED = "reload failed"  # new workers of a reload keep failing: old ones serve on
    DEGRADED = "degraded"  # replacements keep failing while others serve: retry every 5 s
    HALT = "halt"  # nothing serves and workers keep failing: stop the pool


def judge_boot_failure(
    record: WorkerRecord, serving: list[WorkerRecord], backoff: BootBackoff
) -> BootVerdict:
    """The verdict on ``record``'s boot failure, counted in ``backoff``, while ``serving``
    workers serve: retry until the backoff is exhausted; then a failed reload if ``record``
    is of a newer generation than every serving worker, a degraded pool if workers of its
    generation serve (a replacement cannot boot: the file on disk broke after they
    started), and a halt if nothing serves."""
    if not backoff.exhausted:
        return BootVerdict.RETRY
    if not serving:
        return BootVerdict.HALT
    if record.generation > max(r.generation for r in serving):
        return BootVerdict.RELOAD_FAILED
    return BootVerdict.DEGRADED


class BootBackoff:
    """Counts consecutive boot failures and spaces the boot attempts after them.

    Workers forked in the same round (before the previous failure was seen) count once, so a
    pool of 8 workers that all fail counts one failure, not 8. The delay before the next
    attempt doubles from ``first`` (seconds) up to ``longest``; after ``limit`` failures in a
    row :attr:`exhausted` is True. A worker that reports READY resets the count.
    """

    def __init__(
        self, limit: int = MAX_BOOT_FAILURES, first: float = BOOT_BACKOFF, longest: float = BOOT_BACKOFF_MAX
    ) -> None:
        self.limit = limit
        self.first = first
        self.longest = longest
        #: Boot failures in a row.
        self.failures = 0
        #: Monotonic time of the last boot failure.
        self.last_failure = -math.inf

    def failed(self, record: WorkerRecord, now: float) -> None:
        """Count the boot failure of ``record``, seen at ``now`` (monotonic seconds), unless
        the worker was forked before the previous failure was seen (same round)."""
        if record.spawned_at > self.last_failure:
            self.failures += 1
        self.last_failure = now

    def failed_now(self, now: float) -> None:
        """Count one failure at ``now`` (monotonic seconds), whatever the round: for failures
        that are not a worker's, such as fork() failing."""
        self.failures += 1
        self.last_failure = now

    def succeeded(self) -> None:
        """A worker booted: failures in a row start again from 0."""
        self.failures = 0

    @property
    def exhausted(self) -> bool:
        """``limit`` failures in a row."""
        return self.failures >= self.limit

    def next_attempt(self) -> float:
        """The monotonic time before which no worker is forked (-inf without failures)."""
        if not self.failures:
            return -math.inf
        return self.last_failure + min(self.first * 2.0 ** (self.failures - 1), self.longest)

    def waiting(self, now: float) -> bool:
        """Whether forking must wait at ``now`` because of recent failures."""
        return bool(self.failures) and now < self.next_attempt()
