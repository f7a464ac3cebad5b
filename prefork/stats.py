"""The pool's figures as one JSON-able snapshot, and the rules behind them.

:func:`snapshot` reads the scoreboard (the master's header, the totals of exited workers and
every live slot, in one consistent reading) into the dict that the control socket's
``status`` command returns, ``prefork status`` shows and the exporter turns into Prometheus
metrics and the ``/status`` page (its schema: docs/observing.md). :func:`add_process_info`
adds what only the kernel knows (each process's memory and CPU time, from psutil).
:func:`exit_cause` names why a reaped worker left, for the restart counts;
:func:`listen_queue` samples the listening sockets' queues.
"""

from __future__ import annotations

import socket
import struct
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prefork.connections import TCP_INFO_UNACKED
from prefork.figures import DURATION_BUCKETS, WorkerState, WorkerStats
from prefork.scoreboard import Scoreboard

if TYPE_CHECKING:
    from prefork.pool import WorkerRecord

#: The version of the snapshot's schema (its "prefork" field).
SCHEMA = 1

# struct tcp_info (linux/tcp.h): tcpi_state is byte 0; on a listening socket tcpi_unacked is
# the accept queue's length and tcpi_sacked, next, its limit (the backlog).
_TCP_LISTEN = 10
_LISTEN_QUEUE = struct.Struct("=II")


def snapshot(scoreboard: Scoreboard, info: dict[str, Any]) -> dict[str, Any]:
    """The pool's snapshot: ``info`` (the master's static facts: ``name``, ``worker_class``,
    ``control_socket``, ``metrics_address``) and what ``scoreboard`` holds, read once
    consistently (:meth:`~prefork.scoreboard.Scoreboard.consistent`): the totals are the
    exited workers' counts plus the live ones', monotonic over the master's life. Runs in
    the master or the exporter."""
    retired, slots, pool = scoreboard.consistent(
        lambda: (scoreboard.read(-1), scoreboard.slots(), scoreboard.pool())
    )
    now, wall = time.monotonic(), time.time()
    return {
        "prefork": SCHEMA,
        **info,
        "master_pid": pool.master_pid,
        "started_at": pool.started_at,
        "uptime": max(0.0, wall - pool.started_at) if pool.started_at else 0.0,
        "generation": pool.generation,
        "workers_wanted": pool.workers_wanted,
        "min_workers": pool.min_workers,
        "max_workers": pool.max_workers,
        "listen_queue": {"length": pool.listen_queue_length, "limit": pool.listen_queue_limit},
        "totals": _counts(retired, slots),
        "duration_buckets": list(DURATION_BUCKETS),
        "restarts": pool.restarts,
        "boot_failures": pool.boot_failures,
        "workers": [_worker(stats, now) for stats in sorted(slots, key=lambda s: (s.number, s.generation))],
    }


def _counts(retired: WorkerStats, slots: Iterable[WorkerStats]) -> dict[str, Any]:
    requests, errors, denied, busy = retired.requests, retired.errors, retired.denied, retired.busy_seconds
    tls, proxy = retired.tls_failures, retired.proxy_refused
    durations = list(retired.durations)
    for stats in slots:
        requests += stats.requests
        errors += stats.errors
        denied += stats.denied
        busy += stats.busy_seconds
        tls += stats.tls_failures
        proxy += stats.proxy_refused
        durations = [a + b for a, b in zip(durations, stats.durations, strict=True)]
    return {
        "requests": requests,
        "errors": errors,
        "denied": denied,
        "busy_seconds": busy,
        "duration_counts": durations,
        "tls_failures": tls,
        "proxy_refused": proxy,
    }


def _worker(stats: WorkerStats, now: float) -> dict[str, Any]:
    busy = stats.state is WorkerState.BUSY and stats.request_started
    return {
        "number": stats.number,
        "pid": stats.pid,
        "generation": stats.generation,
        "state": stats.state.name.lower(),
        "requests": stats.requests,
        "errors": stats.errors,
        "denied": stats.denied,
        "busy_seconds": stats.busy_seconds,
        "booted_at": stats.booted_at or None,
        "request_age": stats.busy_for(now) if busy else None,
        "duration_counts": list(stats.durations),
    }


