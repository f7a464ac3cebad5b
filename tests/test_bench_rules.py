"""prefork bench's pure rules: parsers, SLOs, step schedules, rounds and the noise rule, the
CPU cap, the memory model, merging histograms; without a server process."""

from __future__ import annotations

import math
import os
import resource
import socket
import socketserver
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from prefork import bench
from prefork.bench import (
    client_process,
    lifecycle,
    load,
    loadgen,
    memory,
    modes,
    options,
    parse,
    protocols,
    report,
    rounds,
    runner,
    schedule,
    slo,
    steps,
)
from prefork.bench.errors import BenchError

pytestmark = pytest.mark.timeout(45)


# -- pieces ----------------------------------------------------------------------------------


def test_parsers() -> None:
    assert parse.parse_duration("500ms") == 0.5
    assert parse.parse_duration("2m") == 120
    assert parse.parse_duration("3") == 3
    assert parse.parse_pool_sizes("4,1,2,2") == [1, 2, 4]
    assert parse.parse_concurrency("2x") == (2, True)
    assert parse.unescape(r"GET\r\n\x00é") == b"GET\r\n\x00" + "é".encode()


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 2**20),
        ("512M", 512 * 2**20),
        ("2G", 2**31),
        ("1.5GiB", 3 * 2**29),
        ("64kb", 65536),
        ("2Gi", 2**31),
    ],
)
def test_sizes(text: str, size: int) -> None:
    assert parse.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "2X", "G", "0", "0.1", "-1G", "2i", "1.5.1G"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="bad size"):
        parse.parse_size(text)


def test_slo_objectives_and_failures() -> None:
    assert slo.parse_slo("p99=50ms") == [slo.Objective(99.0, 0.05)]
    assert [str(o) for o in slo.parse_slo("p50=10ms, p99.9=1s")] == ["p50 <= 10 ms", "p99.9 <= 1000 ms"]
    for bad in ("99=50ms", "p99", "p0=1s", "p101=1s", "p99=0", "p99=soon"):
        with pytest.raises(ValueError):
            slo.parse_slo(bad)
    histogram = load.new_histogram()
    for micros in range(1000, 101_000, 1000):  # 100 replies, 1 to 100 ms
        histogram.record_value(micros)
    assert slo.latency_with_failures(histogram, 100, 0, 99) == pytest.approx(99, rel=0.01)
    # Failures count as slower than any reply: with 1 failure in 101, p99 is the 100th reply.
    assert slo.latency_with_failures(histogram, 100, 1, 99) == pytest.approx(100, rel=0.01)
    assert slo.latency_with_failures(histogram, 100, 2, 99) is None  # more than 1% failed
    assert slo.latency_with_failures(histogram, 0, 0, 99) is None
    (verdict,) = slo.judge(histogram, 100, 0, slo.parse_slo("p99=50ms"))
    assert verdict == {
        "objective": "p99",
        "limit_ms": 50.0,
        "value_ms": pytest.approx(99, rel=0.01),
        "met": False,
    }
    sizes = [
        {"workers": 1, "slo_met": False},
        {"workers": 4, "slo_met": True},
        {"workers": 8, "slo_met": True},
    ]
    assert slo.recommend_slo(sizes, slo.parse_slo("p99=50ms"), 100, None)["workers"] == 4
    assert slo.recommend_slo(sizes, slo.parse_slo("p99=50ms"), 100, 2) == {
        "workers": None,
        "met": [4, 8],
        "slo": "p99 <= 50 ms at 100 req/s",
        "reason": "4, 8 workers met p99 <= 50 ms at 100 req/s, but only 2 fit in memory",
    }


def test_step_schedules() -> None:
    assert steps.parse_steps("10/s for 10s, 250/s for 20s,10/s:1m") == [(10, 10), (250, 20), (10, 60)]
    for bad in ("10 for 10s", "10/s", "10/s for 0s", "0/s for 1s", "1e9/s for 1s"):
        with pytest.raises(ValueError):
            steps.parse_steps(bad)
    schedule = [steps.Step(10, 2), steps.Step(100, 1)]
    assert steps.rate_at(schedule, 0, 1) == 10 and steps.rate_at(schedule, 1.5, 2.5) == 55


