"""The SLO mode of ``prefork bench`` (``--slo p99=50ms --rate R``): latency objectives, how a
run is judged against them, and which pool size is recommended.

A run meets an objective ``pQ <= LIMIT`` when Q% of the requests that came due got a good
reply within LIMIT of when they were due (open loop: the latency counts from the scheduled
send time, so the queueing a slow pool causes is in it). Failed requests and requests that
came due but never started count as slower than any reply: a pool that drops 2% of its
requests cannot meet a p99. A pool size meets the SLO when every round of it met every
objective. Pure functions: they run in the bench's parent process.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from prefork.bench.parse import parse_duration, shown

_OBJECTIVE = re.compile(r"^\s*p(\d+(?:\.\d+)?)\s*=\s*(.+?)\s*$", re.ASCII)
#: The highest latency an objective may set, in seconds: an hour, the histograms' range.
MAX_LIMIT = 3600.0


class Objective(NamedTuple):
    """One latency objective: ``percentile`` (0 to 100) of the requests within ``limit``
    seconds of when they were due."""

    percentile: float
    limit: float

    @property
    def name(self) -> str:
        """``p99``, ``p99.9``: the percentile as the command line writes it."""
        return f"p{self.percentile:g}"

    def __str__(self) -> str:
        return f"{self.name} <= {self.limit * 1000:g} ms"


def parse_slo(text: str) -> list[Objective]:
    """The objectives in ``p99=50ms`` or ``p50=10ms,p99=50ms`` (a percentile above 0 and at
    most 100, a time more than 0 and at most :data:`MAX_LIMIT`). Raises ValueError with one
    line saying what is wrong."""
    objectives = []
    for part in text.split(","):
        match = _OBJECTIVE.match(part)
        if match is None:
            raise ValueError(f"bad SLO {shown(text)}: expected pNN=TIME, e.g. p99=50ms (comma-separated)")
        percentile, limit = float(match[1]), parse_duration(match[2])
        if not 0 < percentile <= 100 or not 0 < limit <= MAX_LIMIT:
            raise ValueError(
                f"bad SLO {shown(part.strip())}: the percentile must be above 0 and at most 100, "
                f"the time above 0 and at most {MAX_LIMIT / 3600:g} h"
            )
        objectives.append(Objective(percentile, limit))
    return objectives


def latency_with_failures(histogram: Any, ok: int, failed: int, percentile: float) -> float | None:
    """The ``percentile``-th latency, in milliseconds, of all requests that came due: ``ok``
    good replies (their latencies in ``histogram``, microseconds) and ``failed`` others
    (errors, unsent), counted as slower than any reply. None when more than ``100 -
    percentile`` percent failed (the value is "never"), or nothing came due. Raises nothing."""
    total = ok + failed
    needed = percentile / 100 * total  # requests that must be within the value
    if total == 0 or needed > ok:
        return None
    return float(histogram.get_value_at_percentile(100 * needed / ok)) / 1000


def judge(histogram: Any, ok: int, failed: int, objectives: Sequence[Objective]) -> list[dict[str, Any]]:
    """One run against each of ``objectives`` (see :func:`latency_with_failures` for
    ``histogram``, ``ok`` and ``failed``): ``objective``, ``limit_ms``, ``value_ms`` (None:
    never) and ``met``, as plain JSON values. Raises nothing."""
    verdicts = []
    for objective in objectives:
        value = latency_with_failures(histogram, ok, failed, objective.percentile)
        verdicts.append(
            {
                "objective": objective.name,
                "limit_ms": round(objective.limit * 1000, 3),
                "value_ms": None if value is None else round(value, 3),
                "met": value is not None and value <= objective.limit * 1000,
            }
        )
    return verdicts


def recommend_slo(
    sizes: Sequence[dict[str, Any]], objectives: Sequence[Objective], rate: float, fit: int | None
) -> dict[str, Any]:
    """The smallest pool size that met the SLO in every round, and fits in memory.

    ``sizes``: the per-size summaries (each with ``workers``, ``slo_met``, ``slo_met_rounds``
    and ``rounds_run``); ``fit``: how many workers fit in ``--memory-limit`` (None: no limit).
    Returns ``workers`` (None: no size met it), ``met`` (the sizes that met it) and a one-line
    ``reason``. Raises nothing.
    """
    slo = " and ".join(str(o) for o in objectives) + f" at {rate:g} req/s"
    met = [s["workers"] for s in sizes if s["slo_met"] and s["workers"] is not None]
    fitting = [w for w in met if fit is None or w <= fit]
    if fitting:
        chosen = min(fitting)
        reason = f"the smallest pool that met {slo} in every round"
        if len(fitting) < len(met):
            reason += f" and fits in memory ({fit} workers fit)"
    else:
        chosen = None
        reason = (
            f"no pool size met {slo} in every round"
            if not met
            else f"{', '.join(map(str, met))} workers met {slo}, but only {fit} fit in memory"
        )
    return {"workers": chosen, "met": met, "slo": slo, "reason": reason}
