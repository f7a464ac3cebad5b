"""Application metrics shared by the workers, without files: :class:`Counter`, :class:`Gauge`
and :class:`Histogram`, with the names and calls of prometheus_client's.

Handler code declares metrics at import (in the master with ``--preload``, else in each worker)
and updates them per request; the exporter process reads the sum of all workers with
:meth:`~prefork.metricsregion.MetricsRegion.collect`. This is the answer to prometheus_client's
multiprocess mode, which needs ``PROMETHEUS_MULTIPROC_DIR`` and leaves files behind per pid::

    HITS = Counter("app_hits", "Pages served", labelnames=("path",))
    HITS.labels(path="/").inc()  # in a worker, per request: no lock across processes, no system call

Where the values go: the master creates a :class:`~prefork.metricsregion.MetricsRegion`
(anonymous shared memory, one area per scoreboard slot plus a *retired* area; its module
describes the layout and capacity) before it forks. A worker calls :func:`attach` after the
fork, and from then on writes only its own slot's area. A series (a metric, or one set of its
label values) is registered there on its first use in the process, so a metric declared in the
master before the fork is re-resolved after :func:`attach`. Within the process one
lock (``threading.RLock``) guards each read-modify-write (the ``thread`` worker runs many threads).

Before :func:`attach` (in the master, in a program that does not use prefork) and after
:func:`detach` (automatic in a process forked by a worker's handler: ``os.register_at_fork``),
every write is accepted and goes nowhere. When a worker's slot is full (``SLOT_VALUES``
values or ``SLOT_KEY_BYTES`` bytes of keys), its new series are not recorded: their updates
are no-ops, and the warning "metrics slot full" is logged once per process (logger
``"prefork"``).

Counters and histograms survive worker recycling and a HUP reload: the master folds an exited
worker's slot into the retired area (:meth:`~prefork.metricsregion.MetricsRegion.fold`).
Gauges are per live worker and vanish with it. A USR2 upgrade starts a new master with a new
region: the counters restart from zero, which Prometheus treats as a counter reset.

Not supported, as compared with prometheus_client: summaries, info, enums, exemplars, the
``_created`` samples, ``remove()``/``clear()`` of label values, registries (see
:class:`Counter` for declaring a name twice).
"""

from __future__ import annotations

import bisect
import copy
import itertools
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import ClassVar, Self

from prefork.metricsregion import (
    GAUGE_MODES,
    SLOT_KEY_BYTES,
    SLOT_VALUES,
    Family,
    MetricsRegion,
    Sample,
    SeriesKey,
    WriterArea,
)

__all__ = [
    "DEFAULT_BUCKETS",
    "GAUGE_MODES",
    "SLOT_KEY_BYTES",
    "SLOT_VALUES",
    "Counter",
    "Family",
    "Gauge",
    "Histogram",
    "MetricsRegion",
    "Sample",
    "attach",
    "detach",
]

log = logging.getLogger("prefork")

#: Histogram bucket upper bounds (seconds) when none are given: prometheus_client's (+Inf implied).
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
# prometheus_client's names of gauge modes: ours are all "live" (a dead worker's gauge is gone).
_MODE_ALIASES = {"livesum": "sum", "livemax": "max", "livemin": "min", "liveall": "all"}
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_NOWHERE = memoryview(bytearray(8)).cast("d")


class _Attachment:
    """Where this process's writes go: its slot's area, or nowhere (``area`` None)."""

    def __init__(self, area: WriterArea | None, generation: int) -> None:
        # New in each process (one copied at fork may be held); reentrant for a logging handler
        # that counts with a metric while the slot-full warning is logged.
        self.lock = threading.RLock()
        self.area = area
        self.values = area.doubles if area is not None else _NOWHERE
        self.generation = generation  # a series resolved at another generation resolves again
        self.warned = False


_state = _Attachment(None, 0)
# name -> (type, mode, label names, buckets) of the metrics declared in this process.
_declared: dict[str, tuple[str, str, tuple[str, ...], tuple[float, ...]]] = {}


def attach(region: MetricsRegion, slot: int) -> None:
    """From now on, write this process's metrics to ``slot`` (0 to ``region.capacity - 1``,
    the worker's scoreboard slot) of ``region``. Runs in the worker, right after the fork,
    before it serves. Series already in the slot (not folded by the master) are kept and
    continued. Raises ValueError when ``slot`` is out of range."""
    global _state
    area = region.writer(slot)
    _state = _Attachment(area, _state.generation + 1)


def detach() -> None:
    """From now on, let this process's metric writes go nowhere: for a process forked by a
    handler, which must not write its worker's slot. Done automatically after every
    ``os.fork()`` (``os.register_at_fork``), so a worker calls :func:`attach` after it. Runs in
    that process."""
    global _state
    _state = _Attachment(None, _state.generation + 1)


os.register_at_fork(after_in_child=detach)