def test_step_series_and_summaries() -> None:
    result = load.LoadResult()
    for index, (ok, micros) in enumerate([(10, 20_000), (10, 20_000), (100, 300_000), (100, 25_000)]):
        window = result.window(index)
        window.served = ok
        for _ in range(ok):
            window.record(micros, 5_000_000)
    result.window(3).failed = 2
    result = load.LoadResult.from_json(result.to_json())  # windows survive the trip
    schedule = [steps.Step(10, 2), steps.Step(100, 2)]
    samples = [{"t": t / 4, "workers": 1 if t < 10 else 3, "busy": 1} for t in range(16)]
    rows = steps.series(result, schedule, 1.0, samples)
    assert [(r["t"], r["offered"], r["served"], r["workers"]) for r in rows] == [
        (0, 10, 10, 1), (1, 10, 10, 1), (2, 100, 100, 3), (3, 100, 100, 3)
    ]  # fmt: skip
    assert rows[2]["p99_ms"] == pytest.approx(300, rel=0.01) and rows[3]["errors"] == 2
    first, second = steps.step_summaries(result, schedule, 1.0, samples, settle=1.0)
    assert first["workers_max"] == 1 and first["p99_ms"] == pytest.approx(20, rel=0.01)
    assert second["ramp_p99_ms"] == pytest.approx(300, rel=0.01)
    assert second["settled_p99_ms"] == pytest.approx(25, rel=0.01)
    assert (second["workers_start"], second["workers_max"], second["workers_max_after_s"]) == (1, 3, 0.5)
    lines = steps.step_lines([first, second], 1.0)
    assert (
        lines[0]
        == "step 1: 10/s for 2 s: p99 20.1 ms (first 1 s 20.1 ms, after 20.1 ms); 1 workers all along"
    )
    assert "workers 1 at the start, 3 at most (0.5 s into the step), 3 at the end" in lines[1]


def test_the_load_follows_the_steps() -> None:
    # A threaded echo server in this process; 100/s for 0.3 s, a pause, 200/s for 0.2 s.
    class Echo(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline())

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo) as server:
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        spec = load.LoadSpec(
            family=socket.AF_INET,
            address=("127.0.0.1", server.server_address[1]),
            protocol="line",
            payload=b"ping",
            concurrency=8,
            duration=0.7,
            steps=((100, 0.3), (0, 0.2), (200, 0.2)),
            window=0.1,
        )
        result = loadgen.run_load(spec)
        server.shutdown()
        thread.join()
    # Each request in the window it was due in; one due just before the end may find the
    # loop late on a busy machine, and is counted as unsent instead.
    counts = [w.ok for w in result.windows]
    assert result.errors == {} and result.ok + result.unsent == 30 + 40, result
    assert counts[:5] == [10, 10, 10, 0, 0] and sum(counts[5:]) + result.unsent == 40, counts
    assert result.unsent <= 2 and counts[5] == 20, counts


def test_rounds_are_interleaved() -> None:
    assert rounds.schedule([1, 2, 4], 3) == [
        (0, 1), (0, 2), (0, 4), (1, 4), (1, 2), (1, 1), (2, 1), (2, 2), (2, 4)
    ]  # fmt: skip


def test_mann_whitney_exact_p_values() -> None:
    assert rounds.mann_whitney_p([4, 5, 6], [1, 2, 3]) == pytest.approx(1 / 20)  # every round above
    assert rounds.mann_whitney_p([1, 2, 3], [4, 5, 6]) == 1.0
    assert rounds.mann_whitney_p(list(range(5, 10)), list(range(5))) == pytest.approx(1 / 252)
    assert rounds.mann_whitney_p([3, 5, 6], [1, 2, 4]) == pytest.approx(2 / 20)  # one pair inverted
    assert rounds.mann_whitney_p([1], [0]) == 0.5