#: What :func:`add_process_info` adds for each process (``master_`` + each for the master).
PROCESS_FIELDS = ("rss", "uss", "pss", "cpu_seconds")


def add_process_info(status: dict[str, Any]) -> dict[str, Any]:
    """Add to a :func:`snapshot` each worker's memory, ``rss`` (resident), ``uss`` (private:
    what the process alone holds, freed when it exits) and ``pss`` (proportional: each
    shared page divided among the processes sharing it, so the sum over the pool is its
    real cost), in bytes, and ``cpu_seconds`` (user + system); and the master's, as
    ``master_rss``, ``master_uss``, ``master_pss`` and ``master_cpu_seconds``. From psutil
    (USS and PSS read ``/proc/PID/smaps_rollup`` on Linux: about a millisecond per process,
    so this runs in the exporter and in ``prefork status``, never in the master's loop);
    None where a process is gone or may not be read, or the system gives no USS/PSS.
    Returns ``status``. Runs in any process of the same user."""
    import psutil  # here: the master and the workers never pay for importing it

    def measure(pid: Any) -> dict[str, Any]:
        found: dict[str, Any] = dict.fromkeys(PROCESS_FIELDS)
        if not isinstance(pid, int) or pid <= 0:
            return found
        try:
            process = psutil.Process(pid)
            with process.oneshot():
                cpu = process.cpu_times()
                found["cpu_seconds"] = float(cpu.user + cpu.system)
                found["rss"] = int(process.memory_info().rss)
                memory = process.memory_full_info()
                found["uss"], found["pss"] = getattr(memory, "uss", None), getattr(memory, "pss", None)
        except (psutil.Error, OSError, ValueError):
            pass
        return found

    for worker in status.get("workers") or []:
        worker.update(measure(worker.get("pid")))
    status.update({f"master_{k}": v for k, v in measure(status.get("master_pid")).items()})
    return status


def exit_cause(record: WorkerRecord, code: int, held: WorkerStats) -> str | None:
    """Why a reaped worker left the pool, one of :data:`~prefork.figures.RESTART_CAUSES`,
    or None when the pool is stopping (not a restart). ``record`` is the master's record,
    ``code`` the exit code (``os.waitstatus_to_exitcode``), ``held`` its slot at the end:
    aborted after ``request_timeout``; stopped by the master for a reload, a resize or its
    memory (``record.stop_cause``); exited by itself with status 0 having served its
    ``max_requests``; any other exit with status 0 is ``external`` (a TERM from outside, the
    handler exiting 0); anything else is a crash. Runs in the master."""
    if record.aborted:
        return "request_timeout"
    if record.stopping:
        return record.stop_cause
    if code == 0 and held.state is WorkerState.STOPPING and 0 < record.max_requests <= held.requests:
        return "max_requests"
    return "external" if code == 0 else "crash"


def listen_queue(sockets: Iterable[socket.socket]) -> tuple[int | None, int | None]:
    """The connections waiting in the accept queues of ``sockets`` and the queues' limits,
    summed over the listening TCP sockets (Linux ``TCP_INFO``: ``tcpi_unacked`` and
    ``tcpi_sacked`` of a socket in LISTEN). ``(None, None)`` when none tells: a Unix or UDP
    socket, another system. One ``getsockopt`` per socket. Runs in the master."""
    option = getattr(socket, "TCP_INFO", None)
    if option is None or not sys.platform.startswith("linux"):
        return None, None
    length = limit = 0
    known = False
    for sock in sockets:
        try:
            if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            info = sock.getsockopt(socket.IPPROTO_TCP, option, 32)
        except OSError:  # closed
            continue
        if len(info) < 32 or info[0] != _TCP_LISTEN:
            continue
        queued, backlog = _LISTEN_QUEUE.unpack_from(info, TCP_INFO_UNACKED)
        length, limit, known = length + queued, limit + backlog, True
    return (length, limit) if known else (None, None)
