"""Rounds and the noise: the order ``prefork bench`` runs pool sizes in, the summary of each
size's rounds, and the recommendation, which never prefers a pool whose gain is inside the
noise. Pure functions of the figures (:func:`prefork.bench.report.figures`); they run in the
bench's parent process.

**Order.** Each round runs every pool size once, in a serpentine order (1, 2, 4, then 4, 2,
1, then 1, 2, 4 ...): drift of the machine over the run (a neighbour starting, thermal
throttling, a cache warming) hits every size alike instead of the last ones, and a drift
linear in time cancels out over each pair of rounds.

**The noise rule.** A pool size *beats* another when its median is better by a material
amount (:data:`MATERIAL_GAIN`: 5% more throughput; :data:`MATERIAL_LATENCY_GAIN`: 10% lower
p99) *and* its rounds are better beyond chance: a one-sided exact Mann-Whitney U test of the
rounds at :data:`SIGNIFICANCE` (5%). With 3 rounds each, that means every round of the one
beat every round of the other (the chance of that under pure noise is 1 in 20); with more
rounds a few outlier rounds are tolerated. With fewer rounds than the test needs to reach
5% (1 or 2), every round must beat every round. The test assumes nothing about the shape of
the noise, which on a shared machine is anything but normal (one round hit by a neighbour).

**The recommendation** is the smallest pool size that the best one (best median) does not
beat: closed loop, by throughput; open loop (``--rate``), where the throughput is the rate
asked for, by p99. Sizes above a cap are left out first: the CPU cap (:func:`cpu_cap`) and
what fits in ``--memory-limit``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")

#: A larger pool must bring at least this much more throughput (median over rounds) ...
MATERIAL_GAIN = 0.05
#: ... or, in open loop, this much lower a p99, to be preferred over a smaller one.
MATERIAL_LATENCY_GAIN = 0.10
#: The one-sided p-value below which the rounds of one pool size are better than another's.
SIGNIFICANCE = 0.05

#: Figures of a size's summary that are the median of its rounds' (the table's and JSON's).
_MEDIAN_KEYS = ("p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms", "machine_cpu_percent")
#: Figures that are the total of its rounds'.
_TOTAL_KEYS = ("requests", "ok", "errors", "unsent")


def schedule(sizes: Sequence[T], rounds: int) -> list[tuple[int, T]]:
    """(round, pool size) in the order to run them: every size in each round, ascending in
    even rounds and descending in odd ones (serpentine). Raises nothing."""
    order = []
    for round_ in range(rounds):
        order += [(round_, size) for size in (sizes if round_ % 2 == 0 else list(reversed(sizes)))]
    return order


@cache
def _u_distribution(n: int, m: int) -> tuple[int, ...]:
    """How many of the C(n+m, n) orderings of two samples of ``n`` and ``m`` values (no ties)
    give each U statistic, 0 to n*m."""
    if n == 0 or m == 0:
        return (1,)
    # Orderings by their largest value: from the first sample (each of the m others is below
    # it: U grows by m) or from the second (U as without it).
    first, second = _u_distribution(n - 1, m), _u_distribution(n, m - 1)
    counts = [0] * (n * m + 1)
    for u, count in enumerate(first):
        counts[u + m] += count
    for u, count in enumerate(second):
        counts[u] += count
    return tuple(counts)


def mann_whitney_p(higher: Sequence[float], lower: Sequence[float]) -> float:
    """The one-sided exact p-value that ``higher``'s values are larger than ``lower``'s: the
    chance, were both drawn from one distribution, of a U statistic (pairs where ``higher``'s
    value is the larger; ties count a half) at least as large as the one observed. A tie's
    half is rounded down, which only makes the p-value larger. Raises ValueError for an
    empty sample."""
    if not higher or not lower:
        raise ValueError("each sample needs at least one value")
    u = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x in higher for y in lower)
    counts = _u_distribution(len(higher), len(lower))
    return sum(counts[math.floor(u) :]) / sum(counts)


def beats(
    better: Sequence[float], worse: Sequence[float], *, higher_is_better: bool, material: float
) -> bool:
    """Whether the rounds ``better`` beat the rounds ``worse`` beyond the noise (see the
    module's docstring): a median better by at least ``material`` (a fraction of ``worse``'s
    median), and a one-sided Mann-Whitney p-value of at most :data:`SIGNIFICANCE`, or, with
    too few rounds for that, every round better than every round. Raises ValueError for an
    empty sample."""
    if not better or not worse:
        raise ValueError("each sample needs at least one value")
    sign = 1.0 if higher_is_better else -1.0
    a, b = [sign * x for x in better], [sign * x for x in worse]
    gain = statistics.median(a) - statistics.median(b)
    if gain <= 0 or gain < material * abs(statistics.median(b)):
        return False
    if 1 / math.comb(len(a) + len(b), len(a)) > SIGNIFICANCE:  # too few rounds for the test
        return min(a) > max(b)
    return mann_whitney_p(a, b) <= SIGNIFICANCE


def summarize(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One pool size's summary from its rounds' figures: the figures of its median round (by
    throughput), with the latencies the medians of all rounds', the counts their totals,
    the spreads (``rps_min``, ``rps_max``, ``p99_min_ms``, ``p99_max_ms``), each round's
    throughput and p99 (``rps_rounds``, ``p99_rounds_ms``) and every round's figures
    (``rounds``). Raises ValueError for no rounds."""
    if not rounds:
        raise ValueError("no rounds to summarize")
    ordered = sorted(rounds, key=lambda r: r["rps"])
    summary = dict(ordered[(len(ordered) - 1) // 2])
    rps = [r["rps"] for r in rounds]
    p99 = [r["p99_ms"] for r in rounds]
    summary |= {
        "rounds_run": len(rounds),
        "rps": round(statistics.median(rps), 1),
        "rps_min": min(rps),
        "rps_max": max(rps),
        "rps_rounds": rps,
        "p99_min_ms": min(p99),
        "p99_max_ms": max(p99),
        "p99_rounds_ms": p99,
    }
    for key in _MEDIAN_KEYS:
        summary[key] = round(statistics.median(r[key] for r in rounds), 3)
    for key in _TOTAL_KEYS:
        summary[key] = sum(r[key] for r in rounds)
    kinds: dict[str, int] = {}
    for r in rounds:
        for kind, count in r["errors_by_kind"].items():
            kinds[kind] = kinds.get(kind, 0) + count
    summary["errors_by_kind"] = kinds
    shares = [r["compute_share"] for r in rounds if r.get("compute_share") is not None]
    summary["compute_share"] = round(statistics.median(shares), 3) if shares else None
    if "slo" in rounds[0]:
        met = sum(all(v["met"] for v in r["slo"]) for r in rounds)
        summary |= {"slo_met_rounds": met, "slo_met": met == len(rounds), "slo": _worst_slo(rounds)}
    summary["rounds"] = list(rounds)
    return summary


def _worst_slo(rounds: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each objective's verdict in its worst round (a value of None, never, is the worst)."""
    worst = []
    for i in range(len(rounds[0]["slo"])):
        verdicts = [r["slo"][i] for r in rounds]
        never = [v for v in verdicts if v["value_ms"] is None]
        worst.append(never[0] if never else max(verdicts, key=lambda v: float(v["value_ms"])))
    return worst


def cpu_cap(sizes: Sequence[dict[str, Any]], cpus: int) -> tuple[int | None, float | None]:
    """(the most workers that can add throughput on ``cpus`` CPUs, the share of a request's
    time its worker computes), from the summaries ``sizes`` (their ``compute_share``: CPU
    time over the time not spent waiting for a CPU, see :mod:`prefork.bench.runner`).

    N workers that compute a share *f* of their time keep N x f CPUs busy: past the smallest
    N that keeps (1 - :data:`MATERIAL_GAIN`) of the CPUs busy, one more worker cannot add a
    material gain, however fair a share of a shared machine it wins. (None, None) when no
    size measured the share. Raises nothing."""
    shares = [s["compute_share"] for s in sizes if s.get("compute_share")]
    if not shares:
        return None, None
    share = statistics.median(shares)
    return max(1, math.ceil((1 - MATERIAL_GAIN) * cpus / share - 1e-9)), share


def recommend(
    sizes: Sequence[dict[str, Any]], *, open_loop: bool, caps: dict[str, int | None]
) -> dict[str, Any] | None:
    """The smallest pool size that the best one does not beat beyond the noise (see the
    module's docstring), among those within ``caps`` (name -> the most workers, or None: no
    cap; ``cpu``, ``memory``); None when no size served a request.

    ``sizes``: :func:`summarize` of each pool size; ``open_loop``: compare p99s (``--rate``)
    instead of throughputs. Returns ``workers``, ``best_workers`` (the best within the caps),
    ``capped`` (``{name: cap}`` of the caps that left a size out), ``metric`` and a one-line
    ``reason``. Raises nothing.
    """
    served = sorted((s for s in sizes if s["ok"] and s["workers"] is not None), key=lambda s: s["workers"])
    if not served:
        return None
    limit = min((c for c in caps.values() if c is not None), default=None)
    candidates = [s for s in served if limit is None or s["workers"] <= limit] or served[:1]
    capped = {name: cap for name, cap in caps.items() if cap is not None and served[-1]["workers"] > cap}
    key, better = ("p99_rounds_ms", False) if open_loop else ("rps_rounds", True)
    material = MATERIAL_LATENCY_GAIN if open_loop else MATERIAL_GAIN

    def median(size: dict[str, Any]) -> float:
        return float(statistics.median(size[key]))

    best = (min if open_loop else max)(candidates, key=median)
    chosen = next(
        s
        for s in candidates
        if s is best or not beats(best[key], s[key], higher_is_better=better, material=material)
    )
    return {
        "workers": chosen["workers"],
        "best_workers": best["workers"],
        "capped": capped,
        "metric": "p99" if open_loop else "throughput",
        "reason": _reason(chosen, best, open_loop),
    }


def _describe(size: dict[str, Any], open_loop: bool) -> str:
    rounds = size["rounds_run"]
    if open_loop:
        value = f"p99 {size['p99_ms']:g} ms"
        spread = f"{size['p99_min_ms']:g}-{size['p99_max_ms']:g}"
    else:
        value = f"{size['rps']:,.0f} req/s"
        spread = f"{size['rps_min']:,.0f}-{size['rps_max']:,.0f}"
    return value if rounds == 1 else f"{value} median, {spread} over {rounds} rounds"


def _reason(chosen: dict[str, Any], best: dict[str, Any], open_loop: bool) -> str:
    what = "p99" if open_loop else "throughput"
    if chosen is best:
        return f"the best {what} ({_describe(best, open_loop)})"
    workers = best["workers"]
    return (
        f"{_describe(chosen, open_loop)}; the best {what}, {workers} worker{'s' * (workers != 1)} "
        f"({_describe(best, open_loop)}), is not better beyond the noise"
    )