def test_gains_inside_the_noise_do_not_count() -> None:
    def beats(better: list[float], worse: list[float]) -> bool:
        return rounds.beats(better, worse, higher_is_better=True, material=0.05)

    assert beats([110, 111, 112], [100, 101, 102])  # every round 10% above
    assert not beats([110, 111, 101], [100, 101, 102])  # one round inside the other's range
    assert not beats([103, 104, 104], [100, 101, 99])  # beyond chance, but not material
    assert not beats([200, 100, 210], [150, 140, 160])  # a large median gain inside a wide spread
    assert beats([150, 151], [100, 101]) and not beats([150, 99], [100, 101])  # 2 rounds: all above
    assert beats([106], [100]) and not beats([104], [100])  # 1 round: the 5% rule alone
    # Lower is better (p99 in open loop), with 10% to be material.
    assert rounds.beats([20, 21, 22], [30, 31, 32], higher_is_better=False, material=0.10)
    # With more rounds, one outlier round does not hide a real gain.
    assert beats([120, 121, 122, 123, 124, 90], [100, 101, 102, 103, 104, 105])


def _size(
    workers: int, rps: list[float], p99: list[float] | None = None, p99_all: list[float | None] | None = None
) -> dict[str, Any]:
    p99 = p99 or [10.0] * len(rps)
    return {
        "workers": workers,
        "ok": 1,
        "rounds_run": len(rps),
        "rps": statistics.median(rps),
        "rps_min": min(rps),
        "rps_max": max(rps),
        "rps_rounds": rps,
        "p99_ms": statistics.median(p99),
        "p99_min_ms": min(p99),
        "p99_max_ms": max(p99),
        "p99_rounds_ms": p99,
        "p99_all_rounds_ms": list(p99) if p99_all is None else p99_all,
    }


def test_the_recommendation_never_prefers_a_gain_inside_the_noise() -> None:
    no_caps: dict[str, int | None] = {"cpu": None, "memory": None}

    def recommend(*sizes: dict[str, Any], caps: dict[str, int | None] = no_caps) -> Any:
        return rounds.recommend(sizes, open_loop=False, caps=caps)

    # What once gave "4 workers" on 2 CPUs: 4 the best by noise, 2 a worse p99.
    rec = recommend(
        _size(1, [13765, 13500, 13900], [15.0, 14.0, 16.0]),
        _size(2, [13856, 13400, 13700], [14.2, 19.0, 15.0]),
        _size(4, [13357, 14100, 13950], [17.4, 13.0, 14.0]),
    )
    assert rec["workers"] == 1 and rec["best_workers"] == 4, rec
    assert rec["reason"].startswith(
        "13,765 req/s median, 13,500-13,900 over 3 rounds; the best throughput, 4 workers"
    )
    # A real gain up to 4, none past it.
    rec = recommend(_size(1, [500, 510, 490]), _size(2, [990, 1000, 980]), _size(4, [1900, 1950, 1990]),
                    _size(8, [1960, 2010, 1930]))  # fmt: skip
    assert rec["workers"] == 4 and rec["best_workers"] == 8 and rec["capped"] == {}
    # The caps leave the larger sizes out, and say so.
    rec = recommend(_size(1, [500, 510, 490]), _size(2, [990, 1000, 980]), _size(4, [1900, 1950, 1990]),
                    caps={"cpu": 2, "memory": 3})  # fmt: skip
    assert rec["workers"] == 2 and rec["capped"] == {"cpu": 2, "memory": 3}
    rec = recommend(_size(2, [990, 1000, 980]), _size(4, [1900, 1950, 1990]), caps={"cpu": 1, "memory": None})
    assert rec["workers"] == 2  # the smallest size measured, even above the CPU cap
    # But never a pool that does not fit in memory.
    rec = recommend(_size(2, [990, 1000, 980]), _size(4, [1900, 1950, 1990]), caps={"cpu": None, "memory": 1})
    assert rec["workers"] is None and rec["capped"] == {"memory": 1}, rec
    assert rec["reason"] == "only 1 worker fit in --memory-limit, fewer than the smallest pool size measured"
    # In open loop the throughput is the rate: p99 decides.
    sizes = [_size(1, [100, 100, 100], [900, 950, 990]), _size(2, [100, 100, 100], [30, 31, 29]),
             _size(4, [100, 100, 100], [29, 28, 31])]  # fmt: skip
    assert rounds.recommend(sizes, open_loop=True, caps=no_caps)["workers"] == 2  # type: ignore[index]
    assert recommend({**_size(1, [0]), "ok": 0}) is None


