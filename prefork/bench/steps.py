"""The step-load mode of ``prefork bench`` (``--step-load "10/s for 10s, 250/s for 20s"``):
the schedule, the pool's workers sampled while it runs, and the time series it shows.

Open-loop load whose rate changes step after step (:mod:`prefork.bench.loadgen` sends on
that schedule, latency counting from each request's due time). While it runs, the bench's
parent process reads the server's scoreboard every :data:`SAMPLE_INTERVAL` seconds
(:class:`PoolSampler`: how many workers are starting, idle and busy), so a dynamic pool can
be seen following the load. The series has one row per window (``--window``, 1 s): the
rate offered, the good replies, p50 and p99 of the requests due in the window, the errors,
and the workers. Each step is summed up apart, its first ``--settle`` seconds (the ramp,
while the pool grows) apart from the rest.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from prefork.bench.load import LoadResult, Window, histogram_like
from prefork.bench.parse import parse_duration
from prefork.bench.text import grid, ms

#: Seconds between two samples of the pool's workers.
SAMPLE_INTERVAL = 0.25
#: The most steps, and the highest rate of one (requests per second).
MAX_STEPS = 100
MAX_RATE = 1e7

_STEP = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*/\s*s\s*(?:for\s+|:\s*)(.+?)\s*$", re.ASCII)


class Step(NamedTuple):
    """One step of the load: ``rate`` requests per second for ``seconds``."""

    rate: float
    seconds: float


def parse_steps(text: str) -> list[Step]:
    """The steps in ``10/s for 10s, 250/s for 20s`` (or ``10/s:10s,250/s:20s``): rates of 0 to
    :data:`MAX_RATE` per second, times above 0, at most :data:`MAX_STEPS`. Raises ValueError
    with one line saying what is wrong."""
    steps = []
    for part in text.split(","):
        match = _STEP.match(part)
        if match is None:
            raise ValueError(f"bad step {part.strip()!r}: expected RATE/s for TIME, e.g. '250/s for 20s'")
        step = Step(float(match[1]), parse_duration(match[2]))
        if step.rate > MAX_RATE or step.seconds <= 0:
            raise ValueError(
                f"bad step {part.strip()!r}: the rate must be at most {MAX_RATE:g}/s, the time above 0"
            )
        steps.append(step)
    if len(steps) > MAX_STEPS:
        raise ValueError(f"too many steps ({len(steps)}): at most {MAX_STEPS}")
    if not any(step.rate for step in steps):
        raise ValueError("every step has a rate of 0: nothing to send")
    return steps


class PoolSampler:
    """Samples a server's workers by state, from its scoreboard file, at most every
    :data:`SAMPLE_INTERVAL` seconds of the run; in the bench's parent process, while the
    load runs. Opens the file on the first sample; :meth:`close` unmaps it. Raises nothing:
    a scoreboard that cannot be read gives no samples."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.samples: list[dict[str, Any]] = []
        self._board: Any = None
        self._last = -math.inf

    def sample(self, elapsed: float) -> None:
        """Record the workers now, ``elapsed`` seconds into the run (unless the last sample
        is less than :data:`SAMPLE_INTERVAL` old)."""
        if self.path is None or elapsed - self._last < SAMPLE_INTERVAL:
            return
        self._last = elapsed
        from prefork.scoreboard import Scoreboard

        try:
            if self._board is None:
                self._board = Scoreboard.open(self.path)
            states = [slot.state for slot in self._board.slots()]
        except (OSError, ValueError):
            return
        names = [state.name for state in states]
        starting, idle, busy = (names.count(name) for name in ("STARTING", "IDLE", "BUSY"))
        self.samples.append(
            {
                "t": round(elapsed, 3),
                "workers": starting + idle + busy,
                "starting": starting,
                "idle": idle,
                "busy": busy,
            }
        )

    def close(self) -> None:
        """Unmap the scoreboard, if it was opened."""
        if self._board is not None:
            self._board.close()
            self._board = None


def rate_at(steps: Sequence[Step], start: float, end: float) -> float:
    """The mean rate the steps offer between ``start`` and ``end`` seconds (requests per
    second). Raises nothing."""
    offered, at = 0.0, 0.0
    for step in steps:
        overlap = min(end, at + step.seconds) - max(start, at)
        offered += max(0.0, overlap) * step.rate
        at += step.seconds
    return offered / (end - start) if end > start else 0.0


def _ms(histogram: Any, percentile: float) -> float | None:
    if histogram is None or not histogram.get_total_count():
        return None
    return round(float(histogram.get_value_at_percentile(percentile)) / 1000, 3)


def _added(total: Any, histogram: Any) -> Any:
    """``total`` (None: none yet, made like ``histogram``) with ``histogram`` (None: empty)
    added."""
    if histogram is None:
        return total
    if total is None:
        total = histogram_like(histogram)
    total.add(histogram)
    return total


