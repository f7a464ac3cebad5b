"""The ``/status`` page: the pool at a glance in a browser, as Apache's mod_status.

:func:`render_html` makes one self-contained HTML page of a pool snapshot (``prefork.stats``)
and a :class:`History`: the pool, its totals and request durations, worker restarts by cause,
one row per worker, and an inline SVG chart of requests per second and busy workers over the
last minutes. No JavaScript and no external asset: inline CSS and SVG only, and the page
reloads itself every :data:`REFRESH_SECONDS`. Every string taken from the snapshot is escaped
(``html.escape``), so a hostile server name or path cannot inject markup.

Both run in the exporter process: a sampler thread feeds the :class:`History`, threads
answering ``/status`` render it.
"""

from __future__ import annotations

import collections
import html
import itertools
import math
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

#: Seconds between two automatic reloads of the page (``<meta http-equiv="refresh">``).
REFRESH_SECONDS = 5
#: Seconds over which the current requests per second are measured.
RATE_WINDOW = 10.0

# Apache's scoreboard keys, one character per worker.
_STATE_KEYS = {"idle": "_", "busy": "W", "starting": "S", "stopping": "G"}
_CHART_W, _CHART_H = 1080, 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 56, 14, 30  # chart margins, pixels

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:12px 24px}
header h1{font-size:20px;margin:0}header p{margin:2px 0 0;color:#b8c0cc}
main{max-width:1160px;margin:0 auto;padding:16px 24px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:12px 16px;margin:0 0 16px}
h2{font-size:15px;margin:0 0 8px}
.row{display:flex;gap:16px;flex-wrap:wrap}.row>section{flex:1 1 300px}
table{border-collapse:collapse;width:100%}
th,td{padding:3px 8px;text-align:right;border-bottom:1px solid #eef0f3;white-space:nowrap}
th{background:#f7f8fa;font-weight:600}th:first-child,td:first-child{text-align:left}
table.kv td:first-child{color:#5a6475}
.state{display:inline-block;min-width:64px;text-align:center;border-radius:10px;padding:0 6px;color:#fff}
.idle{background:#2e9b5f}.busy{background:#e07b1a}.starting{background:#3b78c4}.stopping{background:#8a93a3}
.bar{display:inline-block;height:10px;background:#3b78c4;border-radius:2px;vertical-align:middle}
code{font:13px ui-monospace,Menlo,Consolas,monospace;letter-spacing:1px;word-break:break-all}
svg{width:100%;height:auto;display:block}
.muted{color:#5a6475}
"""


class Point(NamedTuple):
    """One point of the chart: ``age`` seconds before the newest sample, the pool's requests
    per second since the sample before, and the busy workers at the sample."""

    age: float
    rate: float
    busy: int


class _Sample(NamedTuple):
    time: float  # time.monotonic(), seconds
    requests: int
    busy: int


class History:
    """A ring buffer of the last ``size`` samples of the pool (requests in total, busy
    workers), for the chart and the current rates: with one sample every 2 s, 180 samples are
    6 minutes. Fed by the exporter's sampler thread (:meth:`add`), read by the threads answering
    ``/status``; thread-safe. Per-worker request counts are kept for :data:`RATE_WINDOW` only.
    """

    def __init__(self, size: int = 180) -> None:
        self.size = size
        self._samples: collections.deque[_Sample] = collections.deque(maxlen=size)
        self._workers: collections.deque[tuple[float, dict[int, int]]] = collections.deque()
        self._lock = threading.Lock()

    def add(self, snapshot: Mapping[str, Any], now: float | None = None) -> None:
        """Record ``snapshot`` (a pool snapshot) taken at ``now`` (``time.monotonic()``, seconds;
        default: now). Raises KeyError or TypeError for a malformed snapshot."""
        now = time.monotonic() if now is None else now
        workers = snapshot["workers"]
        busy = sum(1 for worker in workers if worker["state"] == "busy")
        counts = {int(w["pid"]): int(w["requests"]) for w in workers if int(w["pid"]) > 0}
        with self._lock:
            self._samples.append(_Sample(now, int(snapshot["totals"]["requests"]), busy))
            self._workers.append((now, counts))
            while len(self._workers) > 1 and self._workers[1][0] <= now - RATE_WINDOW:
                self._workers.popleft()

    def points(self) -> list[Point]:
        """The chart's points, oldest first (one fewer than the samples)."""
        with self._lock:
            samples = list(self._samples)
        if not samples:
            return []
        newest = samples[-1].time
        return [
            Point(
                newest - after.time,
                _per_second(after.requests - before.requests, after.time - before.time),
                after.busy,
            )
            for before, after in itertools.pairwise(samples)
        ]

    def rate(self, window: float = RATE_WINDOW) -> float | None:
        """The pool's requests per second over the last ``window`` seconds of samples (less
        when the history is shorter), or None before two samples."""
        with self._lock:
            samples = list(self._samples)
        if len(samples) < 2:
            return None
        newest = samples[-1]
        oldest = next((s for s in samples if s.time >= newest.time - window), samples[0])
        if oldest is newest:
            oldest = samples[-2]
        return _per_second(newest.requests - oldest.requests, newest.time - oldest.time)

    def worker_rates(self) -> dict[int, float]:
        """Requests per second of each worker (by pid) over the last :data:`RATE_WINDOW`
        seconds; a worker seen in one sample only is absent."""
        with self._lock:
            if len(self._workers) < 2:
                return {}
            (start, before), (end, after) = self._workers[0], self._workers[-1]
        return {
            pid: _per_second(count - before[pid], end - start)
            for pid, count in after.items()
            if pid in before
        }


def _per_second(count: int, seconds: float) -> float:
    return max(0.0, count / seconds) if seconds > 0 else 0.0


def render_html(snapshot: Mapping[str, Any], history: History | None = None) -> str:
    """The ``/status`` page of ``snapshot`` (a pool snapshot), with the chart and the current
    rates of ``history`` (none without one). Runs in the exporter process. Raises KeyError,
    TypeError or ValueError when ``snapshot`` lacks a required key or has a malformed value."""
    history = history if history is not None else History()
    name = _e(snapshot["name"])
    return "".join(
        (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{name} - prefork status</title><style>{_CSS}</style></head><body>",
            f"<header><h1>{name}</h1><p>prefork pool status, master pid {_e(snapshot['master_pid'])}"
            f", up {_e(_duration(snapshot['uptime']))}</p></header><main>",
            '<div class="row">',
            _pool_section(snapshot),
            _totals_section(snapshot, history),
            "</div>",
            _chart_section(history, int(snapshot["workers_wanted"])),
            '<div class="row">',
            _durations_section(snapshot),
            _restarts_section(snapshot),
            "</div>",
            _workers_section(snapshot, history),
            "</main></body></html>\n",
        )
    )


def _pool_section(snap: Mapping[str, Any]) -> str:
    queue = snap.get("listen_queue") or {}
    length, limit = queue.get("length"), queue.get("limit")
    rows = [
        ("Master pid", snap["master_pid"]),
        ("Started", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(snap["started_at"]))),
        ("Uptime", _duration(snap["uptime"])),
        ("Generation (reloads)", snap["generation"]),
        ("Worker class", snap.get("worker_class", "")),
        ("Workers wanted", snap["workers_wanted"]),
        (
            "Dynamic pool",
            f"{snap['min_workers']} .. {snap['max_workers']}" if snap.get("max_workers") else "no",
        ),
        ("Listen queue", f"{_or_dash(length)} / {_or_dash(limit)}"),
        ("Control socket", snap.get("control_socket") or "-"),
        ("Metrics", snap.get("metrics_address") or "-"),
    ]
    for key in ("rss", "uss", "pss"):
        if snap.get(f"master_{key}") is not None:
            rows.append((f"Master memory ({key.upper()})", _bytes(snap[f"master_{key}"])))
    if snap.get("master_cpu_seconds") is not None:
        rows.append(("Master CPU", f"{snap['master_cpu_seconds']:.2f} s"))
    return _kv_section("Pool", rows)


def _totals_section(snap: Mapping[str, Any], history: History) -> str:
    totals = snap["totals"]
    requests = int(totals["requests"])
    rate = history.rate()
    states = collections.Counter(worker["state"] for worker in snap["workers"])
    board = "".join(_STATE_KEYS.get(worker["state"], "?") for worker in snap["workers"])
    rows = [
        ("Requests", requests),
        ("Errors", totals["errors"]),
        ("Denied connections", totals["denied"]),
        ("Requests/s (last 10 s)", "-" if rate is None else f"{rate:.1f}"),
        ("Requests/s (since start)", f"{_per_second(requests, float(snap['uptime'])):.2f}"),
        ("Busy time", f"{totals['busy_seconds']:.1f} s"),
        ("Mean duration", f"{1000 * totals['busy_seconds'] / requests:.1f} ms" if requests else "-"),
        ("Workers", ", ".join(f"{states.get(state, 0)} {state}" for state in _STATE_KEYS)),
    ]
    key = "_ idle, W busy, S starting, G stopping"
    extra = f'<p class="muted">Scoreboard ({_e(key)}):<br><code>{_e(board) or "-"}</code></p>'
    return _kv_section("Totals", rows, extra)


def _durations_section(snap: Mapping[str, Any]) -> str:
    bounds: Sequence[float] = snap["duration_buckets"]
    counts: Sequence[int] = snap["totals"]["duration_counts"]
    total = sum(counts)
    rows = []
    for i, count in enumerate(counts):
        label = f"&le; {_seconds(bounds[i])}" if i < len(bounds) else f"&gt; {_seconds(bounds[-1])}"
        share = count / total if total else 0.0
        bar = f'<span class="bar" style="width:{round(120 * share)}px"></span>'
        rows.append(
            f"<tr><td>{label}</td><td>{_e(count)}</td><td>{100 * share:.1f} %</td><td>{bar}</td></tr>"
        )
    return (
        "<section><h2>Request durations</h2><table><tr><th>Duration</th><th>Requests</th><th>Share</th>"
        f"<th></th></tr>{''.join(rows)}</table></section>"
    )


def _restarts_section(snap: Mapping[str, Any]) -> str:
    restarts: Mapping[str, int] = snap["restarts"]
    rows: list[tuple[str, object]] = [(cause.replace("_", " "), count) for cause, count in restarts.items()]
    rows.append(("Boot failures", snap["boot_failures"]))
    return _kv_section("Worker restarts", rows)


def _workers_section(snap: Mapping[str, Any], history: History) -> str:
    rates = history.worker_rates()
    now = float(snap["started_at"]) + float(snap["uptime"])
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "Worker",
            "Pid",
            "Gen",
            "State",
            "Requests",
            "Errors",
            "Req/s",
            "Request age",
            "Up",
            "RSS",
            "USS",
            "PSS",
            "CPU",
        )
    )
    rows = []
    for worker in sorted(snap["workers"], key=lambda w: (w["number"], w["pid"])):
        state = str(worker["state"])
        age = worker.get("request_age")
        booted = worker.get("booted_at")
        rate = rates.get(int(worker["pid"]))
        cells = (
            _e(worker["number"]),
            _e(worker["pid"]),
            _e(worker.get("generation", "")),
            f'<span class="state {_e(state)}">{_e(state)}</span>',
            _e(worker["requests"]),
            _e(worker.get("errors", "")),
            "-" if rate is None else f"{rate:.1f}",
            f"{age:.2f} s" if age is not None else "",
            _e(_duration(now - booted)) if booted else "-",
            *(_bytes(worker[k]) if worker.get(k) is not None else "-" for k in ("rss", "uss", "pss")),
            f"{worker['cpu_seconds']:.2f} s" if worker.get("cpu_seconds") is not None else "-",
        )
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    body = "".join(rows) or '<tr><td colspan="13" class="muted">no live worker</td></tr>'
    return f'<section><h2>Workers</h2><table class="workers"><tr>{head}</tr>{body}</table></section>'


def _chart_section(history: History, wanted: int) -> str:
    return (
        "<section><h2>Requests per second and busy workers</h2>"
        f"{chart_svg(history.points(), wanted)}</section>"
    )


def chart_svg(points: Sequence[Point], workers: int = 1) -> str:
    """An inline SVG chart of ``points``: requests per second (blue, left axis) and busy
    workers (orange, right axis, up to at least ``workers``), against the age of the points
    (minutes, now at the right). Well-formed XML; a note instead of lines before two points."""
    plot_w, plot_h = _CHART_W - _LEFT - _RIGHT, _CHART_H - _TOP - _BOTTOM
    span = max(60.0, math.ceil(max((p.age for p in points), default=0.0) / 60.0) * 60.0)
    rate_max = _nice_ceiling(max((p.rate for p in points), default=0.0))
    busy_max = max(1, workers, *(p.busy for p in points))

    def x(age: float) -> float:
        return _LEFT + plot_w * (1.0 - age / span)

    def y(value: float, top: float) -> float:
        return _TOP + plot_h * (1.0 - value / top)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_CHART_W} {_CHART_H}" role="img" '
        f'font-family="sans-serif" font-size="12"><title>Requests per second and busy workers</title>',
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="#fbfcfd" stroke="#dde1e7"/>',
    ]
    for i in range(5):
        level = _TOP + plot_h * i / 4
        parts.append(
            f'<line x1="{_LEFT}" y1="{level:.1f}" x2="{_LEFT + plot_w}" y2="{level:.1f}" stroke="#eef0f3"/>'
        )
        parts.append(f'<text x="{_LEFT - 6}" y="{level + 4:.1f}" text-anchor="end" fill="#3b78c4">')
        parts.append(f"{_number(rate_max * (4 - i) / 4)}</text>")
        parts.append(f'<text x="{_LEFT + plot_w + 6}" y="{level + 4:.1f}" fill="#e07b1a">')
        parts.append(f"{_number(busy_max * (4 - i) / 4)}</text>")
    for minute in range(int(span // 60) + 1):
        tick = x(minute * 60.0)
        label = "now" if minute == 0 else f"-{minute} min"
        parts.append(f'<text x="{tick:.1f}" y="{_TOP + plot_h + 18}" text-anchor="middle" fill="#5a6475">')
        parts.append(f"{label}</text>")
    if len(points) < 2:
        parts.append(
            f'<text x="{_LEFT + plot_w / 2}" y="{_TOP + plot_h / 2}" text-anchor="middle" fill="#5a6475">'
            "collecting samples...</text>"
        )
    else:
        rate_line = " ".join(f"{x(p.age):.1f},{y(p.rate, rate_max):.1f}" for p in points)
        first, last = x(points[0].age), x(points[-1].age)
        bottom = _TOP + plot_h
        area = f"{first:.1f},{bottom} {rate_line} {last:.1f},{bottom}"
        parts.append(f'<polygon points="{area}" fill="#3b78c4" opacity="0.15"/>')
        parts.append(f'<polyline points="{rate_line}" fill="none" stroke="#3b78c4" stroke-width="2"/>')
        busy_line = " ".join(f"{x(p.age):.1f},{y(p.busy, busy_max):.1f}" for p in points)
        parts.append(f'<polyline points="{busy_line}" fill="none" stroke="#e07b1a" stroke-width="2"/>')
    parts.append(
        f'<text x="{_LEFT}" y="{_TOP - 3}" fill="#3b78c4" font-size="12">requests/s</text>'
        f'<text x="{_LEFT + plot_w}" y="{_TOP - 3}" text-anchor="end" fill="#e07b1a" font-size="12">'
        "busy workers</text>"
        "</svg>"
    )
    return "".join(parts)


def _kv_section(title: str, rows: Sequence[tuple[str, object]], extra: str = "") -> str:
    body = "".join(f"<tr><td>{_e(key)}</td><td>{_e(value)}</td></tr>" for key, value in rows)
    return f'<section><h2>{_e(title)}</h2><table class="kv">{body}</table>{extra}</section>'


def _e(value: object) -> str:
    """``value`` as HTML text, escaped (quotes too, for attributes)."""
    return html.escape(str(value), quote=True)


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


def _duration(seconds: float) -> str:
    """``seconds`` as ``[D d ]HH:MM:SS``."""
    whole = max(0, int(seconds))
    days, rest = divmod(whole, 86400)
    text = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days} d {text}" if days else text


def _seconds(value: float) -> str:
    """A duration bound: ``5 ms`` below one second, else ``2.5 s``."""
    return f"{value * 1000:g} ms" if value < 1 else f"{value:g} s"


def _bytes(value: float) -> str:
    """A size in bytes, in binary units (``12.3 MiB``)."""
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten that is at least ``value`` (1 for 0)."""
    if value <= 1:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= value)


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"
