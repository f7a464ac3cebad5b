"""Memory you can size by: what the server's processes use, what one more worker costs, and
how many workers fit in a given memory (``prefork bench --memory-limit 2G``).

RSS counts every page a process maps, shared ones once per process, and so overstates what a
worker costs. The bench reads, for the master and each worker, its **USS** (unique set size:
pages only it maps, which is what it would give back by exiting) and **PSS** (proportional
set size: each shared page divided among the processes mapping it; the PSS of all processes
of a server adds up to the memory it really uses). Reading them (psutil's
``memory_full_info()``, which reads ``/proc/PID/smaps_rollup``) costs milliseconds per
process, so the bench samples them once per run, after the load stopped.

**What one more worker costs** is the slope of the server's total PSS against the pool size
(a least-squares line over the sizes measured): it counts a worker's private pages and the
shared ones it adds. With one size measured, it is the median worker's USS. **What the
server costs before its workers** is the rest: the median, over the sizes, of the total PSS
less the workers' cost (the master, and what all processes share).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psutil

from prefork.bench.text import format_bytes


@dataclass(frozen=True)
class ProcessMemory:
    """One process's memory at one moment, in bytes: RSS, USS and PSS."""

    pid: int
    rss: int
    uss: int
    pss: int


def sample_memory(pids: Sequence[int]) -> dict[int, ProcessMemory]:
    """The memory of each process of ``pids`` that is alive and readable, by pid (a process
    gone or not ours is left out). Takes milliseconds per process: not during load. Raises
    nothing."""
    found = {}
    for pid in pids:
        try:
            info = psutil.Process(pid).memory_full_info()
        except (psutil.Error, OSError):
            continue
        found[pid] = ProcessMemory(pid, info.rss, info.uss, getattr(info, "pss", info.uss))
    return found


def memory_figures(master: ProcessMemory | None, workers: Sequence[ProcessMemory]) -> dict[str, Any]:
    """The figures of one run's memory sample, as plain JSON values in bytes: the master's
    USS and PSS (None when unknown), each worker's USS and PSS, the median worker's USS, and
    the total PSS of the master and the workers (None when nothing was read). Raises nothing."""
    uss = [w.uss for w in workers]
    pss = [w.pss for w in workers]
    parts = ([master.pss] if master is not None else []) + pss
    return {
        "master_uss_bytes": None if master is None else master.uss,
        "master_pss_bytes": None if master is None else master.pss,
        "worker_uss_bytes": uss,
        "worker_pss_bytes": pss,
        "worker_uss_bytes_median": int(statistics.median(uss)) if uss else None,
        "total_pss_bytes": sum(parts) if parts else None,
    }


def median_memory(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The memory figures of a pool size over its rounds' figures: the median of each (the
    lists of the median round, by total PSS). Raises nothing."""
    known = [r for r in rounds if r.get("total_pss_bytes") is not None]
    if not known:
        return {}
    middle = sorted(known, key=lambda r: r["total_pss_bytes"])[(len(known) - 1) // 2]
    merged = {"worker_uss_bytes": middle["worker_uss_bytes"], "worker_pss_bytes": middle["worker_pss_bytes"]}
    for key in ("master_uss_bytes", "master_pss_bytes", "worker_uss_bytes_median", "total_pss_bytes"):
        values = [r[key] for r in known if r.get(key) is not None]
        merged[key] = int(statistics.median(values)) if values else None
    return merged


def cost_model(sizes: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """What one more worker costs and what the server costs without its workers, in bytes,
    from the summaries of each pool size (``workers``, ``total_pss_bytes``,
    ``worker_uss_bytes_median``); see the module's docstring. Returns ``per_worker_bytes``,
    ``base_bytes`` and ``method``, or None when no size's memory was read. Raises nothing."""
    points = [
        (s["workers"], s["total_pss_bytes"]) for s in sizes if s.get("total_pss_bytes") and s["workers"]
    ]
    uss = [s["worker_uss_bytes_median"] for s in sizes if s.get("worker_uss_bytes_median")]
    if not points:
        return None
    per_worker, method = 0.0, ""
    if len({n for n, _ in points}) >= 2:
        per_worker, method = _slope(points), "the slope of the total PSS over the pool sizes"
    if per_worker <= 0 and uss:
        per_worker, method = float(statistics.median(uss)), "the median worker's USS"
    if per_worker <= 0:
        return None
    base = statistics.median(total - n * per_worker for n, total in points)
    return {"per_worker_bytes": round(per_worker), "base_bytes": max(0, round(base)), "method": method}


def _slope(points: Sequence[tuple[int, int]]) -> float:
    """The least-squares slope of y over x."""
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def workers_fit(model: dict[str, Any], limit: int) -> int:
    """How many workers fit in ``limit`` bytes with the server's ``model`` (:func:`cost_model`):
    0 when not even the master does. Raises nothing."""
    room: int = limit - int(model["base_bytes"])
    return max(0, math.floor(room / int(model["per_worker_bytes"])))


def memory_lines(model: dict[str, Any] | None, limit: int | None, fit: int | None) -> list[str]:
    """The lines the bench prints about memory: what one more worker costs, and, with a
    ``limit`` (bytes), how many fit (``fit``, from :func:`workers_fit`). Raises nothing."""
    if model is None:
        return ["memory: not read (the server's processes are not visible here)"] if limit is not None else []
    per, base = format_bytes(model["per_worker_bytes"]), format_bytes(model["base_bytes"])
    lines = [
        f"memory: one more worker costs {per} ({model['method']}); the master and what is shared: {base}"
    ]
    if limit is not None and fit is not None:
        lines.append(f"memory: {fit} workers fit in {format_bytes(limit)} (master {base} + {per} per worker)")
    return lines
