"""What ``prefork bench`` reports: figures per pool size, the recommendation, the table, the
JSON and CSV files and the plot. Runs in the bench's parent process.

Units: throughput in requests per second (good replies only), latencies in milliseconds,
CPU in percent of one core over the measured window, memory in bytes (MiB in the table).
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
from prefork.bench.runner import PoolRun
from prefork.config import usable_cpus

#: A pool size is recommended when its throughput is within this fraction of the best's.
THROUGHPUT_TOLERANCE = 0.05
#: A client process using this share of a core (or more) may have limited the throughput; so
#: may a machine whose CPUs were this busy (the clients share them with the server).
CLIENT_SATURATED = 0.9
MACHINE_SATURATED = 0.9


def figures(run: PoolRun) -> dict[str, Any]:
    """Every figure of one pool size's run, as plain JSON values (see the module's units).
    Raises nothing."""
    load = run.load
    hist = load.histogram
    total = load.ok + load.error_total
    if run.count_limited and load.elapsed < run.duration:
        span = max(load.elapsed, 1e-9)  # stopped by --requests: all replies, over their span
        rps = load.ok / span
    else:
        span = run.duration  # stopped by time: the replies within it
        rps = load.ok_in_window / span

    def ms(percentile: float) -> float:
        return round(hist.get_value_at_percentile(percentile) / 1000, 3) if load.ok else 0.0

    client_cpu = [round(100 * c / w, 1) if w > 0 else 0.0 for c, w in zip(load.cpu, load.wall, strict=True)]
    requests = [w.requests for w in run.per_worker]
    worker_cpu = [round(100 * w.cpu / run.window, 1) for w in run.per_worker]
    return {
        "workers": run.workers,
        "protocol": run.protocol,
        "address": run.address,
        "rps": round(rps, 1),
        "p50_ms": ms(50),
        "p90_ms": ms(90),
        "p99_ms": ms(99),
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
    }


def recommend(runs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The smallest pool size within 5% of the best throughput whose p99 is not worse than the
    best's (the best run's, by throughput); None when no run served a request.

    ``runs``: :func:`figures` of each pool size. Returns ``workers``, ``best_workers`` and a
    one-line ``reason``. Raises nothing.
    """
    served = [r for r in runs if r["ok"] and r["workers"] is not None]
    if not served:
        return None
    best = max(served, key=lambda r: r["rps"])
    good = [
        r
        for r in served
        if r["rps"] >= (1 - THROUGHPUT_TOLERANCE) * best["rps"] and r["p99_ms"] <= best["p99_ms"]
    ]
    chosen = min(good, key=lambda r: r["workers"])
    reason = (
        f"the best throughput ({best['rps']:,.0f} req/s, p99 {best['p99_ms']:g} ms)"
        if chosen is best
        else f"{chosen['rps'] / best['rps']:.0%} of the best throughput ({_pool(best)}, "
        f"{best['rps']:,.0f} req/s) with a p99 of {chosen['p99_ms']:g} ms (best: {best['p99_ms']:g} ms)"
    )
    return {"workers": chosen["workers"], "best_workers": best["workers"], "reason": reason}


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