class _Metric:
    """What the three metric types share: the name, labels and the series' place in the slot."""

    _type: ClassVar[str] = ""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        namespace: str,
        subsystem: str,
        unit: str,
        *,
        mode: str = "",
        buckets: tuple[float, ...] = (),
        reserved: str = "",
    ) -> None:
        full = "_".join(part for part in (namespace, subsystem, name) if part)
        if self._type == "counter" and full.endswith("_total"):
            full = full[: -len("_total")]
        if unit and not full.endswith("_" + unit):
            full += "_" + unit
        if not _METRIC_NAME.fullmatch(full):
            raise ValueError(f"Invalid metric name: {full!r}")
        if isinstance(labelnames, str):
            raise ValueError(f"labelnames of {full} must be a sequence of names, not a string")
        names = tuple(labelnames)
        for label in names:
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"Invalid label metric name: {label!r}")
            if label == reserved:
                raise ValueError(f"Reserved label metric name: {label!r} (for {full})")
        if len(set(names)) != len(names):
            raise ValueError(f"Duplicate label names of {full}: {names}")
        signature = (self._type, mode, names, buckets)
        with _state.lock:
            known, _declared[full] = _declared.get(full, signature), signature
        if known != signature:  # e.g. the master importing changed code again on HUP
            log.warning(
                "Metric %s declared again as %s, was %s: the first seen is exported", full, signature, known
            )
        self._name, self._documentation = full, str(documentation)
        self._labelnames, self._mode, self._buckets = names, mode, buckets
        self._labelset = frozenset(names)
        self._labelvalues: tuple[str, ...] | None = None if names else ()
        self._children: dict[tuple[str, ...], Self] = {}
        self._count = len(buckets) + 2 if self._type == "histogram" else 1  # values of one series
        self._index, self._generation = -1, -1  # in the attached region's values

    def labels(self, *labelvalues: object, **labelkwargs: object) -> Self:
        """The series (a metric of the same type) of these label values, given in the order of
        ``labelnames`` or by name; each converted with ``str()``, as prometheus_client's
        ``labels()``. Raises ValueError when the metric has no label names, when this is
        already a labelled series, or when the names or the number of values do not match."""
        names = self._labelnames
        if labelkwargs:
            if labelvalues or labelkwargs.keys() != self._labelset:
                what = "Can't pass both *args and **kwargs" if labelvalues else "Incorrect label names"
                raise ValueError(f"{what} for {self._name}: {sorted(labelkwargs)}")
            labelvalues = tuple(map(labelkwargs.__getitem__, names))
        values = tuple(map(str, labelvalues))
        child = self._children.get(values)  # the request path: one lookup, no lock
        if child is not None:
            return child
        if self._labelvalues is not None:
            raise ValueError(f"No label names were set when constructing {self._name}, or labels given")
        if len(values) != len(names):
            raise ValueError(f"Incorrect label count for {self._name}: {len(values)}")
        with _state.lock:
            child = self._children.get(values)
            if child is None:
                child = copy.copy(self)
                child._labelvalues, child._children = values, {}
                child._index, child._generation = -1, -1
                self._children[values] = child
        return child

    def _resolve(self, state: _Attachment) -> None:
        """Find (or register) this series in the attached slot. Called with ``state.lock`` held."""
        if self._labelvalues is None:
            raise ValueError(f"{self._name} has label names {self._labelnames}: call labels() first")
        self._index, self._generation = -1, state.generation
        if state.area is None:
            return
        names, values = self._labelnames, self._labelvalues
        key: SeriesKey = (self._name, self._type, self._mode, names, values, self._buckets)
        self._index = state.area.register(key, self._documentation, self._count)
        if self._index < 0 and not state.warned:
            state.warned = True
            series = f"{self._name}{dict(zip(names, values, strict=True))}"
            what = "metrics slot full (%d values, %d bytes of keys): %s and later new series not recorded"
            log.warning(what, state.area.values, state.area.key_bytes, series)

    def _add(self, amount: float) -> None:
        state = _state
        with state.lock:
            if self._generation != state.generation:
                self._resolve(state)
            if self._index >= 0:
                state.values[self._index] += amount


class Counter(_Metric):
    """A count that only goes up, as prometheus_client's ``Counter``: exported as
    ``NAME_total`` (a ``_total`` ending given in ``name`` is stripped, then ``unit`` appended),
    summed over every worker, live or exited (the master folds exited workers in).

    ``name``, ``namespace``, ``subsystem`` and ``unit`` form the name as prometheus_client
    does; ``documentation`` is the HELP text; ``labelnames`` the label names, whose values are
    given with :meth:`labels`. Declare it anywhere (at import, in the master or a worker);
    update it in a worker. Raises ValueError for an invalid metric or label name.

    Declaring a name again in a process is allowed (a module imported again, as the master
    does on HUP without ``--preload``): the same declaration shares the series; another type,
    label names, gauge mode or buckets logs a warning, and
    :meth:`~prefork.metricsregion.MetricsRegion.collect`
    exports the declaration it reads first (the retired area's, so the changed metric waits
    for a restart or USR2 upgrade).
    """

    _type = "counter"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        namespace: str = "",
        subsystem: str = "",
        unit: str = "",
    ) -> None:
        super().__init__(name, documentation, labelnames, namespace, subsystem, unit)

    def inc(self, amount: float = 1) -> None:
        """Add ``amount`` (>= 0) to the counter. Runs in a worker, on the request path; a no-op
        before :func:`attach` or when the slot is full. Raises ValueError when ``amount`` is
        negative, or when the counter has label names and :meth:`labels` was not called."""
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self._add(amount)


