"""The plots of ``prefork bench --plot PATH`` (PNG, matplotlib): throughput and p99 against
pool size, every round a point and the medians a line; or, in the step-load mode, the load,
the workers and p99 against time. Runs in the bench's parent process; matplotlib is
imported only here, when a plot is written (``pip install "prefork[plot]"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def check_plotting() -> str | None:
    """None if matplotlib can be imported, else the one-line error to print. Raises nothing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "--plot needs matplotlib: pip install 'prefork[plot]'"
    return None


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(parameters: dict[str, Any], protocol: str, load: str) -> str:
    machine = parameters.get("machine", {})
    return (
        f"prefork bench {parameters['target']}\n{protocol}, {load}, "
        f"{machine.get('cpus')} CPUs, Python {machine.get('python')}"
    )


def _legend(fig: Any, axes: Sequence[Any]) -> None:
    handles = [h for ax in axes for h in ax.get_legend_handles_labels()[0]]
    axes[0].legend(
        handles,
        [str(h.get_label()) for h in handles],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        ncol=min(len(handles), 4),
        frameon=False,
        fontsize=8,
    )
    fig.tight_layout()


def plot(path: str, sizes: Sequence[dict[str, Any]], parameters: dict[str, Any], rec: Any) -> None:
    """Write a PNG to ``path``: throughput (left axis) and p99 latency (right axis) against
    pool size, each round a point and the medians a line, the recommendation ``rec`` marked.
    ``sizes``: the summaries of :func:`~prefork.bench.rounds.summarize`. Raises ImportError
    without matplotlib (see :func:`check_plotting`), OSError when it cannot be written."""
    plt = _pyplot()
    workers = [s["workers"] for s in sizes]
    fig, left = plt.subplots(figsize=(7, 4.2), dpi=120)
    right = left.twinx()
    for s in sizes:
        for axis, key, color in ((left, "rps_rounds", "tab:blue"), (right, "p99_rounds_ms", "tab:red")):
            values = s.get(key, [])
            if values:  # the range of the rounds, and each round a point
                axis.vlines(s["workers"], min(values), max(values), color=color, alpha=0.3, linewidth=3)
            axis.plot([s["workers"]] * len(values), values, ".", color=color, alpha=0.45, markersize=5)
    left.plot(workers, [s["rps"] for s in sizes], "o-", color="tab:blue", label="throughput (req/s), median")
    right.plot(
        workers, [s["p99_ms"] for s in sizes], "s--", color="tab:red", label="p99 latency (ms), median"
    )
    left.plot([], [], ".", color="gray", label="one round (bar: their range)")
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
    if rec is not None and rec.get("workers") is not None:
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
    rounds = parameters.get("rounds", 1)
    load += f", {parameters['duration_s']:g} s per size x {rounds} round{'s' * (rounds != 1)}"
    protocol = sizes[0]["protocol"] if sizes else parameters["protocol"]
    left.set_title(_title(parameters, protocol, load), fontsize=9)
    _legend(fig, [left, right])
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def plot_steps(path: str, runs: Sequence[dict[str, Any]], parameters: dict[str, Any]) -> None:
    """Write a PNG to ``path`` of the step-load mode: above, the rate offered and served
    (left axis) and the workers (right axis); below, the p99 of the requests due in each
    window (log scale); one color per run of ``runs`` (each with ``workers``, ``series``
    and ``samples``). Raises ImportError without matplotlib, OSError when it cannot be
    written."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.4), dpi=120, sharex=True)
    pool = top.twinx()
    end = sum(step["seconds"] for step in parameters.get("steps") or [])

    def stairs(axis: Any, rows: Sequence[dict[str, Any]], key: str, **style: Any) -> None:
        times = [r["t"] for r in rows] + [end]
        values = [r[key] for r in rows]
        axis.step(times, [*values, values[-1]] if values else [], where="post", **style)

    if runs:
        stairs(
            top, runs[0]["series"], "offered", color="gray", linewidth=2.5, alpha=0.5, label="offered req/s"
        )
    for number, run in enumerate(runs):
        name = (
            ""
            if len(runs) == 1
            else (" (pool)" if run["workers"] is None else f" ({run['workers']} workers)")
        )
        color = f"C{number}"
        stairs(top, run["series"], "served", color=color, label=f"served req/s{name}")
        samples = run["samples"]
        if samples:
            times = [s["t"] for s in samples]
            pool.step(
                times,
                [s["workers"] for s in samples],
                where="post",
                color="tab:green" if len(runs) == 1 else color,
                linestyle="--",
                alpha=0.8,
                label=f"workers{name}",
            )
        rows = [r for r in run["series"] if r["p99_ms"] is not None]
        window = parameters.get("window_s") or 1.0
        bottom.plot(
            [r["t"] + window / 2 for r in rows],
            [r["p99_ms"] for r in rows],
            "o-",
            markersize=3,
            color=color,
            label=f"p99{name}",
        )
    top.set_ylabel("requests per second")
    pool.set_ylabel("workers (dashed)")
    pool.set_ylim(bottom=0, top=max([s["workers"] for r in runs for s in r["samples"]] + [1]) * 1.15)
    top.set_ylim(bottom=0)
    bottom.set_ylabel("p99 latency (ms), by due time")
    bottom.set_yscale("log")
    ticker = plt.matplotlib.ticker
    bottom.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    bottom.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    bottom.yaxis.set_minor_formatter(ticker.NullFormatter())
    bottom.set_xlabel("seconds from the start of the load")
    for axis in (top, bottom):
        axis.grid(True, alpha=0.3)
    steps = ", ".join(f"{s['rate']:g}/s for {s['seconds']:g}s" for s in parameters.get("steps") or [])
    top.set_title(
        _title(parameters, runs[0]["protocol"] if runs else parameters["protocol"], steps), fontsize=9
    )
    _legend(fig, [top, pool])
    bottom.legend(loc="upper right", fontsize=7, frameon=False)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