def table(runs: Sequence[dict[str, Any]]) -> str:
    """The plain-text table of ``runs`` (:func:`figures`), one line per pool size. Raises nothing."""
    head = (
        "workers",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "errors",
        "spread",
        "worker CPU",
        "RSS MiB",
        "client CPU",
        "machine CPU",
    )
    rows = [head]
    for r in runs:
        rows.append(
            (
                "?" if r["workers"] is None else str(r["workers"]),
                f"{r['rps']:,.0f}",
                f"{r['p50_ms']:.2f}",
                f"{r['p90_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['max_ms']:.2f}",
                _errors(r),
                _spread(r["worker_requests"]),
                f"{r['worker_cpu_percent_total']:.0f}%",
                f"{r['worker_rss_bytes_total'] / 2**20:.1f}",
                "/".join(f"{c:.0f}" for c in r["client_cpu_percent"]) + "%",
                f"{r['machine_cpu_percent']:.0f}%",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            cell.ljust(w) if i in (6, 7) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _errors(run: dict[str, Any]) -> str:
    if not run["errors"]:
        return "0"
    kinds = ", ".join(f"{k} {v}" for k, v in run["errors_by_kind"].items() if v)
    return f"{run['errors']} ({kinds})"


def _pool(run: dict[str, Any]) -> str:
    workers = run["workers"]
    return "the server" if workers is None else f"{workers} worker" + ("" if workers == 1 else "s")


def notes(runs: Sequence[dict[str, Any]], recommendation: dict[str, Any] | None) -> list[str]:
    """Lines to print under the table: saturated clients or CPUs, keepalive starving a sync
    pool, unsent requests, and the recommendation (none with ``--address``).

    ``runs``: :func:`figures` of each pool size; ``recommendation``: :func:`recommend`'s.
    Raises nothing.
    """
    out = []
    for r in runs:
        if r["client_saturated"]:
            out.append(
                f"note: with {_pool(r)} a client process used "
                f"{max(r['client_cpu_percent']):.0f}% of a core: the client may have limited the "
                "throughput (try --clients N, or a machine with more cores)"
            )
        if r["keepalive"] and r["workers"] is not None and r["concurrency"] > r["workers"]:
            out.append(
                f"note: with {_pool(r)} and --keepalive, up to {r['concurrency']} connections "
                "stay open: a sync worker serves one connection until it closes, the others wait"
            )
        if r["unsent"]:
            out.append(
                f"note: with {_pool(r)}, {r['unsent']} requests came due but never "
                "started (all --concurrency slots busy): the server could not keep up with --rate"
            )
    busy = [
        r for r in runs if r["machine_cpu_percent"] >= 100 * MACHINE_SATURATED and not r["client_saturated"]
    ]
    if busy:
        sizes = ", ".join("?" if r["workers"] is None else str(r["workers"]) for r in busy)
        low, high = min(r["machine_cpu_percent"] for r in busy), max(r["machine_cpu_percent"] for r in busy)
        span = f"{low:.0f}%" if round(low) == round(high) else f"{low:.0f}-{high:.0f}%"
        out.append(
            f"note: the machine's CPUs were {span} busy with {sizes} workers (server, clients and "
            "anything else running): there, throughput was bounded by the CPUs left, not the pool"
        )
    if recommendation is None:
        if not any(r["ok"] for r in runs):
            out.append("recommendation: none (no pool size served a request)")
    else:
        out.append(f"recommendation: {_pool(recommendation)}: {recommendation['reason']}")
    return out


def write_json(path: str, parameters: dict[str, Any], runs: Sequence[dict[str, Any]], rec: Any) -> None:
    """Write the parameters, the machine, every run's figures and the recommendation ``rec``
    to ``path`` as JSON. Raises OSError when it cannot be written."""
    data = {"parameters": parameters, "runs": list(runs), "recommendation": rec}
    with open(path, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=2)
        out.write("\n")


def write_csv(path: str, parameters: dict[str, Any], runs: Sequence[dict[str, Any]]) -> None:
    """Write one row per pool size: every figure (lists joined by spaces, error kinds as
    ``errors_KIND`` columns), and the run's parameters, to ``path``. Raises OSError when it
    cannot be written."""
    flat_params = {f"param_{k}": v for k, v in parameters.items() if not isinstance(v, dict)}
    flat_params |= {f"param_{k}": v for k, v in parameters.get("machine", {}).items()}
    rows = []
    for r in runs:
        row: dict[str, Any] = {}
        for key, value in r.items():
            if key == "errors_by_kind":
                row |= {f"errors_{k.replace(' ', '_').replace(':', '')}": v for k, v in value.items()}
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


def check_plotting() -> str | None:
    """None if matplotlib can be imported, else the one-line error to print. Raises nothing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "--plot needs matplotlib: pip install 'prefork[plot]'"
    return None


def plot(path: str, runs: Sequence[dict[str, Any]], parameters: dict[str, Any], rec: Any) -> None:
    """Write a PNG to ``path``: throughput (left axis) and p99 latency (right axis) against
    pool size, the recommendation ``rec`` marked. Raises ImportError without matplotlib
    (see :func:`check_plotting`), OSError when it cannot be written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workers = [r["workers"] for r in runs]
    fig, left = plt.subplots(figsize=(7, 4.2), dpi=120)
    right = left.twinx()
    left.plot(workers, [r["rps"] for r in runs], "o-", color="tab:blue", label="throughput (req/s)")
    right.plot(workers, [r["p99_ms"] for r in runs], "s--", color="tab:red", label="p99 latency (ms)")
    left.set_xlabel("workers (pool size)")
    left.set_ylabel("throughput (req/s)", color="tab:blue")
    right.set_ylabel("p99 latency (ms)", color="tab:red")
    if len(workers) > 2 and workers[-1] / workers[0] >= 8:  # 1, 2, 4, 8, ...: evenly spaced
        left.set_xscale("log", base=2)
    left.set_xticks(workers, [str(w) for w in workers])
    left.minorticks_off()
    left.set_ylim(bottom=0)
    right.set_ylim(bottom=0)
    left.grid(True, alpha=0.3)
    if rec is not None:
        left.axvline(rec["workers"], color="tab:green", alpha=0.5, linestyle=":")
        last = rec["workers"] == workers[-1]  # write the label on the side with room
        left.annotate(
            f"recommended: {rec['workers']}",
            (rec["workers"], 0),
            xytext=(-4 if last else 4, 6),
            textcoords="offset points",
            ha="right" if last else "left",
            color="tab:green",
        )
    load = (
        f"rate {parameters['rate']:g}/s"
        if parameters.get("rate")
        else f"concurrency {parameters['concurrency']}"
    )
    machine = parameters.get("machine", {})
    protocol = runs[0]["protocol"] if runs else parameters["protocol"]
    left.set_title(
        f"prefork bench {parameters['target']}\n{protocol}, {load}, {parameters['duration_s']:g} s per size, "
        f"{machine.get('cpus')} CPUs, Python {machine.get('python')}",
        fontsize=9,
    )
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    left.legend(
        handles,
        [str(h.get_label()) for h in handles],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        ncol=2,
        frameon=False,
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


class ProgressLine:
    """The live ``workers N  elapsed/total s  req/s`` line on ``stream`` (a tty), redrawn at
    most 4 times a second; does nothing when ``stream`` is not a tty."""

    def __init__(self, stream: IO[str] = sys.stderr) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self._last = 0.0

    def update(self, workers: int, elapsed: float, total: float, completed: int) -> None:
        """Redraw: pool size ``workers``, ``elapsed`` seconds measured of ``total``, and
        ``completed`` requests per second so far. Raises OSError if ``stream`` fails."""
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.25:
            return
        self._last = now
        rate = completed / elapsed if elapsed > 0 else 0.0
        self.stream.write(f"\r\x1b[K{workers} workers  {elapsed:5.1f}/{total:g} s  {rate:10,.0f} req/s")
        self.stream.flush()

    def clear(self) -> None:
        """Erase the line. Raises OSError if ``stream`` fails."""
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
