"""Helpers for the exporter tests: a synthetic pool snapshot and application families, an
exporter (:func:`prefork.exporter.serve_exporter`) in a forked child, and an HTTP client for
TCP and Unix sockets."""

from __future__ import annotations

import contextlib
import copy
import http.client
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

from prefork.exporter import serve_exporter
from prefork.metricsocket import bind_metrics, metrics_url

DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float


class Family(NamedTuple):
    name: str
    type: str
    help: str
    samples: list[Sample]


def make_snapshot(name: str = "TestServer", workers: int = 4) -> dict[str, Any]:
    """A pool snapshot as prefork.stats makes it: ``workers`` workers, worker 1 busy, the last
    one starting, with psutil's fields on all but the last."""
    states = ["idle", "busy"] + ["idle"] * max(0, workers - 3) + ["starting"]
    rows = []
    for number, state in enumerate(states[:workers]):
        row: dict[str, Any] = {
            "number": number,
            "pid": 40000 + number,
            "generation": 2,
            "state": state,
            "requests": 10 * (number + 1),
            "errors": number % 2,
            "denied": 0,
            "busy_seconds": 0.5 * (number + 1),
            "booted_at": None if state == "starting" else 1764150001.0,
            "request_age": 1.5 if state == "busy" else None,
            "duration_counts": [0] * (len(DURATION_BUCKETS) + 1),
        }
        if number < workers - 1:
            row["rss"] = (20 + number) * 1024 * 1024
            row["cpu_seconds"] = 0.25 * (number + 1)
        rows.append(row)
    return {
        "prefork": 1,
        "name": name,
        "master_pid": 1234,
        "started_at": 1764150000.0,
        "uptime": 3725.5,
        "generation": 2,
        "workers_wanted": workers,
        "worker_class": "sync",
        "control_socket": "/run/user/1000/prefork/TestServer-1234.sock",
        "metrics_address": "http://127.0.0.1:9100",
        "listen_queue": {"length": 3, "limit": 128},
        "totals": {
            "requests": 1000,
            "errors": 7,
            "denied": 2,
            "busy_seconds": 42.5,
            "duration_counts": [500, 200, 100, 80, 50, 30, 20, 10, 6, 3, 1, 0],
        },
        "duration_buckets": list(DURATION_BUCKETS),
        "restarts": {
            "crash": 1,
            "request_timeout": 2,
            "memory": 0,
            "max_requests": 5,
            "reload": 4,
            "resize": 0,
        },
        "boot_failures": 1,
        "master_rss": 30 * 1024 * 1024,
        "master_cpu_seconds": 1.5,
        "workers": rows,
    }


def make_families() -> list[Family]:
    """Application families: a counter (its name with ``_total``), a gauge, a histogram."""
    return [
        Family(
            "app_orders_total", "counter", "Orders taken.", [Sample("app_orders_total", {"shop": "a"}, 5.0)]
        ),
        Family("app_queue_depth", "gauge", "Jobs queued.", [Sample("app_queue_depth", {}, 12.0)]),
        Family(
            "app_latency_seconds",
            "histogram",
            "Backend latency.",
            [
                Sample("app_latency_seconds_bucket", {"le": "0.1"}, 3.0),
                Sample("app_latency_seconds_bucket", {"le": "+Inf"}, 4.0),
                Sample("app_latency_seconds_sum", {}, 0.9),
                Sample("app_latency_seconds_count", {}, 4.0),
            ],
        ),
    ]


def growing_snapshot(step: int = 7, base: Mapping[str, Any] | None = None) -> Callable[[], dict[str, Any]]:
    """A snapshot callable whose total and worker 0's requests grow by ``step`` per call."""
    calls = [0]
    template = dict(base) if base is not None else make_snapshot()

    def snapshot() -> dict[str, Any]:
        calls[0] += 1
        snap = copy.deepcopy(template)
        snap["totals"]["requests"] += step * calls[0]
        snap["workers"][0]["requests"] += step * calls[0]
        return snap

    return snapshot


class Exporter:
    """An exporter child: its pid, where it listens (``http://...`` or ``unix:...``), and the
    write end of its master pipe; :meth:`stop` closes the pipe, as a dying master does."""

    def __init__(self, pid: int, url: str, master_w: int) -> None:
        self.pid, self.url, self.master_w = pid, url, master_w
        self.status: int | None = None

    def stop(self, timeout: float = 5.0) -> int | None:
        """Close the master pipe; the child's exit status once it exited within ``timeout``
        s (it is then reaped), else None."""
        if self.master_w >= 0:
            os.close(self.master_w)
            self.master_w = -1
        if self.status is None:
            self.status = wait_exit(self.pid, timeout)
        return self.status

    def kill(self) -> None:
        """SIGKILL and reap the child if it still runs."""
        if self.stop(timeout=0.0) is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.status = -signal.SIGKILL


@contextlib.contextmanager
def exporter_child(
    address: str = "127.0.0.1:0",
    snapshot: Callable[[], Mapping[str, Any]] | None = None,
    families: Callable[[], list[Family]] = make_families,
    **options: Any,
) -> Iterator[Exporter]:
    """Bind ``address``, fork a child that runs ``serve_exporter`` on it (as the master does),
    yield it; on exit close the pipe and check that the child exited within 5 s, status 0."""
    sock = bind_metrics(address)
    url = metrics_url(sock)
    master_r, master_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the exporter child: never returns into pytest
        status = 1
        try:
            os.close(master_w)
            serve_exporter(sock, snapshot or growing_snapshot(), families, master_r, **options)
            status = 0
        finally:
            os._exit(status)
    os.close(master_r)
    sock.close()
    child = Exporter(pid, url, master_w)
    try:
        yield child
        assert child.stop() == 0, "the exporter did not exit cleanly after the master's pipe closed"
    finally:
        child.kill()
        if url.startswith("unix:"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(url[len("unix:") :])


def wait_exit(pid: int, timeout: float) -> int | None:
    """Reap child ``pid`` within ``timeout`` s: its exit status, or None if it still runs.
    Raises ChildProcessError when it was reaped already."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over a Unix stream socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class Response(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


def fetch(url: str, path: str, method: str = "GET", timeout: float = 5.0) -> Response:
    """``method path`` on the exporter at ``url`` (``http://HOST:PORT`` or ``unix:PATH``)."""
    conn: http.client.HTTPConnection
    if url.startswith("unix:"):
        conn = UnixHTTPConnection(url[len("unix:") :], timeout)
    else:
        conn = http.client.HTTPConnection(url[len("http://") :], timeout=timeout)
    try:
        conn.request(method, path)
        answer = conn.getresponse()
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())
    finally:
        conn.close()


def connect_raw(url: str, timeout: float = 5.0) -> socket.socket:
    """A plain connected socket to the exporter at ``url``."""
    if url.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: Any = url[len("unix:") :]
    else:
        host, _, port = url[len("http://") :].rpartition(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        target = (host, int(port))
    sock.settimeout(timeout)
    sock.connect(target)
    return sock
