"""The table of ``prefork status``: a pool snapshot rendered for an operator, with the memory
and CPU of its processes read here (psutil).

:func:`add_process_info` (:mod:`prefork.stats`'s) adds each process's memory (RSS, USS,
PSS) and CPU time to a snapshot (the schema of :mod:`prefork.stats`); :func:`render` prints
header lines (the server, its workers, listen queue, totals, restarts, memory) and one row per
worker. Rates are the change between two snapshots of the same master, timed by the master's
``uptime``. Runs in the client's process (:mod:`prefork.ctl`), which is the server's user.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefork.stats import add_process_info

__all__ = ["HEADINGS", "add_process_info", "render"]

MIB = 1024 * 1024
#: The worker rows' headings; AGE is the current request's, in seconds.
HEADINGS = f"{'#':>3} {'PID':>7}  {'STATE':<8} {'REQS':>8} {'REQ/S':>7} {'AGE':>6} {'RSS MiB':>8} " + (
    f"{'USS MiB':>8} {'PSS MiB':>8} {'CPU%':>6} {'CPU s':>8}"
)


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
        f"workers: {snapshot.get('workers_wanted', '?')} wanted{_bounds(snapshot)} / "
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
            f"USS {_num(snapshot.get('master_uss'), '.1f', MIB)} MiB  "
            f"PSS {_num(snapshot.get('master_pss'), '.1f', MIB)} MiB  "
            f"CPU {_num(snapshot.get('master_cpu_seconds'), '.2f')} s"
        )
        lines.append(_memory_line(snapshot, workers))
    lines += ["", HEADINGS]
    # By pid: during a reload two processes (of two generations) may share a worker number.
    before = {w.get("pid"): w for w in (previous or {}).get("workers") or [] if w.get("pid")}
    for worker in workers:
        per_second, percent = _rates(worker, before.get(worker.get("pid")), elapsed)
        age = worker.get("request_age") if worker.get("state") == "busy" else None
        lines.append(
            f"{worker.get('number', '?'):>3} {worker.get('pid') or '-':>7}  {worker.get('state', '?'):<8} "
            f"{worker.get('requests', 0):>8} {_num(per_second, '.1f'):>7} {_num(age, '.1f'):>6} "
            f"{_num(worker.get('rss'), '.1f', MIB):>8} {_num(worker.get('uss'), '.1f', MIB):>8} "
            f"{_num(worker.get('pss'), '.1f', MIB):>8} {_num(percent, '.1f'):>6} "
            f"{_num(worker.get('cpu_seconds'), '.2f'):>8}"
        )
    return "\n".join(lines)


def _bounds(snapshot: Mapping[str, Any]) -> str:
    """`` (dynamic 1..8)`` for a dynamic pool, "" for a fixed one."""
    low, high = snapshot.get("min_workers"), snapshot.get("max_workers")
    return f" (dynamic {low}..{high})" if high else ""


def _memory_line(snapshot: Mapping[str, Any], workers: list[Mapping[str, Any]]) -> str:
    """The pool's memory: its total PSS (what it costs the machine), and what one more
    worker costs (the median worker USS: its private memory; the pages it shares with the
    master cost nothing more)."""
    pss = [w.get("pss") for w in workers] + [snapshot.get("master_pss")]
    uss = sorted(u for w in workers if isinstance(u := w.get("uss"), int))
    total = sum(p for p in pss if isinstance(p, int)) if all(isinstance(p, int) for p in pss) else None
    one_more = uss[len(uss) // 2] if uss else None
    return (
        f"memory: total PSS {_num(total, '.1f', MIB)} MiB  "
        f"one more worker ~ {_num(one_more, '.1f', MIB)} MiB (USS)"
    )