def series(
    load: LoadResult, steps: Sequence[Step], window: float, samples: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One row per ``window`` seconds of the steps: ``t`` (its start, seconds), ``offered``
    (req/s), ``served`` (good replies that came in it, per second), ``p50_ms``, ``p99_ms`` of
    the requests due in it (None: no good reply), their ``errors``, and the ``workers`` and
    ``busy`` workers (the most of the samples in it; None without samples). Raises nothing."""
    total = sum(step.seconds for step in steps)
    rows = []
    for index in range(max(1, math.ceil(total / window - 1e-9))):
        start, end = index * window, min(total, (index + 1) * window)
        part = load.windows[index] if index < len(load.windows) else Window()
        inside = [s for s in samples if start <= s["t"] < end]
        rows.append(
            {
                "t": round(start, 3),
                "offered": round(rate_at(steps, start, end), 1),
                "served": round(part.served / (end - start), 1),
                "p50_ms": _ms(part.histogram, 50),
                "p99_ms": _ms(part.histogram, 99),
                "errors": part.failed,
                "workers": max((s["workers"] for s in inside), default=None),
                "busy": max((s["busy"] for s in inside), default=None),
            }
        )
    return rows


def step_summaries(
    load: LoadResult, steps: Sequence[Step], window: float, samples: Sequence[dict[str, Any]], settle: float
) -> list[dict[str, Any]]:
    """Each step summed up: its ``rate`` and ``seconds``, the p99 of the requests due in it
    (``p99_ms``), in its first ``settle`` seconds (``ramp_p99_ms``) and after
    (``settled_p99_ms``), its ``errors``, and its workers: at its start, the most, when the
    most were first reached (seconds into the step), at its end. Raises nothing."""
    out, at = [], 0.0
    for step in steps:
        whole: Any = None
        ramp: Any = None
        settled: Any = None
        errors = 0
        for index, part in enumerate(load.windows):
            start = index * window
            if at <= start < at + step.seconds:
                whole = _added(whole, part.histogram)
                if start < at + settle:
                    ramp = _added(ramp, part.histogram)
                else:
                    settled = _added(settled, part.histogram)
                errors += part.failed
        inside = [s for s in samples if at <= s["t"] < at + step.seconds]
        most = max((s["workers"] for s in inside), default=None)
        reached = next((s["t"] - at for s in inside if s["workers"] == most), None)
        out.append(
            {
                "rate": step.rate,
                "seconds": step.seconds,
                "p99_ms": _ms(whole, 99),
                "ramp_p99_ms": _ms(ramp, 99),
                "settled_p99_ms": _ms(settled, 99),
                "errors": errors,
                "workers_start": inside[0]["workers"] if inside else None,
                "workers_max": most,
                "workers_max_after_s": None if reached is None else round(reached, 2),
                "workers_end": inside[-1]["workers"] if inside else None,
            }
        )
        at += step.seconds
    return out


def _cell(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def step_table(rows: Sequence[dict[str, Any]]) -> str:
    """The time series (:func:`series`) as a plain-text table. Raises nothing."""
    head = ("t s", "offered/s", "served/s", "p50 ms", "p99 ms", "errors", "workers", "busy")
    lines: list[tuple[str, ...]] = [head]
    for r in rows:
        lines.append(
            (
                f"{r['t']:g}",
                f"{r['offered']:,.0f}",
                f"{r['served']:,.0f}",
                _cell(r["p50_ms"], ".2f"),
                _cell(r["p99_ms"], ".2f"),
                str(r["errors"]),
                _cell(r["workers"]),
                _cell(r["busy"]),
            )
        )
    return grid(lines)


def step_lines(summaries: Sequence[dict[str, Any]], settle: float) -> list[str]:
    """One line per step (:func:`step_summaries`): its p99, the ramp's apart, and its
    workers. Raises nothing."""
    lines = []
    for number, s in enumerate(summaries, 1):
        line = f"step {number}: {s['rate']:g}/s for {s['seconds']:g} s: p99 {ms(s['p99_ms'])}"
        if s["seconds"] > settle:
            line += f" (first {settle:g} s {ms(s['ramp_p99_ms'])}, after {ms(s['settled_p99_ms'])})"
        if s["errors"]:
            line += f", {s['errors']} errors"
        start, most, end = s["workers_start"], s["workers_max"], s["workers_end"]
        if most is not None and start == most == end:
            line += f"; {most} workers all along"
        elif most is not None and most > start:
            line += (
                f"; workers {start} at the start, {most} at most "
                f"({s['workers_max_after_s']:g} s into the step), {end} at the end"
            )
        elif most is not None:
            line += f"; workers {start} at the start, {end} at the end"
        lines.append(line)
    return lines
