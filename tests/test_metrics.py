"""Application metrics in shared memory (prefork.metrics, prefork.metricsregion): written by
worker processes (here: ``os.fork()`` children, or this process attached to a slot), folded by
the master, read by the exporter.

Every test that attaches this process detaches it again (fixture ``region``); every child is
waited for, within a deadline, and killed if late. Metric names are unique per test: a name is
declared once per process.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from prefork import metrics
from prefork.metrics import Counter, Family, Gauge, Histogram, MetricsRegion, Sample

# Python 3.12+ warns when forking a process with threads (pytest-xdist's, the reader thread).
pytestmark = [
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
    pytest.mark.timeout(30),
]


@pytest.fixture
def region() -> Iterator[MetricsRegion]:
    with MetricsRegion(4) as made:
        try:
            yield made
        finally:
            metrics.detach()


def fork(work: Callable[[], None]) -> int:
    """Run ``work`` in a child process that exits with 0, or 1 when it raised."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            work()
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    return pid


def wait(pid: int, timeout: float = 10.0) -> int:
    """Reap child ``pid`` and return its exit code; kill it and fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"child {pid} did not exit within {timeout} s")
        time.sleep(0.001)


def by_name(families: list[Family]) -> dict[str, Family]:
    return {family.name: family for family in families}


def value(families: list[Family], sample: str, **labels: str) -> float | None:
    for family in families:
        for found in family.samples:
            if found.name == sample and found.labels == labels:
                return found.value
    return None


def render(families: list[Family]) -> str:
    """The Prometheus text format, as the exporter writes it."""

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    lines = []
    for family in families:
        name = family.name + "_total" if family.type == "counter" else family.name  # as generate_latest
        help_ = family.help.replace("\\", "\\\\").replace("\n", "\\n")
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} {family.type}"]
        for sample in family.samples:
            labels = ",".join(f'{name}="{escape(text)}"' for name, text in sample.labels.items())
            lines.append(f"{sample.name}{{{labels}}} {sample.value!r}")
    return "\n".join(lines) + "\n"


def test_counters_are_exact_over_recycled_worker_processes(region: MetricsRegion) -> None:
    hits = Counter("recycled_hits_total", "Pages served", labelnames=("path",))  # as with --preload
    latency = Histogram("recycled_latency_seconds", "Latency", buckets=(0.01, 0.1))
    hits.labels("/").inc()  # in the master: goes nowhere
    # 2,500 increments per slot, by 1, 2, 3 or 5 successive worker processes.
    lives = {0: [2500], 1: [1250, 1250], 2: [1000, 1000, 500], 3: [500] * 5}

    def worker(slot: int, count: int) -> Callable[[], None]:
        def work() -> None:
            metrics.attach(region, slot)
            for number in range(count):
                hits.labels(path="/").inc()
                if number % 10 == 0:
                    latency.observe(0.05)

        return work

    seen: list[float] = []
    stop = threading.Event()

    def read() -> None:  # the exporter: a counter never goes down, even while the master folds
        while not stop.is_set():
            seen.append(value(region.collect(), "recycled_hits_total", path="/") or 0.0)

    reader = threading.Thread(target=read)
    reader.start()
    running = {slot: fork(worker(slot, counts.pop(0))) for slot, counts in lives.items()}
    try:
        while running:
            for slot, pid in list(running.items()):
                done, status = os.waitpid(pid, os.WNOHANG)
                if not done:
                    continue
                assert os.waitstatus_to_exitcode(status) == 0
                region.fold(slot)  # the master, reaping the worker
                del running[slot]
                if lives[slot]:
                    running[slot] = fork(worker(slot, lives[slot].pop(0)))
            time.sleep(0.001)
    finally:
        for pid in running.values():
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        stop.set()
        reader.join(10)
    families = by_name(region.collect())
    assert families["recycled_hits"].samples == [Sample("recycled_hits_total", {"path": "/"}, 10000.0)]
    assert value(region.collect(), "recycled_latency_seconds_count") == 1000.0
    assert value(region.collect(), "recycled_latency_seconds_bucket", le="0.1") == 1000.0
    assert value(region.collect(), "recycled_latency_seconds_sum") == pytest.approx(50.0)
    assert seen == sorted(seen) and seen[-1] <= 10000.0


def test_increments_from_threads_are_exact(region: MetricsRegion) -> None:
    counter = Counter("threads_hits", "Hits")
    gauge = Gauge("threads_inflight", "In flight")
    metrics.attach(region, 2)

    def work() -> None:
        for _ in range(1250):
            gauge.inc()
            counter.inc()
            gauge.dec()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    finally:
        sys.setswitchinterval(interval)
    families = region.collect({2: 0})
    assert value(families, "threads_hits_total") == 10000.0
    assert value(families, "threads_inflight") == 0.0


def test_a_histogram_counts_cumulative_buckets_sum_and_count(region: MetricsRegion) -> None:
    latency = Histogram("hist_seconds", "Latency", buckets=(0.01, 0.1, 1.0, math.inf))
    metrics.attach(region, 0)
    for seconds in (0.005, 0.01, 0.05, 0.5, 2.0):
        latency.observe(seconds)
    with latency.time():
        pass
    (family,) = region.collect()
    assert (family.name, family.type, family.help) == ("hist_seconds", "histogram", "Latency")
    buckets = [(s.labels["le"], s.value) for s in family.samples if s.name == "hist_seconds_bucket"]
    assert buckets == [("0.01", 3.0), ("0.1", 4.0), ("1.0", 5.0), ("+Inf", 6.0)]  # time(): ~0 s
    assert value(region.collect(), "hist_seconds_count") == 6.0
    assert value(region.collect(), "hist_seconds_sum") == pytest.approx(2.565, abs=0.01)


def test_labels_by_position_or_name_give_one_series(region: MetricsRegion) -> None:
    requests = Counter("labels_requests", "Requests", labelnames=("method", "code"))
    metrics.attach(region, 1)
    assert requests.labels("GET", 200) is requests.labels(code="200", method="GET")
    requests.labels("GET", 200).inc(2)
    requests.labels(method="POST", code=500).inc(0.5)
    assert by_name(region.collect())["labels_requests"].samples == [
        Sample("labels_requests_total", {"method": "GET", "code": "200"}, 2.0),
        Sample("labels_requests_total", {"method": "POST", "code": "500"}, 0.5),
    ]
    with pytest.raises(ValueError, match="call labels"):
        requests.inc()
    with pytest.raises(ValueError, match="count"):
        requests.labels("GET")
    with pytest.raises(ValueError, match="names"):
        requests.labels(method="GET", status="200")
    with pytest.raises(ValueError, match="both"):
        requests.labels("GET", code="200")
    with pytest.raises(ValueError, match="No label names"):
        requests.labels("GET", "200").labels("x", "y")
    with pytest.raises(ValueError, match="No label names"):
        Counter("labels_none", "None").labels("x")
    with pytest.raises(ValueError, match="non-negative"):
        requests.labels("GET", 200).inc(-1)


def test_gauges_combine_live_workers_by_mode_and_are_not_folded(region: MetricsRegion) -> None:
    total = Gauge("gauge_queue", "Queue")
    highest = Gauge("gauge_high", "Highest", multiprocess_mode="max")
    lowest = Gauge("gauge_low", "Lowest", multiprocess_mode="livemin")
    each = Gauge("gauge_each", "Each", labelnames=("pool",), multiprocess_mode="all")
    served = Counter("gauge_served", "Served")
    for slot, level in ((0, 3.0), (1, 5.0), (3, 4.0)):  # three workers, as this process in turn
        metrics.attach(region, slot)
        total.set(level)
        total.inc()
        total.dec(2)
        highest.set(level)
        lowest.set(level)
        each.labels("a").set(level)
        served.inc()
    live = {0: 7, 1: 9, 3: 2}
    families = region.collect(live)
    assert value(families, "gauge_queue") == 9.0
    assert (value(families, "gauge_high"), value(families, "gauge_low")) == (5.0, 3.0)
    workers = [(s.labels, s.value) for s in by_name(families)["gauge_each"].samples]
    assert sorted(workers, key=str) == [
        ({"pool": "a", "worker": "2"}, 4.0),
        ({"pool": "a", "worker": "7"}, 3.0),
        ({"pool": "a", "worker": "9"}, 5.0),
    ]
    assert value(region.collect([0, 1]), "gauge_each", pool="a", worker="1") == 5.0  # numbered by slot
    assert value(region.collect({0: 7}), "gauge_queue") == 2.0  # not listed: not live
    metrics.detach()
    region.fold(1)  # worker 9 exited: its gauges are gone, its count stays
    families = region.collect({0: 7, 3: 2})
    assert (value(families, "gauge_queue"), value(families, "gauge_high")) == (5.0, 4.0)
    assert value(families, "gauge_served_total") == 3.0
    region.reset(0)  # dropped without folding
    assert value(region.collect({3: 2}), "gauge_served_total") == 2.0
    now = time.time()
    metrics.attach(region, 0)
    total.set_to_current_time()
    assert value(region.collect({0: 0}), "gauge_queue") == pytest.approx(now, abs=60)


def test_a_full_slot_drops_new_series_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    first = [Counter(f"full_{letter}", "Fits") for letter in "abc"]
    late = Counter("full_late", "Too late")
    wide = Histogram("full_wide", "Too wide", buckets=(1.0,))
    named = Counter("full_named", "Keys", labelnames=("name",))
    with MetricsRegion(2, slot_values=3) as small, caplog.at_level(logging.WARNING, logger="prefork"):
        try:
            metrics.attach(small, 0)
            for counter in first:
                counter.inc()
            late.inc()
            wide.observe(0.5)
            late.inc()
            assert [f.name for f in small.collect()] == ["full_a", "full_b", "full_c"]
            warnings = [r for r in caplog.records if "metrics slot full" in r.getMessage()]
            assert len(warnings) == 1 and warnings[0].name == "prefork"
            assert "full_late" in warnings[0].getMessage()
        finally:
            metrics.detach()
    with MetricsRegion(1, slot_key_bytes=400) as narrow:  # full of keys before values
        try:
            metrics.attach(narrow, 0)
            for number in range(20):
                named.labels(f"series-{number}").inc()
            assert 0 < len(narrow.collect()[0].samples) < 20
        finally:
            metrics.detach()


def test_the_retired_area_full_loses_the_fold_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    counters = [Counter(f"retired_{number}", "Retired") for number in range(4)]
    with MetricsRegion(1, slot_values=2, retired_factor=1) as small, caplog.at_level(logging.WARNING):
        for pair in (counters[:2], counters[2:]):
            metrics.attach(small, 0)
            for counter in pair:
                counter.inc()
            metrics.detach()
            small.fold(0)
        assert [f.name for f in small.collect()] == ["retired_0", "retired_1"]
        assert "metrics retired area full" in caplog.text


def test_names_and_declarations_are_validated(caplog: pytest.LogCaptureFixture) -> None:
    for bad in ("1st", "has-dash", "", "sp ace"):
        with pytest.raises(ValueError, match="Invalid metric name"):
            Counter(bad, "Bad")
    for labels in (("a-b",), ("__reserved",), ("1a",)):
        with pytest.raises(ValueError, match="Invalid label"):
            Gauge("valid_gauge_labels", "Bad", labelnames=labels)
    with pytest.raises(ValueError, match="Duplicate"):
        Counter("valid_dup", "Bad", labelnames=("a", "a"))
    with pytest.raises(ValueError, match="sequence"):
        Counter("valid_str", "Bad", labelnames="path")
    with pytest.raises(ValueError, match="Reserved"):
        Histogram("valid_le", "Bad", labelnames=("le",))
    with pytest.raises(ValueError, match="Reserved"):
        Gauge("valid_worker", "Bad", labelnames=("worker",), multiprocess_mode="all")
    with pytest.raises(ValueError, match="mode"):
        Gauge("valid_mode", "Bad", multiprocess_mode="mostrecent")
    with pytest.raises(ValueError, match="sorted"):
        Histogram("valid_unsorted", "Bad", buckets=(1.0, 0.5))
    with pytest.raises(ValueError, match="finite"):
        Histogram("valid_nan", "Bad", buckets=(math.nan,))
    with pytest.raises(ValueError, match="finite"):
        Histogram("valid_empty", "Bad", buckets=(math.inf,))
    with caplog.at_level(logging.WARNING, logger="prefork"):
        Counter("valid_twice_total", "Twice")
        Counter("valid_twice", "Twice, same declaration")  # shares the series
        assert "declared again" not in caplog.text
        Gauge("valid_twice", "Twice, as another type")  # as the master re-importing changed code
        assert "Metric valid_twice declared again as ('gauge'" in caplog.text
    assert Counter("b", "Named", namespace="valid", subsystem="ns", unit="bytes")._name == "valid_ns_b_bytes"
    with pytest.raises(ValueError, match="must be >= 1"):
        MetricsRegion(0)
    with MetricsRegion(2) as small, pytest.raises(ValueError, match="out of range"):
        metrics.attach(small, 2)


def test_writes_go_nowhere_before_attach_after_detach_and_in_a_forked_child(region: MetricsRegion) -> None:
    counter = Counter("nowhere_hits", "Hits")
    counter.inc(5)  # not attached: accepted, not recorded
    assert region.collect() == []
    metrics.attach(region, 0)
    counter.inc()
    assert wait(fork(counter.inc)) == 0  # a process forked by a handler: detached at fork
    metrics.detach()
    counter.inc()
    assert value(region.collect(), "nowhere_hits_total") == 1.0
    metrics.attach(region, 0)
    Counter("nowhere_hits", "Declared again, as on HUP").inc()  # the same series
    assert value(region.collect(), "nowhere_hits_total") == 2.0


def test_metrics_declared_before_or_after_the_fork_reach_the_slot(region: MetricsRegion) -> None:
    preloaded = Counter("fork_preloaded", "Declared in the master", labelnames=("kind",))
    preloaded.labels("a").inc()  # resolved in the master (nowhere): resolved again in the worker

    def worker() -> None:
        metrics.attach(region, 3)
        preloaded.labels("a").inc(2)
        Gauge("fork_declared_in_worker", "Declared after the fork").set(7)

    assert wait(fork(worker)) == 0
    families = region.collect({3: 0})
    assert value(families, "fork_preloaded_total", kind="a") == 2.0
    assert by_name(families)["fork_declared_in_worker"] == Family(
        "fork_declared_in_worker",
        "gauge",
        "Declared after the fork",
        [Sample("fork_declared_in_worker", {}, 7.0)],
    )
    metrics.attach(region, 3)  # a slot not folded is taken over with its series
    preloaded.labels("a").inc()
    assert value(region.collect(), "fork_preloaded_total", kind="a") == 3.0


def test_a_conflicting_declaration_in_another_worker_is_skipped(region: MetricsRegion) -> None:
    def worker() -> None:
        metrics.attach(region, 1)
        Gauge("conflict_thing", "A gauge here").set(1)  # a counter in the worker of slot 0

    assert wait(fork(worker)) == 0
    metrics.attach(region, 0)
    Counter("conflict_thing", "A counter").inc(4)
    (family,) = region.collect()  # the first record seen: slot 0's
    assert family == Family(
        "conflict_thing", "counter", "A counter", [Sample("conflict_thing_total", {}, 4.0)]
    )


def test_collected_families_parse_as_prometheus_text(region: MetricsRegion) -> None:
    hits = Counter("text_hits", 'Pages "served"', labelnames=("path",))
    sizes = Histogram("text_size_bytes", "Sizes", buckets=(0.25, 1, 10_000_000))
    queue = Gauge("text_queue", "Queue", multiprocess_mode="all")
    metrics.attach(region, 0)
    hits.labels('/a"b\\c\nd').inc(3)
    sizes.observe(0.5)
    queue.set(2)
    parsed = {f.name: f for f in text_string_to_metric_families(render(region.collect({0: 5})))}
    assert {name: f.type for name, f in parsed.items()} == {
        "text_hits": "counter",  # the parser names the family without _total
        "text_size_bytes": "histogram",
        "text_queue": "gauge",
    }
    assert [(s.name, s.labels, s.value) for s in parsed["text_hits"].samples] == [
        ("text_hits_total", {"path": '/a"b\\c\nd'}, 3.0)
    ]
    assert [s.labels.get("le") for s in parsed["text_size_bytes"].samples] == [
        "0.25",
        "1.0",
        "1e+07",
        "+Inf",
        None,
        None,
    ]
    assert [(s.labels, s.value) for s in parsed["text_queue"].samples] == [({"worker": "5"}, 2.0)]
