"""What the scoreboard holds, as Python values: a worker's state (:class:`WorkerState`), a
copy of its slot (:class:`WorkerStats`), the pool's figures from the header
(:class:`PoolFigures`), the buckets of the request-duration histogram and the causes of a
restart. :mod:`prefork.scoreboard` lays them out in shared memory; the readers (stats, the
watchdog, the exporter, ``prefork status``) use these records only.
"""

from __future__ import annotations

import enum
import time
from typing import NamedTuple

#: Upper bounds (seconds) of the request-duration histogram's buckets, then +Inf: the
#: Prometheus client's default buckets.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Why a worker left the pool to be replaced (or not: resize), as counted in the header.
#: "external": a clean exit the master did not ask for (a TERM from outside, the handler
#: exiting with status 0).
RESTART_CAUSES = ("crash", "request_timeout", "memory", "max_requests", "reload", "resize", "external")


class WorkerState(enum.IntEnum):
    """The state of a worker in its slot (EMPTY: the slot is free)."""

    EMPTY = 0
    STARTING = 1  # forked, not ready yet
    IDLE = 2  # waiting for a request
    BUSY = 3  # processing a request since request_started
    STOPPING = 4  # told to stop, or leaving by itself (recycling)


class WorkerStats(NamedTuple):
    """A copy of one worker's slot, read by :meth:`Scoreboard.read` or :meth:`Scoreboard.slots`.

    ``request_started`` is a ``time.monotonic()`` value (0.0 when not busy), ``booted_at`` a
    ``time.time()`` value (0.0 while starting); ``requests`` counts requests processed,
    ``denied`` connections refused by ``verify_request``, ``errors`` the requests whose
    processing raised (``handle_error`` calls); ``busy_seconds`` is the sum of the requests'
    durations and ``durations`` their count per bucket of :data:`DURATION_BUCKETS`, then +Inf
    (not cumulative); ``tls_failures`` counts failed TLS handshakes, ``proxy_refused`` the
    connections closed for their PROXY header.
    """

    slot: int
    pid: int
    number: int
    generation: int
    state: WorkerState
    requests: int
    denied: int
    request_started: float
    booted_at: float
    errors: int = 0
    busy_seconds: float = 0.0
    durations: tuple[int, ...] = ()
    tls_failures: int = 0
    proxy_refused: int = 0

    def busy_for(self, now: float | None = None) -> float:
        """Seconds this worker has been processing its current request (0.0 if not busy)."""
        # Below 1 s: a start not written yet (the time is stored before the state, but a
        # weakly ordered CPU may show the two the other way round): not busy yet, never a
        # huge age.
        if self.state is not WorkerState.BUSY or self.request_started < 1.0:
            return 0.0
        return max(0.0, (time.monotonic() if now is None else now) - self.request_started)


class PoolFigures(NamedTuple):
    """What the master keeps in the scoreboard's header (:meth:`Scoreboard.pool`):
    ``master_pid``, ``generation``, ``workers_wanted``, ``started_at`` (``time.time()``),
    the listen queue's ``listen_queue_length`` and ``listen_queue_limit`` (connections; None:
    unknown), ``restarts`` (count per cause of :data:`RESTART_CAUSES`), ``boot_failures``,
    and a dynamic pool's bounds ``min_workers`` and ``max_workers`` (None: a fixed pool)."""

    master_pid: int
    generation: int
    workers_wanted: int
    started_at: float
    listen_queue_length: int | None
    listen_queue_limit: int | None
    restarts: dict[str, int]
    boot_failures: int
    min_workers: int | None = None
    max_workers: int | None = None
