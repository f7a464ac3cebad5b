"""prefork.exporter: binding the metrics socket, and serve_exporter in a forked child (as the
master runs it) on TCP and Unix sockets, against urllib/http.client and a real Prometheus."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import stat
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from prefork.exporter import serve_exporter
from prefork.metricsocket import bind_metrics, close_metrics, metrics_url
from tests.conftest import wait_for
from tests.exporter_child import (
    connect_raw,
    exporter_child,
    fetch,
    growing_snapshot,
    make_families,
    make_snapshot,
)
from tests.prom_server import prometheus_scraping

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    "address", ["9100", "localhost", "127.0.0.1:http", "127.0.0.1:70000", "127.0.0.1:-1", "unix:", "[::1:80"]
)
def test_bad_address_raises_value_error(address: str) -> None:
    with pytest.raises(ValueError, match="metrics address") as info:
        bind_metrics(address)
    assert "\n" not in str(info.value)


def test_tcp_port_zero() -> None:
    sock = bind_metrics("127.0.0.1:0")
    try:
        assert sock.family == socket.AF_INET
        assert metrics_url(sock) == f"http://127.0.0.1:{sock.getsockname()[1]}"
        with socket.create_connection(sock.getsockname(), timeout=5):
            pass  # listening
        with pytest.raises(OSError) as info:
            bind_metrics(f"127.0.0.1:{sock.getsockname()[1]}")
        assert info.value.errno == errno.EADDRINUSE
    finally:
        close_metrics(sock)


def test_tcp_ipv6_brackets() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        sock = bind_metrics("[::1]:0")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    with sock:
        assert sock.family == socket.AF_INET6
        assert metrics_url(sock).startswith("http://[::1]:")


def test_unix_socket_mode_0600_and_removed_by_close(tmp_path: Path) -> None:
    path = str(tmp_path / "m.sock")
    sock = bind_metrics(f"unix:{path}")
    assert metrics_url(sock) == f"unix:{path}"
    mode = os.lstat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    close_metrics(sock)
    assert not os.path.exists(path)


def test_unix_stale_socket_replaced_live_one_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "m.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays, nothing listens: stale
    sock = bind_metrics(f"unix:{path}")
    try:
        with pytest.raises(OSError) as info:
            bind_metrics(f"unix:{path}")  # a live one is not stolen
        assert info.value.errno == errno.EADDRINUSE
        assert os.path.exists(path)
    finally:
        close_metrics(sock)


def test_unix_close_keeps_a_replaced_file(tmp_path: Path) -> None:
    path = tmp_path / "m.sock"
    sock = bind_metrics(f"unix:{path}")
    path.unlink()
    path.write_text("someone else's")
    close_metrics(sock)
    assert path.read_text() == "someone else's"


def test_unix_regular_file_and_symlink_left_alone(tmp_path: Path) -> None:
    regular = tmp_path / "file"
    regular.write_text("data")
    with pytest.raises(OSError):
        bind_metrics(f"unix:{regular}")
    assert regular.read_text() == "data"
    link, target = tmp_path / "link", tmp_path / "target.sock"
    link.symlink_to(target)
    with pytest.raises(OSError):
        bind_metrics(f"unix:{link}")
    assert link.is_symlink() and not target.exists()


def check_routes(url: str) -> None:
    """Every route of the exporter at ``url``."""
    metrics = fetch(url, "/metrics")
    assert metrics.status == 200
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(metrics.body.decode())}
    assert families["prefork_workers_wanted"].samples[0].value == 4
    assert families["prefork_requests"].samples[0].value > 1000  # grows per snapshot() call
    assert families["app_orders"].samples[0].value == 5

    status = fetch(url, "/status?json")
    assert status.status == 200 and status.headers["content-type"] == "application/json"
    snapshot = json.loads(status.body)
    expected = make_snapshot()
    assert snapshot["totals"].pop("requests") > expected["totals"].pop("requests")
    assert snapshot["workers"][0].pop("requests") > expected["workers"][0].pop("requests")
    assert snapshot == expected

    page = fetch(url, "/status")
    assert page.status == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.body.startswith(b"<!DOCTYPE html>") and b"<svg" in page.body and b"TestServer" in page.body

    head = fetch(url, "/status", method="HEAD")
    assert head.status == 200 and head.body == b"" and int(head.headers["content-length"]) > 1000

    index = fetch(url, "/")
    assert index.status == 200 and b'href="/metrics"' in index.body
    assert fetch(url, "/nope").status == 404
    assert fetch(url, "/metrics", method="POST").status == 501


def test_routes_over_tcp() -> None:
    with exporter_child("127.0.0.1:0") as child:
        check_routes(child.url)
        with urllib.request.urlopen(child.url + "/metrics", timeout=5) as answer:
            assert b"prefork_requests_total" in answer.read()


def test_routes_over_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "metrics.sock"
    with exporter_child(f"unix:{path}") as child:
        assert child.url == f"unix:{path}"
        check_routes(child.url)


def test_child_exits_when_the_master_pipe_closes() -> None:
    with exporter_child("127.0.0.1:0") as child:
        assert fetch(child.url, "/").status == 200
        started = time.monotonic()
        assert child.stop() == 0
        assert time.monotonic() - started < 3.0
        with pytest.raises(OSError):
            fetch(child.url, "/", timeout=1)


def test_silent_client_does_not_block_a_scrape() -> None:
    with exporter_child("127.0.0.1:0", timeout=2.0) as child:
        silent = connect_raw(child.url)
        partial = connect_raw(child.url)
        partial.sendall(b"GET /metr")
        try:
            started = time.monotonic()
            assert fetch(child.url, "/metrics", timeout=3).status == 200
            assert time.monotonic() - started < 1.5  # not after the silent ones' 2 s timeout
            # The silent one is closed after the connection timeout, without an answer.
            assert silent.recv(100) == b""
            assert 1.0 < time.monotonic() - started < 5.0
        finally:
            silent.close()
            partial.close()


def test_trickling_client_cut_off_at_the_deadline() -> None:
    with exporter_child("127.0.0.1:0", timeout=5.0, deadline=1.0) as child:
        with connect_raw(child.url) as trickle:
            started = time.monotonic()
            with pytest.raises(OSError):  # EPIPE or ECONNRESET once cut off
                for byte in b"GET /metrics HTTP/1.0\r\nX-Slow: " + b"x" * 100:
                    trickle.sendall(bytes([byte]))
                    time.sleep(0.2)
                    assert time.monotonic() - started < 5.0, "never cut off"
            assert time.monotonic() - started >= 1.0


def test_a_scraper_evicts_the_oldest_client_still_sending_its_request() -> None:
    """Every slot held by clients that trickle or never send their request: a scraper (which
    sends its request at once) still gets in, in place of the oldest of them."""
    with exporter_child("127.0.0.1:0", max_connections=2, timeout=5.0) as child:
        held = [connect_raw(child.url, timeout=3) for _ in range(2)]
        try:
            held[0].sendall(b"GET /metrics HTTP/1.0\r\nX-Slow: ")  # never ends its headers
            time.sleep(0.3)  # let the server accept both
            started = time.monotonic()
            assert fetch(child.url, "/metrics", timeout=3).status == 200
            assert time.monotonic() - started < 1.5
            try:
                assert held[0].recv(100) == b""  # the oldest was cut off for the scraper
            except ConnectionResetError:
                pass
        finally:
            for sock in held:
                sock.close()


def failing_snapshot() -> dict[str, Any]:
    raise RuntimeError("scoreboard gone")


def test_failing_snapshot_gets_500_and_the_exporter_lives_on() -> None:
    with exporter_child("127.0.0.1:0", snapshot=failing_snapshot, sample_interval=0.1) as child:
        answer = fetch(child.url, "/metrics")
        assert answer.status == 500 and b"cannot read" in answer.body
        assert fetch(child.url, "/status").status == 500
        assert fetch(child.url, "/").status == 200


def test_scraped_by_real_prometheus(tmp_path: Path) -> None:
    with exporter_child("127.0.0.1:0", snapshot=growing_snapshot(step=5), families=make_families) as child:
        target = child.url[len("http://") :]
        with prometheus_scraping(target, tmp_path) as prom:
            assert prom.query('up{job="prefork"}') == 1
            assert prom.wait_until("prefork_workers_wanted", lambda v: v == 4) == 4
            assert prom.query("sum(prefork_workers)") == 4
            assert prom.query('prefork_workers{state="busy"}') == 1
            assert prom.query('prefork_worker_restarts_total{cause="max_requests"}') == 5
            assert prom.query('prefork_worker_requests_total{worker="2"}') == 30
            assert prom.query('app_orders_total{shop="a"}') == 5
            assert prom.query("prefork_request_duration_seconds_count") == 1000
            p50 = prom.query("histogram_quantile(0.5, prefork_request_duration_seconds_bucket)")
            assert p50 is not None and 0.0 < p50 <= 0.005
            # Two scrapes at least: the counter grows, so its rate is positive.
            assert prom.wait_until("rate(prefork_requests_total[5s])", lambda v: v > 0) > 0


def test_child_exits_when_its_parent_dies_though_the_pipe_leaked() -> None:
    """A worker that inherited the pipe's write end must not keep an orphan exporter alive."""
    sock = bind_metrics("127.0.0.1:0")
    url = metrics_url(sock)
    master_r, master_w = os.pipe()  # the test keeps master_w: the "leaked" write end
    report_r, report_w = os.pipe()
    middle = os.fork()
    if middle == 0:  # the "master": forks the exporter, reports its pid, dies
        status = 1
        try:
            me = os.getpid()
            exporter = os.fork()
            if exporter == 0:
                try:
                    serve_exporter(sock, growing_snapshot(), make_families, master_r, master_pid=me)
                finally:
                    os._exit(0)
            wait_for(lambda: fetch(url, "/").status == 200)  # serve_exporter() runs: parent noted
            os.write(report_w, str(exporter).encode())
            status = 0
        finally:
            os._exit(status)
    sock.close()
    os.close(master_r)
    os.close(report_w)
    try:
        assert os.waitpid(middle, 0)[1] == 0
        exporter = int(os.read(report_r, 100))

        def gone() -> bool:
            try:
                return psutil.Process(exporter).status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        try:
            wait_for(gone, timeout=5, interval=0.05)
        except AssertionError:
            os.kill(exporter, signal.SIGKILL)
            raise
    finally:
        os.close(master_w)
        os.close(report_r)