def test_the_cpu_cap_follows_the_compute_share() -> None:
    def cap(share: float, cpus: int) -> int | None:
        return rounds.cpu_cap([{"compute_share": share}], cpus)[0]

    assert cap(1.0, 2) == 2 and cap(0.97, 2) == 2 and cap(0.9, 2) == 3
    assert cap(1.0, 1) == 1 and cap(0.1, 2) == 20 and cap(0.5, 8) == 16
    assert rounds.cpu_cap([{"compute_share": None}], 2) == (None, None)


def test_memory_cost_model() -> None:
    mib = 2**20
    sizes = [
        {"workers": 1, "total_pss_bytes": 30 * mib, "worker_uss_bytes_median": 9 * mib},
        {"workers": 2, "total_pss_bytes": 40 * mib, "worker_uss_bytes_median": 9 * mib},
        {"workers": 4, "total_pss_bytes": 60 * mib, "worker_uss_bytes_median": 9 * mib},
    ]
    model = memory.cost_model(sizes)
    assert model is not None and "slope" in model["method"]
    assert model == {"per_worker_bytes": 10 * mib, "base_bytes": 20 * mib, "method": model["method"]}
    assert memory.workers_fit(model, 2**30) == (1024 - 20) // 10
    assert memory.workers_fit(model, 10 * mib) == 0
    assert (
        memory.memory_lines(model, 2**30, 100)[1]
        == "memory: 100 workers fit in 1 GiB (master 20 MiB + 10 MiB per worker)"
    )
    one = memory.cost_model(sizes[:1])
    assert one is not None and one["per_worker_bytes"] == 9 * mib and one["base_bytes"] == 21 * mib
    assert memory.cost_model([{"workers": 1, "total_pss_bytes": None}]) is None


def test_histogram_results_merge_across_processes() -> None:
    one, two = load.LoadResult(), load.LoadResult()
    for value in range(1000, 2000):
        one.histogram.record_value(value)
    two.histogram.record_value(50_000)
    two.count_error("reset")
    merged = load.LoadResult.from_json(one.to_json())
    merged.merge(load.LoadResult.from_json(two.to_json()))
    assert merged.histogram.get_total_count() == 1001
    assert merged.histogram.get_max_value() == pytest.approx(50_000, rel=0.001)
    assert merged.errors == {"reset": 1}


# -- the open loop's schedule ----------------------------------------------------------------


def _union(spec: load.LoadSpec, clients: int) -> list[float]:
    """Every due time of ``clients`` client processes sharing ``spec`` (seconds, sorted)."""
    times = []
    for index in range(clients):
        share = runner._share(spec, index, clients)
        plan = schedule.Schedule(
            share.steps or ((share.rate or 0.0, share.duration),), share.phase, share.stride
        )
        mine = list(iter(plan.next, math.inf))
        assert len(mine) == plan.count()
        times += mine
    return sorted(times)


@pytest.mark.parametrize(
    ("rate", "wanted", "duration"), [(20, 4, 1.0), (2, 8, 2.0), (150, 2, 1.0), (7.5, 3, 2.0)]
)
def test_the_clients_send_one_evenly_spaced_schedule(rate: float, wanted: int, duration: float) -> None:
    # Not in lockstep (4 at once every 200 ms for 20/s from 4 clients), not over-sent (8
    # requests at once for 2/s from 8): together, one request every 1/R seconds.
    clients = runner.client_count(wanted, 64, rate)
    assert clients == min(wanted, math.ceil(rate))
    spec = load.LoadSpec(socket.AF_INET, ("127.0.0.1", 9), "line", b"ping", 64, duration, rate=rate)
    due = _union(spec, clients)
    assert due == pytest.approx([m / rate for m in range(math.ceil(rate * duration))])
    # Each step too, from its own start.
    stepped = load.LoadSpec(
        socket.AF_INET,
        ("127.0.0.1", 9),
        "line",
        b"",
        64,
        1.5,
        steps=((rate, 1.0), (0, 0.25), (2 * rate, 0.25)),
    )
    expected = [m / rate for m in range(math.ceil(rate))]
    expected += [1.25 + m / (2 * rate) for m in range(math.ceil(rate / 2 - 1e-9))]
    assert _union(stepped, clients) == pytest.approx(expected)


