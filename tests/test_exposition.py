"""prefork.exposition: a pool snapshot and application families in the Prometheus text
format, checked by parsing the output with prometheus_client's parser."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample as ParsedSample

from prefork.exposition import CONTENT_TYPE, WORKER_STATES, render
from prefork.figures import RESTART_CAUSES
from tests.exporter_child import Family, Sample, make_families, make_snapshot


def parse(body: bytes) -> dict[str, tuple[str, list[ParsedSample]]]:
    """Family name -> (type, samples), as Prometheus reads the text."""
    return {f.name: (f.type, list(f.samples)) for f in text_string_to_metric_families(body.decode())}


def value(families: dict[str, tuple[str, list[ParsedSample]]], name: str, **labels: str) -> float:
    for _, samples in families.values():
        for sample in samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise KeyError(f"{name}{labels}")


def test_pool_metrics() -> None:
    body, content_type = render(make_snapshot(), [])
    assert content_type == CONTENT_TYPE and content_type.startswith("text/plain; version=0.0.4")
    parsed = parse(body)
    assert value(parsed, "prefork_requests_total") == 1000
    assert value(parsed, "prefork_request_errors_total") == 7
    assert value(parsed, "prefork_denied_connections_total") == 2
    assert parsed["prefork_requests"][0] == "counter"
    assert value(parsed, "prefork_workers_wanted") == 4
    assert value(parsed, "prefork_generation") == 2
    assert value(parsed, "prefork_master_start_time_seconds") == 1764150000.0
    assert value(parsed, "prefork_worker_boot_failures_total") == 1
    assert value(parsed, "prefork_listen_queue_length") == 3
    assert value(parsed, "prefork_listen_queue_limit") == 128
    assert value(parsed, "prefork_master_resident_memory_bytes") == 30 * 1024 * 1024
    assert value(parsed, "prefork_master_cpu_seconds_total") == 1.5


def test_workers_by_state_and_restarts_by_cause_always_all_present() -> None:
    snapshot = make_snapshot()
    snapshot["restarts"] = {"crash": 3}  # the others missing: exported as 0
    parsed = parse(render(snapshot)[0])
    states = {s.labels["state"]: s.value for s in parsed["prefork_workers"][1]}
    assert states == {"idle": 2, "busy": 1, "starting": 1, "stopping": 0}
    assert set(states) == set(WORKER_STATES)
    causes = {s.labels["cause"]: s.value for s in parsed["prefork_worker_restarts"][1]}
    assert causes == {cause: (3 if cause == "crash" else 0) for cause in RESTART_CAUSES}


def test_duration_histogram_is_cumulative() -> None:
    parsed = parse(render(make_snapshot())[0])
    kind, samples = parsed["prefork_request_duration_seconds"]
    assert kind == "histogram"
    buckets = {s.labels["le"]: s.value for s in samples if s.name.endswith("_bucket")}
    assert buckets["0.005"] == 500
    assert buckets["0.01"] == 700
    assert buckets["10.0"] == 1000
    assert buckets["+Inf"] == 1000
    assert list(buckets.values()) == sorted(buckets.values())
    assert value(parsed, "prefork_request_duration_seconds_count") == 1000
    assert value(parsed, "prefork_request_duration_seconds_sum") == 42.5


def test_duration_counts_of_the_wrong_length_raise() -> None:
    snapshot = make_snapshot()
    snapshot["totals"]["duration_counts"] = [1, 2]
    with pytest.raises(ValueError, match="2 counts for 11 bucket bounds"):
        render(snapshot)


def test_per_worker_series() -> None:
    parsed = parse(render(make_snapshot())[0])
    assert value(parsed, "prefork_worker_requests_total", worker="2") == 30
    assert value(parsed, "prefork_worker_busy", worker="1") == 1
    assert value(parsed, "prefork_worker_busy", worker="0") == 0
    assert value(parsed, "prefork_worker_request_age_seconds", worker="1") == 1.5
    assert value(parsed, "prefork_worker_request_age_seconds", worker="0") == 0
    assert value(parsed, "prefork_worker_resident_memory_bytes", worker="0") == 20 * 1024 * 1024
    assert value(parsed, "prefork_worker_cpu_seconds_total", worker="1") == 0.5
    rss_workers = {s.labels["worker"] for s in parsed["prefork_worker_resident_memory_bytes"][1]}
    assert rss_workers == {"0", "1", "2"}  # worker 3 has no psutil fields


def test_memory_to_size_by_and_a_dynamic_pools_bounds() -> None:
    snapshot: dict[str, Any] = make_snapshot()
    snapshot.update(min_workers=1, max_workers=8, master_uss=2 << 20, master_pss=5 << 20)
    snapshot["workers"][0].update(uss=9 << 20, pss=12 << 20)
    parsed = parse(render(snapshot)[0])
    assert value(parsed, "prefork_workers_min") == 1 and value(parsed, "prefork_workers_max") == 8
    assert value(parsed, "prefork_worker_unique_memory_bytes", worker="0") == 9 << 20
    assert value(parsed, "prefork_worker_proportional_memory_bytes", worker="0") == 12 << 20
    assert value(parsed, "prefork_master_unique_memory_bytes") == 2 << 20
    assert value(parsed, "prefork_master_proportional_memory_bytes") == 5 << 20
    snapshot.update(min_workers=None, max_workers=None)  # a fixed pool
    assert "prefork_workers_max" not in parse(render(snapshot)[0])


def test_per_worker_series_name_the_newest_generation_of_a_number() -> None:
    """During a reload an old worker and its replacement share a number: one series each."""
    snapshot = make_snapshot()
    old = dict(snapshot["workers"][0], generation=snapshot["workers"][0]["generation"] - 1, requests=999)
    snapshot["workers"] = [old, *snapshot["workers"]]
    parsed = parse(render(snapshot)[0])
    samples = parsed["prefork_worker_requests"][1]  # the family's name, without _total
    zeros = [s for s in samples if s.name == "prefork_worker_requests_total" and s.labels["worker"] == "0"]
    assert len(zeros) == 1 and zeros[0].value == snapshot["workers"][1]["requests"]


def test_optional_metrics_omitted() -> None:
    snapshot: dict[str, Any] = make_snapshot()
    snapshot["listen_queue"] = {"length": None, "limit": None}
    del snapshot["master_rss"], snapshot["master_cpu_seconds"]
    for worker in snapshot["workers"]:
        worker.pop("rss", None)
        worker.pop("cpu_seconds", None)
    parsed = parse(render(snapshot)[0])
    for name in (
        "prefork_listen_queue_length",
        "prefork_listen_queue_limit",
        "prefork_master_resident_memory_bytes",
        "prefork_master_cpu_seconds",
        "prefork_worker_resident_memory_bytes",
        "prefork_worker_cpu_seconds",
    ):
        assert name not in parsed
    assert "prefork_listen_queue_limit" not in render(snapshot)[0].decode()


def test_app_families_appended_as_they_are() -> None:
    body = render(make_snapshot(), make_families())[0]
    text = body.decode()
    assert "app_orders_total_total" not in text
    assert '# TYPE app_orders_total counter\napp_orders_total{shop="a"} 5.0\n' in text
    parsed = parse(body)
    assert parsed["app_orders"][0] == "counter"
    assert value(parsed, "app_orders_total", shop="a") == 5
    assert value(parsed, "app_queue_depth") == 12
    assert parsed["app_latency_seconds"][0] == "histogram"
    assert value(parsed, "app_latency_seconds_bucket", le="+Inf") == 4
    assert value(parsed, "app_latency_seconds_sum") == 0.9
    assert value(parsed, "app_latency_seconds_count") == 4
    assert list(parsed)[-3:] == ["app_orders", "app_queue_depth", "app_latency_seconds"]


def test_counter_family_named_without_total() -> None:
    family = Family("app_hits", "counter", "Hits.", [Sample("app_hits_total", {}, 2.0)])
    parsed = parse(render(make_snapshot(), [family])[0])
    assert value(parsed, "app_hits_total") == 2


def test_clashing_and_malformed_families_left_out() -> None:
    families = [
        Family("prefork_requests_total", "counter", "Clash.", [Sample("prefork_requests_total", {}, 99.0)]),
        Family("prefork_workers", "gauge", "Clash.", [Sample("prefork_workers", {}, 99.0)]),
        Family("app_bad", "summary-ish", "Unknown type.", [Sample("app_bad", {}, 1.0)]),
        Family("app_wrong", "gauge", "Sample of another family.", [Sample("other", {}, 1.0)]),
        Family("app_ok", "gauge", "Fine.", [Sample("app_ok", {}, 1.0)]),
        Family("app_ok", "gauge", "Twice.", [Sample("app_ok", {}, 2.0)]),
    ]
    body = render(make_snapshot(), families)[0]
    parsed = parse(body)
    assert value(parsed, "prefork_requests_total") == 1000
    assert 99.0 not in [s.value for _, samples in parsed.values() for s in samples]
    assert "app_bad" not in parsed and "app_wrong" not in parsed and "other" not in parsed
    assert value(parsed, "app_ok") == 1
    assert body.decode().count("# TYPE app_ok ") == 1


def test_label_values_are_escaped() -> None:
    family = Family(
        "app_paths", "gauge", 'Paths "quoted"\n.', [Sample("app_paths", {"path": 'a"b\\c\nd'}, 1.0)]
    )
    parsed = parse(render(make_snapshot(), [family])[0])
    assert value(parsed, "app_paths", path='a"b\\c\nd') == 1


def test_families_of_prefork_metrics() -> None:
    """The families prefork.metrics collects (prefork.metricsregion's types) render as such."""
    from prefork.metricsregion import Family as RegionFamily
    from prefork.metricsregion import Sample as RegionSample

    families = [
        RegionFamily("app_hits", "counter", "Hits.", [RegionSample("app_hits_total", {"path": "/"}, 3.0)]),
        RegionFamily(
            "app_seconds",
            "histogram",
            "Time.",
            [
                RegionSample("app_seconds_bucket", {"le": "1.0"}, 1.0),
                RegionSample("app_seconds_bucket", {"le": "+Inf"}, 1.0),
                RegionSample("app_seconds_count", {}, 1.0),
                RegionSample("app_seconds_sum", {}, 0.5),
            ],
        ),
    ]
    parsed = parse(render(make_snapshot(), families)[0])
    assert value(parsed, "app_hits_total", path="/") == 3
    assert value(parsed, "app_seconds_bucket", le="1.0") == 1
