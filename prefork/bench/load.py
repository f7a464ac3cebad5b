"""What one client process of ``prefork bench`` drives and what it measured.

A :class:`LoadSpec` (all times in seconds) goes from the bench's parent process to a client
process as one line of JSON; a :class:`LoadResult` comes back the same way, and the parent
merges those of all its client processes. Latency goes into an HDR histogram
(``hdrhistogram``, microseconds, 3 significant digits), never a list of samples; the
step-load mode's windows get smaller ones, made when a reply first lands in them
(:func:`new_window_histogram`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

#: Latencies are recorded in microseconds, from 1 us to 1 hour, to 3 significant digits.
HIST_LOWEST_US = 1
HIST_HIGHEST_US = 3_600_000_000
HIST_DIGITS = 3


#: A window's histogram: 2 significant digits (a p99 to within 1%) up to the request timeout.
WINDOW_DIGITS = 2


def new_histogram() -> Any:
    """An empty latency histogram (an ``HdrHistogram`` of microseconds, 1 us to 1 hour,
    about 190 KB). Raises nothing."""
    return HdrHistogram(HIST_LOWEST_US, HIST_HIGHEST_US, HIST_DIGITS)


def new_window_histogram(highest_us: int) -> Any:
    """An empty histogram for one window of the step-load mode: microseconds from 1 to
    ``highest_us`` (the request timeout), :data:`WINDOW_DIGITS` significant digits; about
    17 KB for a timeout of 5 s, a tenth of :func:`new_histogram`'s. Raises nothing."""
    return HdrHistogram(HIST_LOWEST_US, max(2 * HIST_LOWEST_US, highest_us), WINDOW_DIGITS)


def histogram_like(other: Any) -> Any:
    """An empty histogram with the range and precision of ``other``. Raises nothing."""
    return HdrHistogram(
        other.lowest_trackable_value, other.highest_trackable_value, other.significant_figures
    )


@dataclass(frozen=True)
class LoadSpec:
    """The load one client process drives (all times in seconds).

    ``address`` is ``(host, port)`` for ``family`` AF_INET/AF_INET6, a path for AF_UNIX.
    ``concurrency``: requests in flight at most. ``rate``: requests per second to start (open
    loop), or None (closed loop). ``warmup``: seconds of load before measuring, not counted.
    ``duration``: seconds measured. ``requests``: stop after starting this many measured
    requests (None: no count limit). ``timeout``: per request, from when it was due.
    ``expect``: bytes a good reply contains (None: any whole reply). ``host``: HTTP Host header.
    ``steps``: open loop at a rate that changes, ((requests per second, seconds), ...) one
    after the other from the start (no warmup; ``duration`` is their sum), or None.
    ``window``: seconds per window of :attr:`LoadResult.windows` (None: no windows).
    Open loop, ``stride`` client processes share the schedule of ``rate`` (or ``steps``) and
    this one is number ``phase`` of them (:class:`~prefork.bench.schedule.Schedule`).
    """

    family: int
    address: tuple[str, int] | str
    protocol: str
    payload: bytes
    concurrency: int
    duration: float
    rate: float | None = None
    warmup: float = 0.0
    requests: int | None = None
    keepalive: bool = False
    timeout: float = 5.0
    expect: bytes | None = None
    host: str = "localhost"
    steps: tuple[tuple[float, float], ...] | None = None
    window: float | None = None
    phase: int = 0
    stride: int = 1

    def to_json(self) -> str:
        """One line of JSON (bytes as latin-1 text), read back by :meth:`from_json`."""
        data = dataclasses.asdict(self)
        data["payload"] = self.payload.decode("latin-1")
        data["expect"] = None if self.expect is None else self.expect.decode("latin-1")
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> LoadSpec:
        """The spec :meth:`to_json` wrote (one line of JSON, ``text``). Raises ValueError for
        text that is not JSON, KeyError or TypeError for JSON that is not a spec's."""
        data = json.loads(text)
        data["payload"] = data["payload"].encode("latin-1")
        if data["expect"] is not None:
            data["expect"] = data["expect"].encode("latin-1")
        if isinstance(data["address"], list):
            data["address"] = tuple(data["address"])
        if data.get("steps") is not None:
            data["steps"] = tuple((float(rate), float(seconds)) for rate, seconds in data["steps"])
        return cls(**data)