def test_the_client_count_follows_the_load() -> None:
    assert runner.client_count(8, 64, None) == 8 and runner.client_count(8, 3, None) == 3
    assert runner.client_count(8, 64, 2) == 2 and runner.client_count(8, 64, 0.5) == 1
    assert runner.client_count(4, 64, 2.5) == 3 and runner.client_count(0, 64, None) == 1
    assert schedule.client_share(10, 3, 4) == 2 and schedule.client_share(2, 3, 4) == 0
    with pytest.raises(ValueError):
        schedule.Schedule([(1.0, 1.0)], phase=4, stride=4)


class _Stamp(socketserver.StreamRequestHandler):
    """Note when each connection was accepted (time.monotonic()), then echo a line."""

    stamps: ClassVar[list[float]] = []

    def handle(self) -> None:
        type(self).stamps.append(time.monotonic())
        self.wfile.write(self.rfile.readline())


@pytest.fixture
def stamping() -> Iterator[tuple[str, int]]:
    """A threaded line server in this process noting its accept times in _Stamp.stamps."""
    _Stamp.stamps = []
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Stamp) as server:
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield "127.0.0.1", server.server_address[1]
        server.shutdown()
        thread.join()


def test_a_client_sends_its_turns_of_the_schedule(stamping: tuple[str, int]) -> None:
    # Client 1 of 4 at 20/s: its requests are due at 50, 250, 450 ms (not 0, 200, 400 as
    # every client's were), and it counts none of them as unsent.
    spec = load.LoadSpec(socket.AF_INET, stamping, "line", b"ping", 4, 0.6, rate=20, phase=1, stride=4)
    begin = time.monotonic() + 0.05
    result = loadgen.run_load(spec, begin=begin)
    assert result.ok == 3 and result.unsent == 0 and result.errors == {}, result
    offsets = [t - begin for t in _Stamp.stamps]
    assert offsets == pytest.approx([0.05, 0.25, 0.45], abs=0.03), offsets


class _Flood(socketserver.StreamRequestHandler):
    """Read a line, then send zeros (never a newline) until the client goes."""

    def handle(self) -> None:
        self.rfile.readline()
        zeros = bytes(65536)
        try:
            while True:
                self.wfile.write(zeros)
        except OSError:
            pass


def test_a_reply_without_end_is_a_bad_reply() -> None:
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Flood) as server:
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        spec = load.LoadSpec(
            socket.AF_INET, ("127.0.0.1", server.server_address[1]), "line", b"ping", 1, 5.0, requests=2
        )
        started = time.monotonic()
        result = loadgen.run_load(spec)
        server.shutdown()
        thread.join()
    assert result.errors == {"bad reply": 2} and result.ok == 0, result
    assert time.monotonic() - started < 3  # cut at MAX_REPLY, not at the timeout


def test_the_head_is_searched_in_the_new_bytes_only() -> None:
    inbox = bytearray(b"HTTP/1.1 200 OK\r\nA: b\r\n\r")
    assert not protocols.head_ends("http", inbox, 0)
    inbox += b"\nbody"
    assert protocols.head_ends("http", inbox, len(inbox) - 5)  # the blank line cut in two
    assert protocols.head_ends("line", bytearray(b"abc\n"), 3) and not protocols.head_ends(
        "line", bytearray(b"a\nbc"), 2
    )
    assert not protocols.head_ends("raw", bytearray(b"abc\n"), 0) and protocols.head_ends(
        "udp", bytearray(), 0
    )


# -- the step-load mode's windows ------------------------------------------------------------


def test_window_histograms_are_small_and_made_when_needed() -> None:
    result = load.LoadResult()
    result.window(999)
    assert all(w.histogram is None for w in result.windows)  # 1,000 windows, no histogram
    result.windows[3].record(20_000, 5_000_000)
    result.windows[3].record(9_000_000, 5_000_000)  # past the timeout: kept at its top
    small = result.windows[3].histogram
    assert small.counts_len * small.word_size < load.new_histogram().counts_len * 8 / 10
    again = load.LoadResult.from_json(result.to_json())
    again.merge(load.LoadResult.from_json(result.to_json()))
    merged = again.windows[3]
    assert merged.ok == 4 and merged.histogram.get_total_count() == 4
    assert merged.histogram.get_max_value() == pytest.approx(5_000_000, rel=0.01)
    assert again.windows[0].histogram is None and len(again.windows) == 1000


