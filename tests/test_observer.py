"""The pool seen from outside, end to end: a real master with ``--metrics``, scraped by a real
Prometheus server, its ``/status`` page in headless Chromium, and application counters exact
across worker recycling and a reload (prefork/observer.py, with the exporter it forks)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from prefork import ctl
from tests.conftest import CLIServer, group_processes, request_line, skip_unless_installed, wait_for
from tests.exporter_child import fetch
from tests.faults.procs import pool, wait_pool
from tests.prom_server import free_port, prometheus_scraping
from tests.test_statuspage import CHROMIUM, run_chromium

Serve = Callable[..., CLIServer]
METRICS_AT = re.compile(r"Metrics at (http://\S+|unix:\S+) ")
HTTP_GET = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def metrics_url(server: CLIServer) -> str:
    return str(wait_for(lambda: (m := METRICS_AT.search(server.log)) and m.group(1)))


def samples(url: str) -> dict[str, float]:
    """Every sample of ``/metrics``, parsed with prometheus_client's parser, by name+labels."""
    text = fetch(url, "/metrics").body.decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def settled(url: str, name: str, value: float, timeout: float = 15.0) -> dict[str, float]:
    """The samples of ``/metrics`` once ``name`` reads ``value`` (a worker counts a request
    once its reply is sent, so the last ones show up a moment after the client has them)."""
    seen: list[float] = []

    def reached() -> dict[str, float] | None:
        found = samples(url)
        seen.append(found[name])
        assert found[name] <= value, f"{name} went over {value}: {found[name]}"
        return found if found[name] == value else None

    try:
        return dict(wait_for(reached, timeout))
    except AssertionError:
        raise AssertionError(f"{name} never read {value}; last readings {seen[-5:]}") from None


def http_get(address: tuple[str, int]) -> bool:
    with socket.create_connection(address, timeout=10) as conn:
        conn.sendall(HTTP_GET)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    return reply.startswith(b"HTTP/1.0 200")


@pytest.mark.timeout(120)
def test_a_real_prometheus_scrapes_what_the_load_generator_sent(serve_cli: Serve, tmp_path: Path) -> None:
    server = serve_cli("--workers", "4", "--metrics", "127.0.0.1:0")
    wait_pool(server.pid, 4)
    url = metrics_url(server)
    sent = 2000
    with concurrent.futures.ThreadPoolExecutor(16) as clients:
        answered = sum(clients.map(lambda _: http_get(server.address), range(sent)))
    assert answered == sent
    # A worker counts a request once its reply is sent: the last one shows up a moment later.
    scraped = settled(url, "prefork_requests_total", sent)
    assert scraped["prefork_request_duration_seconds_count"] == sent
    assert sum(v for k, v in scraped.items() if k.startswith("prefork_worker_requests_total")) == sent
    assert scraped["prefork_workers{state=idle}"] == 4 and scraped["prefork_workers_wanted"] == 4
    assert scraped["prefork_request_errors_total"] == 0
    assert scraped["prefork_listen_queue_limit"] > 0
    with prometheus_scraping(url[len("http://") :], tmp_path) as prometheus:
        assert prometheus.wait_until("prefork_requests_total", lambda v: v == sent) == sent
        assert prometheus.query("sum(prefork_worker_requests_total)") == sent
        assert prometheus.query('prefork_request_duration_seconds_bucket{le="+Inf"}') == sent
        assert prometheus.query("sum(prefork_workers)") == 4
        assert prometheus.query('sum(prefork_worker_restarts_total{cause="crash"})') == 0
        resident = prometheus.query("min(prefork_worker_resident_memory_bytes)")
        assert resident is not None and resident > 1_000_000
        victim = min(pool(server.pid))
        os.kill(victim, signal.SIGKILL)
        wait_pool(server.pid, 4, without={victim})
        assert prometheus.wait_until('prefork_worker_restarts_total{cause="crash"}', lambda v: v == 1) == 1
        assert prometheus.query("prefork_requests_total") == sent  # the dead worker's counts stay
    status = json.loads(fetch(url, "/status?json").body)
    assert status["totals"]["requests"] == sent and len(status["workers"]) == 4


@pytest.mark.timeout(90)
def test_the_status_page_of_a_real_server_in_headless_chromium(serve_cli: Serve, tmp_path: Path) -> None:
    skip_unless_installed("chromium", CHROMIUM)
    server = serve_cli("--workers", "3", "--metrics", "127.0.0.1:0", "--name", "chromium <test>")
    workers = wait_pool(server.pid, 3)
    url = metrics_url(server)
    for _ in range(20):
        assert http_get(server.address)
    dom = run_chromium(["--dump-dom", url + "/status"], tmp_path).stdout
    assert "chromium &lt;test&gt;" in dom and "<svg" in dom
    for pid in workers:
        assert f"<td>{pid}</td>" in dom
    assert "<td>20</td>" in dom or ">20<" in dom  # the requests served