@dataclass
class LoadResult:
    """What one client process measured (or several, merged with :meth:`merge`).

    ``ok``: good replies to measured requests (started after the warmup); ``ok_in_window``:
    good replies that arrived within the ``duration`` measured (to any request); ``elapsed``:
    seconds from the start of measuring to the last measured reply; ``errors``: counts by
    kind; ``unsent``: open-loop requests that came due but could not start before the end;
    ``cpu``: CPU seconds (user + system) each client process used while measuring; ``wall``:
    seconds each measured; ``histogram``: latencies of good replies (microseconds).
    ``windows``: with :attr:`LoadSpec.window`, per window of that many seconds from the start
    of measuring (:class:`Window`).
    """

    ok: int = 0
    ok_in_window: int = 0
    elapsed: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    unsent: int = 0
    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    histogram: Any = field(default_factory=new_histogram)
    windows: list[Window] = field(default_factory=list)

    def count_error(self, kind: str) -> None:
        """Count one error of ``kind`` (one of :data:`~prefork.bench.protocols.ERROR_KINDS`,
        or ``other: ERRNO``)."""
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def window(self, index: int) -> Window:
        """Window number ``index`` (0: the first), created with those before it if need be."""
        while len(self.windows) <= index:
            self.windows.append(Window())
        return self.windows[index]

    @property
    def error_total(self) -> int:
        """All errors, of every kind."""
        return sum(self.errors.values())

    def merge(self, other: LoadResult) -> None:
        """Add ``other`` (another client process's result, over the same window) to this one."""
        self.ok += other.ok
        self.ok_in_window += other.ok_in_window
        self.elapsed = max(self.elapsed, other.elapsed)
        for kind, count in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + count
        self.unsent += other.unsent
        self.cpu += other.cpu
        self.wall += other.wall
        self.histogram.add(other.histogram)
        for index, theirs in enumerate(other.windows):
            ours = self.window(index)
            ours.ok += theirs.ok
            ours.failed += theirs.failed
            ours.served += theirs.served
            if theirs.histogram is not None:
                if ours.histogram is None:
                    ours.histogram = histogram_like(theirs.histogram)
                ours.histogram.add(theirs.histogram)

    def to_json(self) -> str:
        """One line of JSON, the histograms HdrHistogram-encoded, read back by :meth:`from_json`."""
        skip = ("histogram", "windows")
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}
        data["histogram"] = self.histogram.encode().decode("ascii")
        data["windows"] = [
            [w.ok, w.failed, w.served, None if w.histogram is None else w.histogram.encode().decode("ascii")]
            for w in self.windows
        ]
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> LoadResult:
        """The result :meth:`to_json` wrote (one line of JSON, ``text``). Raises ValueError for
        text that is not JSON or a bad histogram, KeyError or TypeError for JSON that is not a
        result's."""
        data = json.loads(text)
        encoded = data.pop("histogram")
        windows = data.pop("windows", [])
        result = cls(**data)
        result.histogram.decode_and_add(encoded.encode("ascii"))
        for ok, failed, served, histogram in windows:
            decoded = None if histogram is None else HdrHistogram.decode(histogram.encode("ascii"))
            result.windows.append(Window(ok, failed, served, decoded))
        return result


@dataclass
class Window:
    """One window of a :class:`LoadResult`: the requests due in it that got a good reply
    (``ok``) or failed, and the good replies' latencies (``histogram``, microseconds; None
    until the first, see :func:`new_window_histogram`); and the good replies that came in it
    (``served``), to requests due in it or before."""

    ok: int = 0
    failed: int = 0
    served: int = 0
    histogram: Any = None

    def record(self, micros: int, highest_us: int) -> None:
        """Count a good reply of ``micros`` microseconds (at most ``highest_us``, the
        histogram's top, which it is made with if need be) to a request due in this window."""
        if self.histogram is None:
            self.histogram = new_window_histogram(highest_us)
        self.ok += 1
        self.histogram.record_value(min(micros, self.histogram.highest_trackable_value))