# -- the recommendation ----------------------------------------------------------------------


def test_a_noisy_best_does_not_pull_the_recommendation_below_a_real_gain() -> None:
    no_caps: dict[str, int | None] = {"cpu": None, "memory": None}
    sizes = [_size(1, [100, 105, 160]), _size(2, [200, 205, 210]), _size(4, [150, 300, 310])]
    rec = rounds.recommend(sizes, open_loop=False, caps=no_caps)
    assert rec is not None and rec["workers"] == 2 and rec["best_workers"] == 4, rec  # 2 beats 1 every round
    # A lucky round walks nothing up: 4 beats neither 2 nor 1 beyond the noise here.
    sizes = [_size(1, [100, 101, 102]), _size(2, [101, 103, 104]), _size(4, [99, 100, 180])]
    assert rounds.recommend(sizes, open_loop=False, caps=no_caps)["workers"] == 1  # type: ignore[index]


def test_open_loop_counts_failures_in_the_p99() -> None:
    no_caps: dict[str, int | None] = {"cpu": None, "memory": None}
    # 1 worker fails fast (p99 5 ms of the few good replies, 90% errors: never), 2 serve all.
    sizes = [_size(1, [10] * 3, [5.0] * 3, [None] * 3), _size(2, [100] * 3, [31.0, 30.0, 32.0])]
    rec = rounds.recommend(sizes, open_loop=True, caps=no_caps)
    assert rec is not None and rec["workers"] == 2 and rec["best_workers"] == 2, rec
    assert rec["reason"] == "the best p99 (p99 31 ms median, 30-32 over 3 rounds)"
    sizes = [_size(1, [10] * 3, [5.0] * 3, [None] * 3), _size(2, [10] * 3, [5.0] * 3, [None] * 3)]
    rec = rounds.recommend(sizes, open_loop=True, caps=no_caps)
    assert rec is not None and rec["workers"] == 1 and "p99 never median" in rec["reason"], rec
    # A run's figures: the p99 of all that came due, failures counted.
    result = load.LoadResult(ok=10, ok_in_window=10, errors={"reset": 90})
    for _ in range(10):
        result.histogram.record_value(5000)
    found = report.figures(runner.PoolRun(1, "line", "127.0.0.1:9", result, 1.0, 1.0, False))
    assert found["p99_ms"] == pytest.approx(5, rel=0.01) and found["p99_all_ms"] is None


@pytest.mark.parametrize("cpus", [2, 20, 32, 64])
def test_a_cpu_bound_handler_is_capped_at_the_cpus(cpus: int) -> None:
    # 31 of 32 CPUs once left out the pool of 32 (cap ceil(0.95 x 32) = 31): 16 was
    # recommended on a machine whose throughput scaled to 32.
    for share in (1.0, 0.97, 0.95):
        assert rounds.cpu_cap([{"compute_share": share}], cpus) == (cpus, share)
    sizes = sorted({cpus} | {2**k for k in range(8) if 2**k <= 2 * cpus})
    summaries = []
    for n in sizes:
        rps = 1000.0 * min(n, cpus)
        summaries.append(_size(n, [rps, rps * 1.01, rps * 0.99]) | {"compute_share": 0.99})
    cap, _ = rounds.cpu_cap(summaries, cpus)
    rec = rounds.recommend(summaries, open_loop=False, caps={"cpu": cap, "memory": None})
    assert rec is not None and rec["workers"] == cpus, rec


