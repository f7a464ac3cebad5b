"""``prefork bench``: trust tests against handlers of known behaviour, the recommendation and
the modes, outputs, usage errors, and the pure rules (noise, SLO, steps, memory, parsing).

The trust tests run the real command (``python -m prefork bench``) against
``tests/bench_handlers.py``: a handler that sleeps 20 ms per request must measure
workers / 20 ms of throughput (within 10%) and a p50 of 20 ms (within 2 ms); a handler that
resets every 10th connection must count exactly those as resets; a CPU-bound handler must be
recommended at most the usable CPUs. Other tests keep their load light (``--rate``,
``--requests``, one round) so they do not disturb the trust tests running beside them; the
rules are tested without processes.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from prefork import bench
from prefork.bench.load import LoadSpec
from prefork.config import usable_cpus
from tests.bench_handlers import RESET_EVERY, SERVICE_TIME
from tests.conftest import ROOT, group_processes, wait_for

pytestmark = pytest.mark.timeout(45)


def run_bench(*args: str, timeout: float = 40) -> subprocess.CompletedProcess[str]:
    """``python -m prefork bench ARGS`` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "prefork", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def bench_json(tmp_path: Path, *args: str) -> dict[str, Any]:
    """Run the bench with ``--out``, check it succeeded, return the JSON it wrote. One client
    process is plenty for these loads, and leaves the CPUs to the tests running beside; one
    round unless ``args`` say otherwise (the trust tests check each round)."""
    out = tmp_path / "results.json"
    rounds = () if "--rounds" in args else ("--rounds", "1")
    done = run_bench(*args, *rounds, "--clients", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(out.read_text())
    return data


# -- trust tests -----------------------------------------------------------------------------


@pytest.mark.timeout(40)
def test_throughput_matches_workers_over_service_time(tmp_path: Path) -> None:
    # Two requests in flight per worker: a worker never waits for the client between two.
    data = bench_json(
        tmp_path,
        "tests.bench_handlers:SleepHandler",
        "--workers", "1,2", "--concurrency", "2x", "--duration", "2s", "--warmup", "0.5s",
    )  # fmt: skip
    runs = data["runs"]
    assert [r["workers"] for r in runs] == [1, 2]
    for run in runs:
        expected = run["workers"] / SERVICE_TIME
        assert run["rps"] == pytest.approx(expected, rel=0.10), run
        assert run["errors"] == 0, run
        # Every request went to a worker, and each worker took its share.
        served = run["worker_requests"]
        assert len(served) == run["workers"]
        assert all(count is not None and count > 0.3 * sum(served) / len(served) for count in served), run


@pytest.mark.timeout(30)
def test_p50_latency_is_the_service_time(tmp_path: Path) -> None:
    # One request in flight per worker: no queueing, so latency is the service time. With
    # --keepalive, no connect and accept either: on 2 busy cores each of those wake-ups may
    # wait a millisecond for a CPU, which is the machine's, not the measurement's.
    data = bench_json(
        tmp_path,
        "tests.bench_handlers:SleepHandler",
        "--workers", "1", "--concurrency", "1x", "--keepalive", "--duration", "2s", "--warmup", "0.5s",
    )  # fmt: skip
    (run,) = data["runs"]
    assert run["p50_ms"] == pytest.approx(SERVICE_TIME * 1000, abs=2.0), run
    assert run["p50_ms"] >= SERVICE_TIME * 1000, run  # a reply cannot beat the sleep
    assert run["errors"] == 0, run


@pytest.mark.timeout(30)
def test_resets_are_counted_as_resets(tmp_path: Path) -> None:
    # One worker, no warmup: the bench's 200 connections are the worker's 200, 20 reset.
    data = bench_json(
        tmp_path,
        "tests.bench_handlers:ResetHandler",
        "--workers", "1", "--concurrency", "4", "--requests", "200", "--warmup", "0",
    )  # fmt: skip
    (run,) = data["runs"]
    assert run["requests"] == 200
    assert run["errors"] == 200 // RESET_EVERY, run
    assert run["errors_by_kind"] == {"refused": 0, "reset": 20, "timeout": 0, "bad reply": 0}, run
    assert run["ok"] == 180


@pytest.mark.timeout(30)
def test_open_loop_latency_counts_from_the_intended_send_time(tmp_path: Path) -> None:
    # 1 worker serves 50 req/s; offered 75 req/s, the queue grows all along (to ~50 requests,
    # ~1 s): an open-loop latency must show it (a closed-loop one would stay near
    # concurrency x 20 ms, hiding the requests the client would have sent meanwhile).
    data = bench_json(
        tmp_path,
        "tests.bench_handlers:SleepHandler",
        "--workers", "1", "--rate", "75", "--concurrency", "400", "--duration", "2s", "--warmup", "0",
    )  # fmt: skip
    (run,) = data["runs"]
    assert run["rps"] == pytest.approx(1 / SERVICE_TIME, rel=0.15), run
    assert run["p99_ms"] > 600, run  # ~1 s of backlog at the end
    assert run["p50_ms"] > 100, run


# -- protocols, targets and outputs ----------------------------------------------------------


@pytest.mark.timeout(30)
def test_udp_and_csv_and_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "results.csv", tmp_path / "results.png"
    done = run_bench(
        "examples/udp_echo.py:EchoHandler",
        "--workers", "1", "--rate", "300", "--duration", "1s", "--warmup", "0",
        "--out", str(out), "--plot", str(png), "--clients", "1", "--rounds", "1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with out.open() as lines:
        rows = list(csv.DictReader(lines))
    assert len(rows) == 1 and rows[0]["protocol"] == "udp" and rows[0]["errors"] == "0"
    assert float(rows[0]["rps"]) == pytest.approx(300, rel=0.15)
    data = json.loads((tmp_path / "results.json").read_text())  # the JSON is written beside it
    assert data["parameters"]["machine"]["python"] == sys.version.split()[0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "recommendation: 1 worker:" in done.stdout
    assert done.stdout.splitlines()[0].split()[:3] == ["workers", "req/s", "p50"]


@pytest.mark.timeout(30)
def test_http_keepalive(tmp_path: Path) -> None:
    data = bench_json(
        tmp_path,
        "examples/http_hello.py",
        "--keepalive", "--workers", "2", "--rate", "200", "--duration", "1s", "--warmup", "0",
    )  # fmt: skip
    (run,) = data["runs"]
    assert run["protocol"] == "http" and run["address"].startswith("http://127.0.0.1:")
    assert run["errors"] == 0 and run["rps"] == pytest.approx(200, rel=0.15), run


@pytest.mark.timeout(30)
def test_unix_socket(tmp_path: Path) -> None:
    data = bench_json(
        tmp_path,
        "examples/echo.py:EchoHandler",
        "--unix", "--workers", "1", "--requests", "300", "--concurrency", "3", "--warmup", "0",
    )  # fmt: skip
    (run,) = data["runs"]
    assert run["address"].startswith("unix:") and run["protocol"] == "line"
    assert run["ok"] == 300 and run["errors"] == 0, run


@pytest.mark.timeout(30)
def test_http_on_a_unix_socket(tmp_path: Path) -> None:
    data = bench_json(
        tmp_path,
        "examples/http_hello.py",
        "--unix", "--workers", "1", "--requests", "300", "--concurrency", "3", "--warmup", "0",
    )  # fmt: skip
    (run,) = data["runs"]
    assert run["address"].startswith("unix:") and run["address"].endswith(" (http)")
    assert run["protocol"] == "http"
    assert run["ok"] == 300 and run["errors"] == 0, run


@pytest.mark.timeout(30)
def test_address_of_a_running_server(serve_cli: Any, tmp_path: Path) -> None:
    server = serve_cli("examples/echo.py:EchoHandler", "--workers", "2")
    host, port = server.address
    data = bench_json(tmp_path, "--address", f"{host}:{port}", "--requests", "100", "--concurrency", "2")
    (run,) = data["runs"]
    assert run["ok"] == 100 and run["errors"] == 0 and run["protocol"] == "line"


@pytest.mark.timeout(30)
def test_a_refused_target_fails_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "nobody.sock"
    done = run_bench("--address", f"unix:{path}", "--requests", "20", "--concurrency", "2")
    assert done.returncode == 1, done
    refused = f"cannot connect to unix:{path}: connection refused (is a server listening there?)"
    assert done.stderr == f"prefork bench: error: {refused}\n"
    assert done.stdout == ""


@pytest.mark.timeout(30)
def test_an_http_server_loaded_with_lines_is_detected(serve_cli: Any) -> None:
    server = serve_cli("examples/http_hello.py", "--workers", "1")
    host, port = server.address
    done = run_bench("--address", f"{host}:{port}", "--requests", "50", "--rounds", "1")
    assert done.returncode == 2, done
    assert (
        done.stderr == f"prefork bench: error: the server at {host}:{port} speaks HTTP: use --protocol http\n"
    )
    # And the reverse: HTTP requests to a line server.
    server = serve_cli("examples/echo.py:EchoHandler", "--workers", "1")
    host, port = server.address
    done = run_bench("--address", f"{host}:{port}", "--protocol", "http", "--requests", "50", "--rounds", "1")
    assert done.returncode == 2 and "does not speak HTTP" in done.stderr and done.stderr.count("\n") == 1, (
        done
    )


@pytest.mark.timeout(30)
def test_a_run_where_every_request_failed_exits_1() -> None:
    # Every round of the only pool size failed: the table, a note, one line and status 1.
    # (A size that failed beside one that served is recorded and the bench goes on:
    # tests/test_bench_rules.py, without processes.)
    done = run_bench(
        "tests.bench_handlers:SilentHandler",
        "--workers", "1", "--requests", "30", "--concurrency", "2", "--warmup", "0", "--rounds", "2",
    )  # fmt: skip
    assert done.returncode == 1, done
    assert done.stderr.startswith("prefork bench: error: every request to ") and done.stderr.count("\n") == 1
    assert "failed with 1 worker (bad reply 60)" in done.stderr, done.stderr
    assert "note: with 1 worker every request failed (bad reply 60): counted as 0 req/s" in done.stdout


# -- usage errors (in-process: nothing is started) -------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give a TARGET"),
        (["x:Y", "--address", "127.0.0.1:1"], "give a TARGET"),
        (["--address", "192.0.2.1:80"], "not a loopback address"),
        (["x:Y", "--workers", "0"], "bad pool sizes"),
        (["x:Y", "--duration", "soon"], "bad duration"),
        (["x:Y", "--concurrency", "many"], "bad concurrency"),
        (["x:Y", "--protocol", "raw", "--keepalive"], "--keepalive"),
        (["x:Y", "--out", "/no/such/dir/r.json"], "no such directory"),
        (["x:Y", "--rounds", "0"], "--rounds must be 1 to 20"),
        (["x:Y", "--slo", "p99=50ms"], "--slo needs --rate"),
        (["x:Y", "--slo", "99=50ms", "--rate", "10"], "bad SLO"),
        (["x:Y", "--memory-limit", "2X"], "bad size '2X'"),
        (["x:Y", "--step-load", "10/s for soon"], "bad duration"),
        (["x:Y", "--step-load", "10/s for 1s", "--rate", "5"], "--step-load sets the rate"),
        (["x:Y", "--step-load", "10/s for 20s", "--window", "1ms"], "into more than 10,000 windows"),
        (["x:Y", "--out", "."], "cannot write .: it is a directory"),
        (["x:Y", "--out", ""], "need a file name"),
        (["x:Y", "--out", "/no/such/dir/r.csv"], "no such directory"),
        (["x:Y", "--duration", ""], "bad duration"),
        (["x:Y", "--workers", ""], "bad pool sizes"),
        (["x:Y", "--memory-limit", "9" * 400], "bad size"),
        (["x:Y", "--memory-limit", "1e400G"], "bad size"),
        (["x:Y", "--rate", "10", "--slo", "p99=" + "9" * 400 + "s"], "bad duration"),
        (["x:Y", "--rounds", "\u0663"], "invalid integer value"),
        (["x:Y", "--rate", "\u0661"], "invalid number value"),
        (["x:Y", "--rate", "inf"], "invalid number value"),
        (["x:Y", "--workers", "\u0661,\u0662"], "bad pool sizes"),
    ],
)
def test_usage_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("prefork bench: error: ") and message in err and err.count("\n") == 1


def test_plot_without_matplotlib(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(SystemExit) as exc:
        bench.main(["x:Y", "--plot", "out.png"])
    assert exc.value.code == 2
    assert "pip install 'prefork[plot]'" in capsys.readouterr().err


@pytest.mark.timeout(30)
def test_a_target_that_does_not_load_is_a_usage_error() -> None:
    done = run_bench("tests.bench_handlers:NoSuchHandler", "--workers", "1", "--duration", "1s")
    assert done.returncode == 2
    assert done.stderr.startswith("prefork bench: error: the server exited with status 2")
    assert "NoSuchHandler" in done.stderr and done.stderr.count("\n") == 1


# -- the recommendation, the SLO and step-load modes, memory ---------------------------------


@pytest.mark.timeout(45)
def test_a_cpu_bound_handler_gets_at_most_the_usable_cpus(tmp_path: Path) -> None:
    # The done-when of the bench's noise rule, cheaply: as many workers as usable CPUs, and
    # twice that, 3 interleaved rounds each; the CPU-bound handler must get at most the CPUs,
    # whatever the tests beside this one do to the machine. (docs/sizing.md: 10 such runs.)
    cpus = usable_cpus()
    data = bench_json(
        tmp_path,
        "tests.bench_handlers:CpuHandler",
        "--workers", f"{cpus},{2 * cpus}", "--rounds", "3", "--duration", "0.5s", "--warmup", "0.2s",
        "--memory-limit", "1G",
    )  # fmt: skip
    recommendation = data["recommendation"]
    assert recommendation["workers"] <= cpus, data
    runs = data["runs"]
    assert [r["workers"] for r in runs] == [cpus, 2 * cpus]
    for run in runs:
        assert [r["round"] for r in run["rounds"]] == [0, 1, 2] and run["rounds_run"] == 3
        assert run["rps_min"] <= run["rps"] <= run["rps_max"] and len(run["rps_rounds"]) == 3
        assert run["compute_share"] > 0.5, run  # a CPU-bound handler computes nearly all the time
        # Memory, after the load: the master's and each worker's, private and proportional.
        assert 0 < run["master_uss_bytes"] <= run["master_pss_bytes"], run
        assert len(run["worker_uss_bytes"]) == run["workers"] and all(u > 0 for u in run["worker_uss_bytes"])
        assert run["total_pss_bytes"] >= run["master_pss_bytes"] + sum(run["worker_uss_bytes"]) * 0.9
    memory = data["memory"]
    assert 2**20 < memory["per_worker_bytes"] < 2**28 and memory["limit_bytes"] == 2**30
    assert memory["workers_fit"] == (2**30 - memory["base_bytes"]) // memory["per_worker_bytes"]


@pytest.mark.timeout(45)
def test_slo_mode_finds_the_smallest_pool_that_meets_it(tmp_path: Path) -> None:
    # 100 req/s of 20 ms requests: 1 worker serves 50/s and falls behind (its p99 grows with
    # the queue, and its unsent requests count as too slow); 4 serve 200/s.
    data = bench_json(
        tmp_path,
        "tests.bench_handlers:SleepHandler",
        "--workers", "1,4", "--rate", "100", "--slo", "p99=300ms", "--duration", "1s", "--warmup", "0.2s",
        "--concurrency", "400",
    )  # fmt: skip
    one, four = data["runs"]
    assert not one["slo_met"] and four["slo_met"], data["runs"]
    assert four["slo"] == [four["slo"][0] | {"objective": "p99", "limit_ms": 300.0, "met": True}]
    assert data["recommendation"]["workers"] == 4 and data["recommendation"]["met"] == [4]
    # No pool size meets an impossible SLO: exit status 3, one line on stderr.
    done = run_bench(
        "tests.bench_handlers:SleepHandler",
        "--workers", "1", "--rate", "20", "--slo", "p99=5ms", "--duration", "0.5s", "--warmup", "0",
        "--rounds", "1", "--clients", "1",
    )  # fmt: skip
    assert done.returncode == 3, done
    assert done.stderr == "prefork bench: no pool size met p99 <= 5 ms at 20 req/s in every round\n"
    assert "recommendation: none: no pool size met" in done.stdout


@pytest.mark.timeout(45)
def test_step_load_shows_the_workers_and_latency_over_time(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "steps.png"
    data = bench_json(
        tmp_path,
        "tests.bench_handlers:SleepHandler",
        "--workers", "2", "--step-load", "20/s for 1s, 80/s:1s", "--window", "0.5s", "--settle", "0.5s",
        "--plot", str(png),
    )  # fmt: skip
    (run,) = data["runs"]
    assert [r["t"] for r in run["series"]] == [0, 0.5, 1, 1.5]
    assert [r["offered"] for r in run["series"]] == [20, 20, 80, 80]
    assert run["ok"] == 20 + 80 and run["errors"] == 0, run
    assert all(r["workers"] == 2 for r in run["series"]), run["series"]
    assert run["samples"] and all(s["workers"] == 2 for s in run["samples"])
    first, second = run["steps"]
    assert first["rate"] == 20 and second["rate"] == 80 and second["workers_max"] == 2
    assert 20 <= second["p99_ms"] < 200, second  # 2 workers serve 100/s: no queue to speak of
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the bench's processes: none outlives it, none fails for want of files -------------------


def _bench_under_load(handler: str, *args: str) -> tuple[subprocess.Popen[str], int, list[psutil.Process]]:
    """Start the bench on ``handler`` (1 worker, 1 request in flight, 20 s) and wait until a
    request is in flight; return it, its server's master pid (its process group) and its
    client processes."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefork", "bench", handler, "--workers", "1", "--duration", "20s",
         "--warmup", "0", "--rounds", "1", "--clients", "1", "--concurrency", "1", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def loaded() -> tuple[int, list[psutil.Process]] | None:
        kids = psutil.Process(proc.pid).children()
        clients = [k for k in kids if "prefork.bench.client" in " ".join(k.cmdline())]
        servers = [k for k in kids if k not in clients]
        if not clients or not servers:
            return None
        busy = [c for w in servers[0].children() for c in w.net_connections("tcp") if c.status != "LISTEN"]
        return (servers[0].pid, clients) if busy else None

    try:
        master, clients = wait_for(loaded, timeout=15)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return proc, master, clients


@pytest.mark.timeout(30)
@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGKILL])
def test_no_server_outlives_the_bench(sig: signal.Signals) -> None:
    # SIGHUP (its terminal closed) stops the bench as Ctrl-C does; after SIGKILL, the master
    # gets SIGTERM (PR_SET_PDEATHSIG) and the clients SIGKILL.
    proc, master, clients = _bench_under_load("tests.bench_handlers:SleepHandler")
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=15)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130 and err == "prefork bench: interrupted\n", err
    wait_for(lambda: not group_processes(master), timeout=10)
    wait_for(lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in clients))


@pytest.mark.timeout(30)
def test_a_second_ctrl_c_hurries_the_stop_and_leaves_no_server() -> None:
    # The server's stop waits for a request held 60 s (--graceful-timeout 60): a second
    # Ctrl-C once cut the stop short, before the process group was killed.
    proc, master, _ = _bench_under_load(
        "tests.bench_handlers:StuckHandler", "--server-args", "--graceful-timeout 60"
    )
    os.kill(proc.pid, signal.SIGINT)
    time.sleep(0.3)
    assert group_processes(master), "the server stopped at once: nothing to hurry"
    os.kill(proc.pid, signal.SIGINT)
    started = time.monotonic()
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 130 and err == "prefork bench: interrupted\n", err
    assert time.monotonic() - started < 5
    assert not group_processes(master)


def _low_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


@pytest.mark.timeout(30)
def test_too_many_open_files_is_one_line() -> None:
    # A client process whose sockets run out says so in one line, no traceback.
    with socket.create_server(("127.0.0.1", 0), backlog=256) as listener:  # never accepts
        spec = LoadSpec(socket.AF_INET, listener.getsockname()[:2], "line", b"ping", 200, 2.0)
        done = subprocess.run(
            [sys.executable, "-m", "prefork.bench.client"],
            input=spec.to_json() + "\ngo\n",
            cwd=ROOT, capture_output=True, text=True, timeout=20, check=False, preexec_fn=_low_file_limit,
        )  # fmt: skip
    assert done.returncode == 1 and done.stderr == "", done
    assert done.stdout.splitlines()[-1] == (
        "error cannot open a socket: Too many open files (EMFILE): lower --concurrency, or raise the "
        "open-file limit (ulimit -n)"
    )
    # The bench checks the limit up front: a usage error before anything starts.
    done = subprocess.run(
        [sys.executable, "-m", "prefork", "bench", "tests.bench_handlers:SleepHandler", "--workers", "1",
         "--concurrency", "400", "--clients", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=20, check=False, preexec_fn=_low_file_limit,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == "", done
    assert done.stderr == (
        "prefork bench: error: 400 requests in flight in one client process need 432 open files, but "
        "the limit is 64 (ulimit -n): lower --concurrency, or raise --clients\n"
    )