@pytest.mark.timeout(180)
@pytest.mark.parametrize("preload", [False, True], ids=["imported-in-workers", "preload"])
def test_an_app_counter_is_exact_across_recycling_and_a_reload(serve_cli: Serve, preload: bool) -> None:
    flags = ["--preload"] if preload else []
    server = serve_cli(
        "tests.metrics_app:CountingHandler",
        "-w",
        "4",
        "--max-requests",
        "100",
        "--metrics",
        "127.0.0.1:0",
        *flags,
    )
    wait_pool(server.pid, 4)
    url = metrics_url(server)

    def send(count: int) -> None:
        with concurrent.futures.ThreadPoolExecutor(8) as clients:
            replies = list(
                clients.map(lambda i: request_line(server.address, b"hit\n", timeout=20), range(count))
            )
        assert all(reply.endswith(b" hit\n") for reply in replies)

    send(5000)
    server.signal(signal.SIGHUP)
    wait_for(lambda: json.loads(fetch(url, "/status?json").body)["generation"] == 1, timeout=20)
    send(5000)
    scraped = settled(url, "prefork_requests_total", 10_000)
    assert scraped["app_hits_total{kind=line}"] == 10_000
    assert scraped["app_line_bytes_count"] == 10_000 and scraped["app_line_bytes_sum"] == 40_000
    assert scraped["app_line_bytes_bucket{le=4.0}"] == 10_000
    assert scraped["prefork_requests_total"] == 10_000
    assert scraped["prefork_worker_restarts_total{cause=max_requests}"] >= 90
    assert 1 <= scraped["prefork_worker_restarts_total{cause=reload}"] <= 4  # or recycled meanwhile


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_ctl_upgrade_hands_the_metrics_address_to_the_new_master(
    serve_cli: Serve, unix_path: str, kind: str
) -> None:
    """USR2 through the control socket: the new master serves the same metrics address and
    the same control socket path (given explicitly); the old one removes neither."""
    address = f"127.0.0.1:{free_port()}" if kind == "tcp" else f"unix:{unix_path}"
    control = unix_path.replace(".sock", "-control.sock")
    server = serve_cli("--workers", "2", "--metrics", address, "--control-socket", control)
    wait_pool(server.pid, 2)
    url = metrics_url(server)
    assert url == (f"http://{address}" if kind == "tcp" else address)
    server.wait_logged("Control socket at")
    assert ctl.call(control, {"command": "upgrade"}) == {"ok": True}
    with pytest.raises(ctl.CommandRefused, match="an upgrade is in progress"):
        ctl.call(control, {"command": "upgrade"})
    assert server.wait(20) == 0  # the old master retires once the new pool is ready
    masters = [p for p in group_processes(server.pid) if "prefork: master" in " ".join(p.cmdline())]
    assert len(masters) == 1
    new = masters[0].pid
    assert json.loads(fetch(url, "/status?json").body)["master_pid"] == new  # the old exporter is gone
    assert "cannot serve metrics" not in server.log and "cannot use control socket" not in server.log
    assert ctl.call(control, {"command": "status"})["status"]["master_pid"] == new
    os.unlink(control)


@pytest.mark.timeout(40)
def test_the_exporter_reopens_its_log_on_usr1_and_is_not_restarted_while_stopping(
    serve_cli: Serve, tmp_path: Path
) -> None:
    log_file = tmp_path / "prefork.log"
    server = serve_cli("--workers", "1", "--metrics", "127.0.0.1:0", "--log-file", str(log_file), wait=False)
    wait_for(lambda: log_file.exists() and "Metrics at" in log_file.read_text(), timeout=10)
    exporter = wait_for(
        lambda: [p for p in group_processes(server.pid) if "prefork: metrics" in " ".join(p.cmdline())]
    )[0]

    def exporter_writes_to(path: Path) -> bool:
        inode = path.stat().st_ino
        return any(os.stat(f"/proc/{exporter.pid}/fd/{fd}").st_ino == inode for fd in (1, 2))

    assert exporter_writes_to(log_file)
    os.rename(log_file, tmp_path / "prefork.log.1")
    server.signal(signal.SIGUSR1)  # the master reopens its log and forwards USR1 to the exporter
    wait_for(lambda: log_file.exists() and exporter_writes_to(log_file), timeout=10)
    os.killpg(server.pid, signal.SIGTERM)  # a TERM to the whole group, as a terminal or systemd sends
    assert server.wait(15) == 0
    assert "restarting it" not in log_file.read_text()  # stopping: the exporter is not forked again