def test_the_cpu_cap_is_off_where_the_share_is_unknown() -> None:
    waiting = runner.WorkerLoad(1, 10, cpu=0.5, rss=1, runq=0.0, busy=1.0)
    assert runner.compute_share([waiting], 1.0) == 0.5 and runner.share_unknown([waiting]) is None
    threaded = runner.WorkerLoad(1, 10, cpu=0.5, rss=1, runq=0.0, busy=1.0, threads=5)
    assert runner.compute_share([threaded], 1.0) is None
    assert "several threads" in (runner.share_unknown([threaded]) or "")
    blind = runner.WorkerLoad(1, 10, cpu=0.5, rss=1, runq=None, busy=1.0)
    assert runner.compute_share([blind], 1.0) is None
    assert (runner.share_unknown([blind]) or "").startswith("/proc/PID/schedstat is missing")
    before = {1: runner.WorkerSample(1, 1.0, 1, 0, runq=None)}
    after = {1: runner.WorkerSample(1, 2.0, 1, 5, runq=3.0)}
    assert runner.window_loads(before, after)[0].runq is None
    sizes = [_size(1, [100, 100, 100])]
    rec = rounds.recommend(sizes, open_loop=False, caps={"cpu": None, "memory": None})
    lines = report.recommendation_lines(rec, sizes, None, runner.share_unknown([threaded]))
    assert lines[0].startswith("note: no CPU cap: the workers run several threads"), lines


def test_no_recommendation_when_no_worker_fits_in_memory() -> None:
    sizes = [_size(1, [100, 100, 100]), _size(2, [200, 200, 200])]
    rec = rounds.recommend(sizes, open_loop=False, caps={"cpu": None, "memory": 0})
    assert rec is not None and rec["workers"] is None, rec
    lines = report.recommendation_lines(rec, sizes, None)
    assert lines == [
        "recommendation: none: no worker fits in --memory-limit, beside the master and what is shared"
    ]


