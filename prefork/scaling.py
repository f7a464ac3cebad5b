"""The dynamic pool's rules: when a pool of ``min_workers`` .. ``max_workers`` grows or shrinks.

As Apache's prefork MPM (its ``MinSpareServers`` 1 and spawn rate): a check every
:data:`CHECK_INTERVAL` seconds looks at the scoreboard. The pool is *short* when no worker is
idle and none is booting (nor waiting to be forked); it grows when it was short at two checks
in a row, or at one with connections waiting in the listen queue. A pool of ``thread``
workers is short only with connections queued: its slots say busy while any thread is. It
grows by 1 worker, then, while it stays short, by twice as many each :data:`SPAWN_PERIOD`
(1, 2, 4 ...), at most :data:`MAX_SPAWN_RATE` a second; the rate falls back to 1 once a
period ends with the pool not short. It shrinks slowly: when more than :data:`SPARE_WORKERS`
workers were idle at every check for :data:`SHRINK_INTERVAL` seconds, one worker retires,
and one more each further interval.

Why bounds (``min_workers``, ``max_workers``) and not spare-worker settings: the bounds are
what an operator sizes by (memory caps the top, a warm minimum the bottom), while the spare
count that fits a prefork pool of sync workers is 1 (one idle worker takes the next
connection at once), so it is a rule here, not a setting. The two thresholds differ (grow at
0 idle, shrink above 1 idle all along) so a steady load does not make the pool flap.

Pure rules: :class:`PoolScaler` reads no clock and makes no system call; the master passes the
time and the pool's load in (``tests/test_scaling.py``).
"""

from __future__ import annotations

from typing import NamedTuple

#: Seconds between two checks of a dynamic pool's load.
CHECK_INTERVAL = 0.25
#: Seconds between two growth steps; the step doubles each period the pool stays short.
SPAWN_PERIOD = 1.0
#: The most workers forked in one growth step (per second), as Apache's MAX_SPAWN_RATE.
MAX_SPAWN_RATE = 32
#: Seconds more than SPARE_WORKERS workers must stay idle before one retires.
SHRINK_INTERVAL = 5.0
#: Idle workers a dynamic pool keeps (Apache's MinSpareServers for a small pool).
SPARE_WORKERS = 1


class PoolLoad(NamedTuple):
    """The pool's load at one check: ``idle`` serving workers whose slot says IDLE,
    ``starting`` workers forked but not ready yet, ``queued`` connections waiting in the
    listen queue (None: unknown, as on Unix and UDP sockets)."""

    idle: int
    starting: int
    queued: int | None = None


class PoolScaler:
    """The size a dynamic pool of ``low`` .. ``high`` workers converges to. Used by the
    master, in the master; :meth:`decide` is called when :attr:`next_check` has come.
    ``queue_only``: the pool is short only when connections wait in the listen queue (for
    the ``thread`` worker)."""

    def __init__(self, low: int, high: int, *, queue_only: bool = False) -> None:
        self.low = low
        self.high = high
        #: Short only with connections queued (the ``thread`` worker: its slot says busy
        #: while any of its threads is, though others are free).
        self.queue_only = queue_only
        #: Monotonic time of the next check.
        self.next_check = 0.0
        #: Workers the next growth step forks (doubles while the pool stays short).
        self.rate = 1
        #: Monotonic time before which the pool does not grow again.
        self.next_spawn = 0.0
        #: The last check found the pool short.
        self.was_short = False
        #: Since when more than SPARE_WORKERS workers were idle at every check (None: not).
        self.spare_since: float | None = None

    def set_bounds(self, low: int, high: int) -> None:
        """Move the bounds (a resize command on a dynamic pool moves ``high``)."""
        self.low, self.high = low, high

    def decide(self, now: float, size: int, load: PoolLoad) -> tuple[int, str]:
        """The pool's size after a check at ``now`` (monotonic seconds) of a pool of ``size``
        workers with ``load``, and why it changed ("" when it did not). Always within
        :attr:`low` .. :attr:`high`."""
        self.next_check = now + CHECK_INTERVAL
        if not self.low <= size <= self.high:
            self.spare_since = None
            return min(max(size, self.low), self.high), "outside its bounds"
        queued = load.queued or 0
        short = load.starting == 0 and (queued > 0 if self.queue_only else load.idle == 0)
        grow = short and (self.was_short or queued > 0)
        self.was_short = short
        if now >= self.next_spawn:
            if grow and size < self.high:
                added = min(self.rate, self.high - size)
                self.rate = min(2 * self.rate, MAX_SPAWN_RATE)
                self.next_spawn = now + SPAWN_PERIOD
                self.spare_since = None
                waiting = f", {queued} connections queued" if queued else ""
                return size + added, f"no idle worker{waiting}"
            if not short:
                self.rate = 1
        if load.idle > SPARE_WORKERS and size > self.low:
            if self.spare_since is None:
                self.spare_since = now
            elif now - self.spare_since >= SHRINK_INTERVAL:
                self.spare_since = now
                return size - 1, f"{load.idle} workers idle for {SHRINK_INTERVAL:g} s"
        else:
            self.spare_since = None
        return size, ""
