"""What ``prefork bench`` reports: figures per run, the tables, the notes, the JSON and CSV
files and the live progress line. Runs in the bench's parent process. (The summary of a
pool size's rounds and the recommendation are :mod:`prefork.bench.rounds`'; the plots
:mod:`prefork.bench.plot`'s.)

Units: throughput in requests per second (good replies only), latencies in milliseconds,
CPU in percent of one core over the measured window, memory in bytes (MiB in the tables).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

import psutil

from prefork import __version__
from prefork.bench.protocols import ERROR_KINDS
from prefork.bench.runner import PoolRun, compute_share, share_unknown
from prefork.bench.slo import Objective, judge, latency_with_failures
from prefork.bench.text import grid, mib, ms
from prefork.config import usable_cpus

#: A client process using this share of a core (or more) may have limited the throughput; so
#: may a machine whose CPUs were this busy (the clients share them with the server).
CLIENT_SATURATED = 0.9
MACHINE_SATURATED = 0.9


def figures(run: PoolRun, objectives: Sequence[Objective] = ()) -> dict[str, Any]:
    """Every figure of one run, as plain JSON values (see the module's units): with
    ``objectives`` (the SLO mode), its verdict on each (:func:`~prefork.bench.slo.judge`).
    ``p99_all_ms`` is the p99 of every request that came due, failed and unsent ones counted
    as slower than any reply (None: more than 1% failed, "never"). Raises nothing."""
    load = run.load
    hist = load.histogram
    total = load.ok + load.error_total
    if run.count_limited and load.elapsed < run.duration:
        span = max(load.elapsed, 1e-9)  # stopped by --requests: all replies, over their span
        rps = load.ok / span
    else:
        span = run.duration  # stopped by time: the replies within it
        rps = load.ok_in_window / span

    def at(percentile: float) -> float:
        return round(hist.get_value_at_percentile(percentile) / 1000, 3) if load.ok else 0.0

    client_cpu = [round(100 * c / w, 1) if w > 0 else 0.0 for c, w in zip(load.cpu, load.wall, strict=True)]
    requests = [w.requests for w in run.per_worker]
    worker_cpu = [round(100 * w.cpu / run.window, 1) for w in run.per_worker]
    share = compute_share(run.per_worker, run.window)
    failed = load.error_total + load.unsent
    p99_all = latency_with_failures(hist, load.ok, failed, 99)
    runq = [w.runq for w in run.per_worker]
    found = {
        "workers": run.workers,
        "round": run.round,
        "protocol": run.protocol,
        "address": run.address,
        "rps": round(rps, 1),
        "p50_ms": at(50),
        "p90_ms": at(90),
        "p99_ms": at(99),
        "p99_all_ms": None if p99_all is None else round(p99_all, 3),
        "max_ms": round(hist.get_max_value() / 1000, 3) if load.ok else 0.0,
        "mean_ms": round(hist.get_mean_value() / 1000, 3) if load.ok else 0.0,
        "requests": total,
        "ok": load.ok,
        "errors": load.error_total,
        "errors_by_kind": {kind: load.errors.get(kind, 0) for kind in ERROR_KINDS}
        | {k: v for k, v in load.errors.items() if k not in ERROR_KINDS},
        "unsent": load.unsent,
        "duration_s": round(span, 3),
        "cpu_window_s": round(run.window, 3),
        "concurrency": run.concurrency,
        "keepalive": run.keepalive,
        "clients": run.clients,
        "client_cpu_percent": client_cpu,
        "client_saturated": any(c >= 100 * CLIENT_SATURATED for c in client_cpu),
        "worker_requests": requests,
        "worker_cpu_percent": worker_cpu,
        "worker_cpu_percent_total": round(sum(worker_cpu), 1),
        "worker_rss_bytes": [w.rss for w in run.per_worker],
        "worker_rss_bytes_total": sum(w.rss for w in run.per_worker),
        "worker_pids": [w.pid for w in run.per_worker],
        "machine_cpu_percent": round(run.machine_cpu, 1),
        "compute_share": None if share is None else round(share, 3),
        "compute_share_unknown": share_unknown(run.per_worker),
        "worker_run_queue_s": None if None in runq else round(sum(r or 0.0 for r in runq), 3),
    } | run.memory
    if objectives:
        found["slo"] = judge(hist, load.ok, failed, objectives)
    return found


def environment() -> dict[str, Any]:
    """The machine and software the run used (memory in bytes). Raises nothing."""
    return {
        "cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "memory_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "prefork": __version__,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _spread(requests: list[int | None]) -> str:
    if not requests or any(r is None for r in requests):
        return "n/a"
    counts = [r for r in requests if r is not None]
    total = sum(counts)
    if not total:
        return "-"
    shares = sorted((100 * c / total for c in counts), reverse=True)
    if len(shares) > 4:
        return f"{shares[0]:.0f}..{shares[-1]:.0f}%"
    return "/".join(f"{s:.0f}" for s in shares) + "%"


def table(sizes: Sequence[dict[str, Any]]) -> str:
    """The plain-text table of ``sizes`` (:func:`~prefork.bench.rounds.summarize` of each, or
    one run's :func:`figures`), one line per pool size: medians over the rounds, with the
    range (lowest-highest) of throughput and p99 when there were several. Raises nothing."""
    ranges = any(s.get("rounds_run", 1) > 1 for s in sizes)
    slo = any("slo" in s for s in sizes)
    head = ["workers", "req/s"] + ["req/s range"] * ranges + ["p50 ms", "p90 ms", "p99 ms"]
    head += ["p99 range"] * ranges + ["max ms", "errors", "spread", "worker CPU", "compute", "RSS MiB"]
    head += ["client CPU", "machine CPU"] + ["SLO (worst round)"] * slo
    rows = [head]
    for s in sizes:
        row = ["?" if s["workers"] is None else str(s["workers"]), f"{s['rps']:,.0f}"]
        if ranges:
            row.append(f"{s.get('rps_min', s['rps']):,.0f}-{s.get('rps_max', s['rps']):,.0f}")
        row += [f"{s['p50_ms']:.2f}", f"{s['p90_ms']:.2f}", f"{s['p99_ms']:.2f}"]
        if ranges:
            row.append(f"{s.get('p99_min_ms', s['p99_ms']):.2f}-{s.get('p99_max_ms', s['p99_ms']):.2f}")
        row += [
            f"{s['max_ms']:.2f}",
            _errors(s),
            _spread(s["worker_requests"]),
            f"{s['worker_cpu_percent_total']:.0f}%",
            "-" if s.get("compute_share") is None else f"{100 * s['compute_share']:.0f}%",
            mib(s["worker_rss_bytes_total"]),
            "/".join(f"{c:.0f}" for c in s["client_cpu_percent"]) + "%",
            f"{s['machine_cpu_percent']:.0f}%",
        ]
        if slo:
            row.append(_slo_cell(s))
        rows.append(row)
    left = [i for i, name in enumerate(head) if name in ("errors", "spread", "SLO (worst round)")]
    return grid(rows, left)


def _slo_cell(size: dict[str, Any]) -> str:
    verdicts = size.get("slo", [])
    values = ", ".join(
        f"{v['objective']} {'never' if v['value_ms'] is None else ms(v['value_ms'])}" for v in verdicts
    )
    met = size.get("slo_met_rounds", int(all(v["met"] for v in verdicts)))
    rounds = size.get("rounds_run", 1)
    return f"{'met' if met == rounds else 'missed'} {met}/{rounds}: {values}"


def memory_table(sizes: Sequence[dict[str, Any]]) -> str | None:
    """The memory of each pool size after its load (MiB; the median of its rounds): the
    master's USS and PSS, the median worker's USS and PSS, and the total PSS of the master
    and the workers; None when no memory was read. Raises nothing."""
    known = [s for s in sizes if s.get("total_pss_bytes") is not None]
    if not known:
        return None
    rows = [["workers", "master USS", "master PSS", "worker USS", "worker PSS", "total PSS MiB"]]
    for s in known:
        pss = sorted(s["worker_pss_bytes"])
        rows.append(
            [
                "?" if s["workers"] is None else str(s["workers"]),
                mib(s["master_uss_bytes"]),
                mib(s["master_pss_bytes"]),
                mib(s["worker_uss_bytes_median"]),
                mib(pss[(len(pss) - 1) // 2] if pss else None),
                mib(s["total_pss_bytes"]),
            ]
        )
    return grid(rows)


def _errors(run: dict[str, Any]) -> str:
    if not run["errors"]:
        return "0"
    kinds = ", ".join(f"{k} {v}" for k, v in run["errors_by_kind"].items() if v)
    return f"{run['errors']} ({kinds})"


def pool_name(run: dict[str, Any]) -> str:
    """``1 worker``, ``4 workers``, or ``the server`` for an unknown pool size. Raises nothing."""
    workers = run["workers"]
    return "the server" if workers is None else f"{workers} worker" + ("" if workers == 1 else "s")


def notes(sizes: Sequence[dict[str, Any]]) -> list[str]:
    """Lines to print under the table: saturated clients or CPUs, keepalive starving a sync
    pool, unsent requests. ``sizes``: as for :func:`table`. Raises nothing."""
    out = []
    for r in sizes:
        if r["client_saturated"]:
            out.append(
                f"note: with {pool_name(r)} a client process used "
                f"{max(r['client_cpu_percent']):.0f}% of a core: the client may have limited the "
                "throughput (try --clients N, or a machine with more cores)"
            )
        if r["keepalive"] and r["workers"] is not None and r["concurrency"] > r["workers"]:
            out.append(
                f"note: with {pool_name(r)} and --keepalive, up to {r['concurrency']} connections "
                "stay open: a sync worker serves one connection until it closes, the others wait"
            )
        if r["unsent"]:
            out.append(
                f"note: with {pool_name(r)}, {r['unsent']} requests came due but never "
                "started (all --concurrency slots busy): the server could not keep up with the rate"
            )
    busy = [
        r for r in sizes if r["machine_cpu_percent"] >= 100 * MACHINE_SATURATED and not r["client_saturated"]
    ]
    if busy:
        names = ", ".join("?" if r["workers"] is None else str(r["workers"]) for r in busy)
        low, high = min(r["machine_cpu_percent"] for r in busy), max(r["machine_cpu_percent"] for r in busy)
        span = f"{low:.0f}%" if round(low) == round(high) else f"{low:.0f}-{high:.0f}%"
        out.append(
            f"note: the machine's CPUs were {span} busy with {names} workers (server, clients and "
            "anything else running): there, throughput was bounded by the CPUs left, not the pool"
        )
    return out


def recommendation_lines(
    recommendation: dict[str, Any] | None,
    sizes: Sequence[dict[str, Any]],
    share: float | None,
    no_cap: str | None = None,
) -> list[str]:
    """The recommendation (:func:`~prefork.bench.rounds.recommend`) and the notes on its caps,
    as lines to print; ``share``: the share of a request's time the workers compute (for the
    CPU cap's note); ``no_cap``: why there is no CPU cap, when it is off for want of that
    share (:func:`~prefork.bench.runner.share_unknown`). Raises nothing."""
    if recommendation is None:
        return ["recommendation: none (no pool size served a request)"]
    out = []
    capped = recommendation["capped"]
    if "cpu" in capped and share is not None:
        cap, cpus = capped["cpu"], usable_cpus()
        out.append(
            f"note: at most {cap} workers are considered: the workers compute {share:.0%} of a request's "
            f"time (CPU time over the time not waiting for a CPU), so past {cap} more workers cannot add "
            f"throughput on {cpus} usable CPU{'s' * (cpus != 1)}"
        )
    if no_cap is not None:
        out.append(f"note: no CPU cap: {no_cap}")
    if "memory" in capped and recommendation["workers"] is not None:
        out.append(
            f"note: at most {capped['memory']} workers are considered: more do not fit in --memory-limit"
        )
    if min(s.get("rounds_run", 1) for s in sizes) < 3 and len(sizes) > 1:
        out.append(
            "note: with fewer than 3 rounds per size the noise is hardly known: a larger pool is "
            "preferred only when every round of it beat every round of the smaller (--rounds 3 or more)"
        )
    if recommendation["workers"] is None:
        out.append(f"recommendation: none: {recommendation['reason']}")
    else:
        out.append(f"recommendation: {pool_name(recommendation)}: {recommendation['reason']}")
    return out


def write_json(
    path: str, parameters: dict[str, Any], runs: Sequence[dict[str, Any]], rec: Any, extra: dict[str, Any]
) -> None:
    """Write the parameters, the machine, every pool size's summary (each with its rounds'
    figures), the recommendation ``rec`` and ``extra`` (``memory``, ``step_load``) to
    ``path`` as JSON. Raises OSError when it cannot be written."""
    data = {"parameters": parameters, "runs": list(runs), "recommendation": rec} | extra
    with open(path, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=2)
        out.write("\n")


def write_csv(path: str, parameters: dict[str, Any], runs: Sequence[dict[str, Any]]) -> None:
    """Write one row per pool size: every figure of its summary (lists of numbers joined by
    spaces, error kinds as ``errors_KIND`` columns; the rounds', SLO verdicts' and step
    series' objects left to the JSON), and the run's parameters, to ``path``. Raises OSError
    when it cannot be written."""
    flat_params = {f"param_{k}": v for k, v in parameters.items() if not isinstance(v, dict)}
    flat_params |= {f"param_{k}": v for k, v in parameters.get("machine", {}).items()}
    rows = []
    for r in runs:
        row: dict[str, Any] = {}
        for key, value in r.items():
            if key == "errors_by_kind":
                row |= {f"errors_{k.replace(' ', '_').replace(':', '')}": v for k, v in value.items()}
            elif isinstance(value, dict) or (
                isinstance(value, list) and any(isinstance(v, dict) for v in value)
            ):
                continue
            elif isinstance(value, list):
                row[key] = " ".join(str(v) for v in value)
            else:
                row[key] = value
        rows.append(row | flat_params)
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k not in names]
    with open(path, "w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)


class ProgressLine:
    """The live ``4 workers, round 2/3  elapsed/total s  req/s`` line on ``stream`` (a tty),
    redrawn at most 4 times a second; does nothing when ``stream`` is not a tty."""

    def __init__(self, stream: IO[str] = sys.stderr) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self._last = 0.0

    def update(self, label: str, elapsed: float, total: float, completed: int) -> None:
        """Redraw: ``label`` (the pool size and round), ``elapsed`` seconds measured of
        ``total``, and ``completed`` requests per second so far. Raises OSError if ``stream``
        fails."""
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.25:
            return
        self._last = now
        rate = completed / elapsed if elapsed > 0 else 0.0
        self.stream.write(f"\r\x1b[K{label}  {elapsed:5.1f}/{total:g} s  {rate:10,.0f} req/s")
        self.stream.flush()

    def clear(self) -> None:
        """Erase the line. Raises OSError if ``stream`` fails."""
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