# -- the command line's values ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("parse_it", "text"),
    [
        (parse.parse_size, "9" * 400),
        (parse.parse_size, "9" * 400 + "G"),
        (parse.parse_size, "2048P"),
        (parse.parse_size, "\u0663G"),
        (parse.parse_duration, "9" * 400 + "s"),
        (parse.parse_duration, "\u0663s"),
        (parse.parse_pool_sizes, "\u0661,\u0662"),
        (parse.parse_pool_sizes, "1_0"),
        (parse.parse_pool_sizes, "9" * 5000),
        (parse.parse_concurrency, "\u0663x"),
        (parse.integer, "\u0663"),
        (parse.integer, ""),
        (parse.number, "\u0661.\u0665"),
        (parse.number, "inf"),
        (parse.number, "nan"),
        (parse.number, "1e400"),
        (slo.parse_slo, "p99=" + "9" * 400 + "s"),
        (slo.parse_slo, "p99=2h"),
        (steps.parse_steps, "\u0663/s for 1s"),
    ],
)
def test_numbers_are_ascii_and_finite(parse_it: Any, text: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_it(text)
    assert "\n" not in str(exc.value) and len(str(exc.value)) < 200


def test_huge_values_are_one_line_usage_errors() -> None:
    assert parse.parse_size("1.5T") == 3 * 2**39 and parse.number("2.5") == 2.5 and parse.integer(" 7") == 7
    with pytest.raises(ValueError, match="at most 1 EiB"):
        parse.parse_size("9" * 400)


# -- runs where something fails --------------------------------------------------------------


def _fake_run(workers: int, ok: int, errors: int = 0, latency_us: int = 20_000) -> runner.PoolRun:
    result = load.LoadResult(ok=ok, ok_in_window=ok, errors={"bad reply": errors} if errors else {})
    for _ in range(ok):
        result.histogram.record_value(latency_us)
    return runner.PoolRun(workers, "line", "127.0.0.1:9", result, 1.0, 1.0, False)


def _sizes_with(
    monkeypatch: pytest.MonkeyPatch, runs: dict[int, runner.PoolRun], *args: str
) -> modes.Outcome:
    """run_sizes of TARGET x:Y, each size's run being ``runs[size]`` (no process started)."""
    monkeypatch.setattr(modes, "run_once", lambda options, size, *rest, **kw: runs[size])
    sizes = ",".join(map(str, runs))
    checked = options.check_options(options.build_parser().parse_args(["x:Y", "--workers", sizes, *args]))
    return modes.run_sizes(checked, report.ProgressLine())


def test_a_size_where_every_request_failed_is_recorded_and_the_bench_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs = {1: _fake_run(1, 0, errors=30), 2: _fake_run(2, 100)}
    outcome = _sizes_with(monkeypatch, runs, "--rounds", "1")
    assert outcome.status == 0 and outcome.recommendation is not None
    assert outcome.recommendation["workers"] == 2
    assert "note: with 1 worker every request failed (bad reply 30): counted as 0 req/s" in outcome.lines
    assert [r["rps"] for r in outcome.runs] == [0, 100]
    # The SLO mode: the failed size never met it; the other did, or none did (exit 3).
    outcome = _sizes_with(monkeypatch, runs, "--rounds", "1", "--rate", "100", "--slo", "p99=50ms")
    assert outcome.status == 0 and outcome.recommendation is not None
    assert outcome.recommendation["workers"] == 2
    outcome = _sizes_with(monkeypatch, runs, "--rounds", "1", "--rate", "100", "--slo", "p99=5ms")
    assert outcome.status == modes.EXIT_SLO_MISSED, outcome
    # Only when every size failed: exit status 1, one line.
    runs = {1: _fake_run(1, 0, errors=30), 2: _fake_run(2, 0, errors=20)}
    outcome = _sizes_with(monkeypatch, runs, "--rounds", "1", "--rate", "100", "--slo", "p99=50ms")
    assert outcome.status == modes.EXIT_FAILED and outcome.recommendation is None
    assert outcome.error == (
        "error: every request failed, with every pool size: 1 worker: bad reply 30; 2 workers: bad reply 20"
    )


def test_a_file_that_cannot_be_written_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.json"

    def run_sizes(*args: Any) -> modes.Outcome:
        out.mkdir()  # made a directory after the check up front
        return modes.Outcome(["a table"], [])

    monkeypatch.setattr(bench, "run_sizes", run_sizes)
    assert bench.main(["x:Y", "--workers", "1", "--out", str(out)]) == bench.EXIT_FAILED
    captured = capsys.readouterr()
    assert captured.out == "a table\n"
    assert (
        captured.err.startswith(f"prefork bench: error: cannot write {out}: ")
        and captured.err.count("\n") == 1
    )


class _FakeClient:
    """A client process that starts (the first) or fails to (the second)."""

    made: ClassVar[list[_FakeClient]] = []

    def __init__(self, spec: load.LoadSpec) -> None:
        if len(self.made) == 1:
            raise OSError(11, "Resource temporarily unavailable")
        self.killed = False
        self.made.append(self)

    def kill(self) -> None:
        self.killed = True


def test_clients_started_are_killed_when_a_later_one_cannot_start(monkeypatch: pytest.MonkeyPatch) -> None:
    _FakeClient.made = []
    monkeypatch.setattr(runner, "ClientProcess", _FakeClient)
    spec = load.LoadSpec(socket.AF_INET, ("127.0.0.1", 9), "line", b"ping", 4, 1.0)
    with pytest.raises(OSError):
        runner.measure(spec, 2, list, None)
    assert [c.killed for c in _FakeClient.made] == [True]


def test_the_parent_reads_a_client_error_line() -> None:
    read, write = os.pipe()
    proc = client_process.ClientProcess.__new__(client_process.ClientProcess)
    proc.stdout = open(read, "rb", buffering=0)
    proc._buffer = bytearray()
    proc.result, proc.error, proc.ready = None, None, False
    os.write(write, b"ready\nerror cannot open a socket: Too many open files (EMFILE)\n")
    os.close(write)
    assert (
        proc.read_available()
        and proc.ready
        and proc.error == "cannot open a socket: Too many open files (EMFILE)"
    )
    proc.stdout.close()


def test_the_open_file_limit_is_raised_or_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = {"soft": 256, "hard": 4096}
    set_to: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda which: (limits["soft"], limits["hard"]))
    monkeypatch.setattr(resource, "setrlimit", lambda which, value: set_to.append(value))
    lifecycle.ensure_open_files(200)  # 232 < 256: nothing to do
    lifecycle.ensure_open_files(400)
    assert set_to == [(4096, 4096)]
    limits["hard"] = 300
    with pytest.raises(ValueError, match="need 432 open files, but the limit is 300"):
        lifecycle.ensure_open_files(400)
    assert resource.RLIMIT_NOFILE  # the real limit untouched
    with pytest.raises(BenchError, match="ulimit -n") as exc:
        checked = options.check_options(
            options.build_parser().parse_args(
                ["x:Y", "--workers", "1", "--concurrency", "400", "--clients", "1"]
            )
        )
        modes._check_open_files(checked, 1)
    assert exc.value.usage
