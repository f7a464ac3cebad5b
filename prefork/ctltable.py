"""The table of ``prefork status``: a pool snapshot rendered for an operator, with the memory
and CPU of its processes read here (psutil).

:func:`add_process_info` adds each process's resident memory and CPU time to a snapshot (the
schema of :mod:`prefork.stats`); :func:`render` prints header lines (the server, its workers,
listen queue, totals, restarts) and one row per worker. Rates are the change between two
snapshots of the same master, timed by the master's ``uptime``. Runs in the client's process
(:mod:`prefork.ctl`), which is the server's user.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psutil

__all__ = ["HEADINGS", "add_process_info", "render"]

MIB = 1024 * 1024
#: The worker rows' headings; AGE is the current request's, in seconds.
HEADINGS = f"{'#':>3} {'PID':>7}  {'STATE':<8} {'REQS':>8} {'REQ/S':>7} {'AGE':>6} {'RSS MiB':>8} " + (
    f"{'CPU%':>6} {'CPU s':>8}"
)


# -- the snapshot, with the processes' memory and CPU ----------------------------------------


def _process_info(pid: Any) -> tuple[int | None, float | None]:
    """(RSS bytes, user+system CPU seconds) of ``pid``, (None, None) when gone or unreadable."""
    if not isinstance(pid, int) or pid <= 0:
        return None, None
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            times = process.cpu_times()
            return int(process.memory_info().rss), float(times.user + times.system)
    except psutil.Error:
        return None, None


def add_process_info(snapshot: dict[str, Any]) -> None:
    """Add to ``snapshot`` (in place) each worker's ``rss`` (bytes) and ``cpu_seconds`` (user +
    system, float), and the master's ``master_rss`` and ``master_cpu_seconds``; None where the
    process is gone or not readable. Runs in the client's process (psutil; same user)."""
    snapshot["master_rss"], snapshot["master_cpu_seconds"] = _process_info(snapshot.get("master_pid"))
    for worker in snapshot.get("workers") or []:
        worker["rss"], worker["cpu_seconds"] = _process_info(worker.get("pid"))


# -- the table ---------------------------------------------------------------------------------


def _clock(seconds: Any) -> str:
    total = int(seconds or 0)
    return f"{total // 3600}:{total // 60 % 60:02d}:{total % 60:02d}"


def _num(value: Any, spec: str, scale: float = 1.0) -> str:
    return "-" if not isinstance(value, int | float) else format(value / scale, spec)


def _elapsed(snapshot: Mapping[str, Any], previous: Mapping[str, Any]) -> float:
    """Seconds between two snapshots by the master's clock (its ``uptime``)."""
    try:
        return float(snapshot["uptime"]) - float(previous["uptime"])
    except (KeyError, TypeError, ValueError):
        return 0.0


def _rates(worker: Mapping[str, Any], before: Mapping[str, Any] | None, elapsed: float) -> tuple[Any, Any]:
    """(requests per second, CPU percent) of ``worker`` since ``before``, the same process in
    the earlier snapshot (None: a process new since, whose counts all fall in the interval);
    (None, None) without an interval."""
    if elapsed <= 0:
        return None, None
    old = before or {"requests": 0, "cpu_seconds": 0.0}
    requests = (worker.get("requests") or 0) - (old.get("requests") or 0)
    cpu, cpu_before = worker.get("cpu_seconds"), old.get("cpu_seconds")
    percent = None if cpu is None or cpu_before is None else max(cpu - cpu_before, 0.0) / elapsed * 100
    return max(requests, 0) / elapsed, percent


def render(snapshot: Mapping[str, Any], previous: Mapping[str, Any] | None = None) -> str:
    """The status table of ``snapshot`` (with :func:`add_process_info`'s additions if made):
    header lines, then one row per worker. Rates (requests per second, CPU percent) are the
    change since ``previous``, an earlier snapshot of the same master; "-" without one."""
    elapsed = _elapsed(snapshot, previous) if previous is not None else 0.0
    workers = sorted(
        snapshot.get("workers") or [], key=lambda w: (w.get("number", 0), w.get("generation", 0))
    )
    states = [w.get("state") for w in workers]
    totals, queue = snapshot.get("totals") or {}, snapshot.get("listen_queue") or {}
    rate = ""
    if previous is not None and elapsed > 0:
        done = (totals.get("requests") or 0) - ((previous.get("totals") or {}).get("requests") or 0)
        rate = f" ({max(done, 0) / elapsed:.1f}/s)"
    length, limit = queue.get("length"), queue.get("limit")
    queue_text = "n/a" if length is None else f"{length}/{'?' if limit is None else limit}"
    restarts = ", ".join(f"{k} {v}" for k, v in (snapshot.get("restarts") or {}).items() if v) or "none"
    extra = ", ".join(f"{states.count(s)} {s}" for s in ("starting", "stopping") if s in states)
    lines = [
        f"{snapshot.get('name', '?')}  master pid {snapshot.get('master_pid', '?')}  "
        f"up {_clock(snapshot.get('uptime'))}  generation {snapshot.get('generation', 0)}  "
        f"{snapshot.get('worker_class', '?')} workers",
        f"workers: {snapshot.get('workers_wanted', '?')} wanted / "
        f"{states.count('idle') + states.count('busy')} running / {states.count('busy')} busy"
        + (f" ({extra})" if extra else "")
        + f"    listen queue: {queue_text}",
        f"requests: {totals.get('requests', 0)}{rate}  errors: {totals.get('errors', 0)}  "
        f"denied: {totals.get('denied', 0)}",
        f"restarts: {restarts}    boot failures: {snapshot.get('boot_failures', 0)}",
    ]
    if "master_rss" in snapshot:
        lines.append(
            f"master: RSS {_num(snapshot.get('master_rss'), '.1f', MIB)} MiB  "
            f"CPU {_num(snapshot.get('master_cpu_seconds'), '.2f')} s"
        )
    lines += ["", HEADINGS]
    # By pid: during a reload two processes (of two generations) may share a worker number.
    before = {w.get("pid"): w for w in (previous or {}).get("workers") or [] if w.get("pid")}
    for worker in workers:
        per_second, percent = _rates(worker, before.get(worker.get("pid")), elapsed)
        age = worker.get("request_age") if worker.get("state") == "busy" else None
        lines.append(
            f"{worker.get('number', '?'):>3} {worker.get('pid') or '-':>7}  {worker.get('state', '?'):<8} "
            f"{worker.get('requests', 0):>8} {_num(per_second, '.1f'):>7} {_num(age, '.1f'):>6} "
            f"{_num(worker.get('rss'), '.1f', MIB):>8} {_num(percent, '.1f'):>6} "
            f"{_num(worker.get('cpu_seconds'), '.2f'):>8}"
        )
    return "\n".join(lines)
