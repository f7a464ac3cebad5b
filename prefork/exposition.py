"""The pool's metrics in the Prometheus text format, for the exporter's ``/metrics``.

:func:`render` turns a pool snapshot (``prefork.stats.snapshot``: a JSON-able dict, see
``docs``) and the application's metric families (``prefork.metrics.collect()``) into the body
of a scrape. It builds the metrics with ``prometheus_client`` (a :class:`PoolCollector` in a
private ``CollectorRegistry``, never the global one) and runs in the exporter process, once per
scrape; it touches neither the scoreboard nor any socket.

The pool's metrics, all prefixed ``prefork_`` (units in the names, as Prometheus' naming)::

    requests_total, request_errors_total, denied_connections_total      counters, all workers ever
    tls_handshake_failures_total, proxy_refused_connections_total        counters, all workers ever
    request_duration_seconds                                             histogram, all workers ever
    workers{state}             gauge: idle, busy, starting, stopping (always all four)
    workers_wanted, generation, master_start_time_seconds                gauges
    workers_min, workers_max           gauges, a dynamic pool's bounds (absent for a fixed pool)
    worker_restarts_total{cause}     counter: crash, request_timeout, memory, max_requests,
                                     reload, resize (always all six)
    worker_boot_failures_total                                           counter
    listen_queue_length, listen_queue_limit     gauges, absent when the kernel does not say
    worker_requests_total{worker}, worker_busy{worker}, worker_request_age_seconds{worker},
    worker_resident_memory_bytes{worker}, worker_unique_memory_bytes{worker} (USS),
    worker_proportional_memory_bytes{worker} (PSS), worker_cpu_seconds_total{worker} (these
    four when the snapshot has them), and the same for the master: master_*_memory_bytes,
    master_cpu_seconds_total

``worker`` is the worker's number (stable across its restarts), not its pid, so a series
survives recycling. The application's families follow as they are, after the pool's; a family
whose name is taken by an earlier one, or that ``prometheus_client`` refuses, is left out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import exposition as _exposition
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from prefork.figures import RESTART_CAUSES  # each cause of prefork_worker_restarts_total, always exported

log = logging.getLogger(__name__)

#: The content type of :func:`render`'s body: the text format 0.0.4 that ``generate_latest``
#: writes (``CONTENT_TYPE_LATEST`` names a newer version since prometheus_client 0.22).
CONTENT_TYPE: str = getattr(_exposition, "CONTENT_TYPE_PLAIN_0_0_4", _exposition.CONTENT_TYPE_LATEST)

#: The worker states of ``prefork_workers{state}``, each always exported (0 when none).
WORKER_STATES = ("idle", "busy", "starting", "stopping")

_APP_TYPES = ("counter", "gauge", "histogram")


#: The memory figures of :func:`prefork.stats.add_process_info`: snapshot key -> (the metric
#: name's word, what it is).
MEMORY_KINDS = {
    "rss": ("resident", "resident memory (RSS)"),
    "uss": ("unique", "private memory (USS: freed when it exits)"),
    "pss": ("proportional", "proportional share of memory (PSS: shared pages divided among their sharers)"),
}


class SampleLike(Protocol):
    """One sample of an application family (``prefork.metrics.Sample``): its full name as in
    the text format (``foo_total``, ``foo_bucket``...), its labels and its value."""

    @property
    def name(self) -> str: ...
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def value(self) -> float: ...


class FamilyLike(Protocol):
    """An application metric family (``prefork.metrics.Family``): ``type`` is ``"counter"``,
    ``"gauge"`` or ``"histogram"``."""

    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def help(self) -> str: ...
    @property
    def samples(self) -> Sequence[SampleLike]: ...


def render(snapshot: Mapping[str, Any], families: Iterable[FamilyLike] = ()) -> tuple[bytes, str]:
    """The body of a ``/metrics`` answer (UTF-8 text) and its content type, for ``snapshot``
    (a pool snapshot) and the application's ``families``. Runs in the exporter process, in the
    thread answering the scrape.

    Raises KeyError, TypeError or ValueError when ``snapshot`` lacks a required key or has a
    value of the wrong type (a malformed application family is only left out).
    """
    registry = CollectorRegistry()
    registry.register(PoolCollector(snapshot, families))
    return generate_latest(registry), CONTENT_TYPE


class PoolCollector:
    """A ``prometheus_client`` collector of one snapshot and one list of application families,
    built for one scrape (:func:`render`). Runs in the exporter process.

    :meth:`collect` is for the registry; :meth:`pool_metrics`, :meth:`worker_metrics` and
    :meth:`app_metrics` may be extended to add metrics.
    """

    def __init__(self, snapshot: Mapping[str, Any], families: Iterable[FamilyLike] = ()) -> None:
        self.snapshot = snapshot
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        """The pool's metrics, the workers', then the application's. Raises as :func:`render`."""
        seen: set[str] = set()
        for metric in (*self.pool_metrics(), *self.worker_metrics()):
            seen.update(_exposed_names(metric))
            yield metric
        for metric in self.app_metrics(seen):
            yield metric

    def pool_metrics(self) -> Iterator[Metric]:
        """Metrics of the pool as a whole (totals, worker counts, restarts, the master)."""
        snap = self.snapshot
        totals = snap["totals"]
        yield _counter(
            "prefork_requests_total", "Requests processed by the pool's workers.", totals["requests"]
        )
        yield _counter(
            "prefork_request_errors_total", "Requests whose handler raised an exception.", totals["errors"]
        )
        yield _counter(
            "prefork_denied_connections_total",
            "Connections refused by verify_request().",
            totals["denied"],
        )
        yield _counter(
            "prefork_tls_handshake_failures_total",
            "TLS handshakes that failed.",
            totals.get("tls_failures", 0),
        )
        yield _counter(
            "prefork_proxy_refused_connections_total",
            "Connections closed for their PROXY header (missing, malformed, or from a peer not allowed).",
            totals.get("proxy_refused", 0),
        )
        yield _histogram(
            "prefork_request_duration_seconds",
            "Time the workers spent processing a request, in seconds.",
            snap["duration_buckets"],
            totals["duration_counts"],
            totals["busy_seconds"],
        )
        states = GaugeMetricFamily("prefork_workers", "Live workers, by state.", labels=["state"])
        counts = dict.fromkeys(WORKER_STATES, 0)
        for worker in snap["workers"]:
            if worker["state"] in counts:
                counts[worker["state"]] += 1
        for state, count in counts.items():
            states.add_metric([state], count)
        yield states
        yield _gauge(
            "prefork_workers_wanted", "Workers the pool is configured to run.", snap["workers_wanted"]
        )
        if snap.get("max_workers"):
            yield _gauge("prefork_workers_min", "A dynamic pool's min_workers.", snap["min_workers"])
            yield _gauge("prefork_workers_max", "A dynamic pool's max_workers.", snap["max_workers"])
        restarts = CounterMetricFamily(
            "prefork_worker_restarts_total", "Workers replaced, by cause.", labels=["cause"]
        )
        for cause in RESTART_CAUSES:
            restarts.add_metric([cause], snap["restarts"].get(cause, 0))
        yield restarts
        yield _counter(
            "prefork_worker_boot_failures_total",
            "Workers that exited before they were ready.",
            snap["boot_failures"],
        )
        queue = snap.get("listen_queue") or {}
        if queue.get("length") is not None:
            yield _gauge(
                "prefork_listen_queue_length",
                "Connections waiting in the listening socket's accept queue.",
                queue["length"],
            )
        if queue.get("limit") is not None:
            yield _gauge(
                "prefork_listen_queue_limit", "The listening socket's accept queue limit.", queue["limit"]
            )
        yield _gauge(
            "prefork_generation", "Reloads (HUP) of the pool since the master started.", snap["generation"]
        )
        yield _gauge(
            "prefork_master_start_time_seconds",
            "Start time of the master since the Unix epoch, in seconds.",
            snap["started_at"],
        )
        for key, (name, what) in MEMORY_KINDS.items():
            if snap.get(f"master_{key}") is not None:
                yield _gauge(
                    f"prefork_master_{name}_memory_bytes",
                    f"The master's {what}, in bytes.",
                    snap[f"master_{key}"],
                )
        if snap.get("master_cpu_seconds") is not None:
            yield _counter(
                "prefork_master_cpu_seconds_total",
                "User and system CPU time of the master, in seconds.",
                snap["master_cpu_seconds"],
            )

    def worker_metrics(self) -> Iterator[Metric]:
        """One series per live worker, labelled ``worker`` (its number)."""
        workers = self.snapshot["workers"]
        requests = CounterMetricFamily(
            "prefork_worker_requests_total", "Requests processed by this worker process.", labels=["worker"]
        )
        busy = GaugeMetricFamily(
            "prefork_worker_busy", "1 if the worker is processing a request.", labels=["worker"]
        )
        age = GaugeMetricFamily(
            "prefork_worker_request_age_seconds",
            "Seconds the worker has been processing its current request (0 if none).",
            labels=["worker"],
        )
        memory = {
            key: GaugeMetricFamily(
                f"prefork_worker_{name}_memory_bytes", f"The worker's {what}, in bytes.", labels=["worker"]
            )
            for key, (name, what) in MEMORY_KINDS.items()
        }
        cpu = CounterMetricFamily(
            "prefork_worker_cpu_seconds_total",
            "User and system CPU time of the worker process, in seconds.",
            labels=["worker"],
        )
        newest: dict[int, Mapping[str, Any]] = {}  # during a reload two workers share a number
        for worker in workers:
            number = int(worker["number"])
            if number not in newest or worker["generation"] >= newest[number]["generation"]:
                newest[number] = worker
        for number, worker in sorted(newest.items()):
            label = [str(number)]
            requests.add_metric(label, worker["requests"])
            busy.add_metric(label, 1 if worker["state"] == "busy" else 0)
            age.add_metric(label, worker.get("request_age") or 0.0)
            for key, family in memory.items():
                if worker.get(key) is not None:
                    family.add_metric(label, worker[key])
            if worker.get("cpu_seconds") is not None:
                cpu.add_metric(label, worker["cpu_seconds"])
        yield from (requests, busy, age)
        yield from (family for family in (*memory.values(), cpu) if family.samples)

    def app_metrics(self, taken: set[str]) -> Iterator[Metric]:
        """The application's families, as they are; one whose name is in ``taken`` (or of an
        earlier family) or that ``prometheus_client`` refuses is left out (logged at debug)."""
        for family in self.families:
            try:
                metric = _app_metric(family)
            except (TypeError, ValueError) as exc:
                log.debug("Metric family %r left out: %s", getattr(family, "name", family), exc)
                continue
            names = _exposed_names(metric)
            if names & taken:
                log.debug("Metric family %r left out: its name is taken", family.name)
                continue
            taken.update(names)
            yield metric