class Gauge(_Metric):
    """A value that goes up and down, as prometheus_client's ``Gauge``, kept per live worker.

    ``multiprocess_mode`` says how the workers' values are combined: ``"sum"`` (the default),
    ``"max"``, ``"min"`` over the live workers, or ``"all"``: one series per live worker, with
    the label ``worker="K"`` (its number). prometheus_client's ``"livesum"``, ``"livemax"``,
    ``"livemin"``, ``"liveall"`` are accepted as the same. An exited worker's gauge is dropped,
    never folded. Other arguments and errors as :class:`Counter`; also raises ValueError for
    another mode, or a ``worker`` label name in mode ``"all"``.
    """

    _type = "gauge"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        namespace: str = "",
        subsystem: str = "",
        unit: str = "",
        multiprocess_mode: str = "sum",
    ) -> None:
        mode = _MODE_ALIASES.get(multiprocess_mode, multiprocess_mode)
        if mode not in GAUGE_MODES:
            raise ValueError(f"Invalid multiprocess mode: {multiprocess_mode!r} (one of {GAUGE_MODES})")
        reserved = "worker" if mode == "all" else ""
        super().__init__(
            name, documentation, labelnames, namespace, subsystem, unit, mode=mode, reserved=reserved
        )

    def inc(self, amount: float = 1) -> None:
        """Add ``amount`` (may be negative). Runs in a worker; errors and no-ops as
        :meth:`Counter.inc`, without the sign check."""
        self._add(amount)

    def dec(self, amount: float = 1) -> None:
        """Subtract ``amount``. Runs in a worker; as :meth:`inc`."""
        self._add(-amount)

    def set(self, value: float) -> None:
        """Set this worker's value to ``value``. Runs in a worker; as :meth:`inc`."""
        state = _state
        with state.lock:
            if self._generation != state.generation:
                self._resolve(state)
            if self._index >= 0:
                state.values[self._index] = float(value)

    def set_to_current_time(self) -> None:
        """Set this worker's value to ``time.time()`` (epoch seconds). Runs in a worker."""
        self.set(time.time())


class Histogram(_Metric):
    """Observations counted in buckets, as prometheus_client's ``Histogram``: exported as
    cumulative ``NAME_bucket{le="..."}`` (``+Inf`` included), ``NAME_count`` and ``NAME_sum``,
    summed over every worker, live or exited (the master folds exited workers in).

    ``buckets`` are the upper bounds, increasing, finite (a final ``math.inf`` is allowed and
    implied); each series takes ``len(buckets) + 2`` of the slot's values. Other arguments and
    errors as :class:`Counter`; also raises ValueError for buckets not increasing, not finite or
    empty, and for an ``le`` label name.
    """

    _type = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        namespace: str = "",
        subsystem: str = "",
        unit: str = "",
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        bounds = [float(bound) for bound in buckets]
        if bounds and bounds[-1] == math.inf:
            bounds.pop()
        if not bounds or not all(math.isfinite(bound) for bound in bounds):
            raise ValueError(f"Histogram {name} needs finite bucket bounds, not {list(buckets)}")
        if any(low >= high for low, high in itertools.pairwise(bounds)):
            raise ValueError(f"Buckets not in sorted order: {list(buckets)}")
        super().__init__(
            name, documentation, labelnames, namespace, subsystem, unit, buckets=tuple(bounds), reserved="le"
        )

    def observe(self, amount: float) -> None:
        """Count ``amount`` (e.g. seconds) in its bucket (the first bound >= ``amount``) and add it
        to the sum. Runs in a worker; errors and no-ops as :meth:`Counter.inc`."""
        bucket = bisect.bisect_left(self._buckets, amount)
        state = _state
        with state.lock:
            if self._generation != state.generation:
                self._resolve(state)
            if self._index >= 0:
                values = state.values
                values[self._index + bucket] += 1
                values[self._index + len(self._buckets) + 1] += amount

    @contextmanager
    def time(self) -> Iterator[None]:
        """Observe the seconds the ``with`` block (or decorated function) takes
        (``time.perf_counter()``), as prometheus_client's ``Histogram.time()``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.observe(max(time.perf_counter() - start, 0.0))
