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

**The recommendation** is the smallest pool size that no other size beats: closed loop, by
throughput; open loop (``--rate``), where the throughput is the rate asked for, by the p99 of
every request that came due, failed and unsent ones counted as slower than any reply (a size
that fails fast does not win on latency). Each step up is thus a gain beyond the noise over
the size below it, so one lucky round can neither walk the answer up nor a noisy best pull it
below a size that beats a smaller one. Sizes above a cap are left out first: the CPU cap
(:func:`cpu_cap`) and what fits in ``--memory-limit``; when no size measured fits in memory,
there is no recommendation.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")

#: A larger pool must bring at least this much more throughput (median over rounds) ...
MATERIAL_GAIN = 0.05
#: ... or, in open loop, this much lower a p99, to be preferred over a smaller one.
MATERIAL_LATENCY_GAIN = 0.10
#: The one-sided p-value below which the rounds of one pool size are better than another's.
SIGNIFICANCE = 0.05
#: A compute share this high counts as all the time, for the CPU cap (:func:`cpu_cap`).
CPU_BOUND_SHARE = 1 - MATERIAL_GAIN

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
    if not gain > 0 or gain < material * abs(statistics.median(b)):  # NaN: both never
        return False
    if 1 / math.comb(len(a) + len(b), len(a)) > SIGNIFICANCE:  # too few rounds for the test
        return min(a) > max(b)
    return mann_whitney_p(a, b) <= SIGNIFICANCE


def summarize(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One pool size's summary from its rounds' figures: the figures of its median round (by
    throughput), with the latencies the medians of all rounds', the counts their totals,
    the spreads (``rps_min``, ``rps_max``, ``p99_min_ms``, ``p99_max_ms``), each round's
    throughput and p99 (``rps_rounds``, ``p99_rounds_ms``; ``p99_all_rounds_ms``, failures
    counted, None: never) and every round's figures (``rounds``). Raises ValueError for no
    rounds."""
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
        "p99_all_rounds_ms": [r.get("p99_all_ms") for r in rounds],
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
    N that keeps every CPU busy (N x f >= ``cpus``) one more worker cannot add throughput,
    however fair a share of a shared machine it wins. A share of at least
    :data:`CPU_BOUND_SHARE` counts as all the time (a CPU-bound handler's worker also spends
    a little on its accept), so such a handler is capped at exactly the CPUs. (None, None)
    when no size measured the share. Raises nothing."""
    shares = [s["compute_share"] for s in sizes if s.get("compute_share")]
    if not shares:
        return None, None
    share = statistics.median(shares)
    counted = 1.0 if share >= CPU_BOUND_SHARE else share
    return max(1, math.ceil(cpus / counted - 1e-9)), share


def _never_inf(values: Sequence[float | None]) -> list[float]:
    """``values`` with None (never) as infinity."""
    return [math.inf if v is None else float(v) for v in values]


def recommend(
    sizes: Sequence[dict[str, Any]], *, open_loop: bool, caps: dict[str, int | None]
) -> dict[str, Any] | None:
    """The smallest pool size that no other size beats beyond the noise (see the module's
    docstring), among those within ``caps`` (name -> the most workers, or None: no cap;
    ``cpu``, ``memory``); None when no size served a request.

    ``sizes``: :func:`summarize` of each pool size; ``open_loop``: compare p99s, failures
    counted (``--rate``), instead of throughputs. Returns ``workers`` (None when no size
    measured fits in memory), ``best_workers`` (the best within the caps), ``capped``
    (``{name: cap}`` of the caps that left a size out), ``metric`` and a one-line
    ``reason``. Raises nothing.
    """
    served = sorted((s for s in sizes if s["ok"] and s["workers"] is not None), key=lambda s: s["workers"])
    if not served:
        return None
    capped = {name: cap for name, cap in caps.items() if cap is not None and served[-1]["workers"] > cap}
    metric = "p99" if open_loop else "throughput"
    memory = caps.get("memory")
    if memory is not None and served[0]["workers"] > memory:
        if memory == 0:
            reason = "no worker fits in --memory-limit, beside the master and what is shared"
        else:
            fit = f"only {memory} worker{'s' * (memory != 1)} fit"
            reason = f"{fit} in --memory-limit, fewer than the smallest pool size measured"
        return {"workers": None, "best_workers": None, "capped": capped, "metric": metric, "reason": reason}
    limit = min((c for c in caps.values() if c is not None), default=None)
    candidates = [s for s in served if limit is None or s["workers"] <= limit] or served[:1]
    material = MATERIAL_LATENCY_GAIN if open_loop else MATERIAL_GAIN

    def rounds_of(size: dict[str, Any]) -> list[float]:
        if open_loop:
            return _never_inf(size.get("p99_all_rounds_ms", size["p99_rounds_ms"]))
        return [float(v) for v in size["rps_rounds"]]

    def beaten(size: dict[str, Any]) -> bool:
        return any(
            beats(rounds_of(other), rounds_of(size), higher_is_better=not open_loop, material=material)
            for other in candidates
            if other is not size
        )

    best = (min if open_loop else max)(candidates, key=lambda s: statistics.median(rounds_of(s)))
    chosen = next(s for s in candidates if not beaten(s))  # the best is never beaten
    return {
        "workers": chosen["workers"],
        "best_workers": best["workers"],
        "capped": capped,
        "metric": metric,
        "reason": _reason(chosen, best, rounds_of, open_loop),
    }


def _describe(size: dict[str, Any], values: list[float], open_loop: bool) -> str:
    """``size``'s median and range over its rounds' ``values``."""
    rounds = size["rounds_run"]

    def show(value: float) -> str:
        if not open_loop:
            return f"{value:,.0f}"
        return "never" if math.isinf(value) else f"{value:g}"

    median = statistics.median(values)
    if open_loop:
        value = "p99 never" if math.isinf(median) else f"p99 {median:g} ms"
    else:
        value = f"{median:,.0f} req/s"
    if rounds == 1:
        return value
    return f"{value} median, {show(min(values))}-{show(max(values))} over {rounds} rounds"


def _reason(
    chosen: dict[str, Any],
    best: dict[str, Any],
    rounds_of: Callable[[dict[str, Any]], list[float]],
    open_loop: bool,
) -> str:
    what = "p99" if open_loop else "throughput"
    if chosen is best:
        return f"the best {what} ({_describe(best, rounds_of(best), open_loop)})"
    workers = best["workers"]
    return (
        f"{_describe(chosen, rounds_of(chosen), open_loop)}; the best {what}, {workers} "
        f"worker{'s' * (workers != 1)} ({_describe(best, rounds_of(best), open_loop)}), is not better "
        "beyond the noise"
    )