def _exposed_names(metric: Metric) -> set[str]:
    """The names under which ``metric`` appears in the text format (HELP, TYPE, samples)."""
    names = {metric.name, *(sample.name for sample in metric.samples)}
    if metric.type == "counter":
        names.add(metric.name + "_total")
    return names


def _app_metric(family: FamilyLike) -> Metric:
    """A ``Metric`` of an application family, its samples copied as they are. The name of a
    counter loses its ``_total`` (``generate_latest`` adds it back to HELP and TYPE). Raises
    ValueError for an unknown type or an invalid name, TypeError for a non-numeric value."""
    if family.type not in _APP_TYPES:
        raise ValueError(f"unknown type {family.type!r}")
    name = family.name
    if family.type == "counter" and name.endswith("_total"):
        name = name[: -len("_total")]
    metric = Metric(name, family.help, family.type)
    for sample in family.samples:
        if not sample.name.startswith(name):
            raise ValueError(f"sample {sample.name!r} is not of family {name!r}")
        metric.add_sample(sample.name, dict(sample.labels), float(sample.value))
    return metric


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    """A counter without labels (``name`` ends with ``_total``)."""
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    """A gauge without labels."""
    return GaugeMetricFamily(name, documentation, value=value)


def _histogram(
    name: str, documentation: str, bounds: Sequence[float], counts: Sequence[int], total: float
) -> HistogramMetricFamily:
    """A histogram from per-bucket counts that are NOT cumulative (``counts[i]``: observations
    in ``(bounds[i-1], bounds[i]]``, the last one above ``bounds[-1]``), and the ``total`` of
    the observations (``_sum``). Raises ValueError when ``counts`` is not one longer than
    ``bounds``."""
    if len(counts) != len(bounds) + 1:
        raise ValueError(f"{name}: {len(counts)} counts for {len(bounds)} bucket bounds")
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        cumulative += count
        buckets.append((_le(bound), cumulative))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=total)


def _le(bound: float) -> str:
    """A bucket's ``le`` label as Prometheus clients write it: ``0.005``, ``1.0``, ``+Inf``."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))
