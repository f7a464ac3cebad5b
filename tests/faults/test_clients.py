"""Item 9: misbehaving clients (1,000 garbage-byte, reset and half-closed connections; more idle
connections than workers) crash nothing, and well-behaved clients are still served."""

from __future__ import annotations

import http.client
import math
import random
import socket
import struct
import threading
import time
from collections.abc import Callable

import pytest

from tests.conftest import CLIServer
from tests.faults.figures import distribution, report
from tests.faults.procs import pool, wait_pool

Serve = Callable[..., CLIServer]
HTTP = "tests.handlers:HelloHTTPHandler"
BAD_CONNECTIONS = 1000


def get(address: tuple[str, int], timeout: float = 10.0) -> tuple[int, bytes]:
    """One well-behaved HTTP GET on its own connection: (status, body)."""
    conn = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def misbehave(address: tuple[str, int], kind: int, rng: random.Random) -> None:
    """One bad connection: garbage then close, garbage then reset, a half-closed partial
    request, or a reset with nothing sent."""
    with socket.create_connection(address, timeout=10) as sock:
        if kind in (0, 1):
            sock.sendall(rng.randbytes(rng.randint(1, 4096)))
        elif kind == 2:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: loc")
            sock.shutdown(socket.SHUT_WR)
        if kind in (1, 3):  # close with RST instead of FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.timeout(60)
def test_garbage_and_half_open_connections_crash_nothing(serve_cli: Serve) -> None:
    server = serve_cli(HTTP, "--workers", "2", "--socket-timeout", "1")
    before = wait_pool(server.pid, 2)
    address = server.address
    rng = random.Random(9)
    good: list[tuple[int, bytes]] = []
    latencies: list[float] = []
    done = threading.Event()

    def well_behaved() -> None:
        while not done.is_set() or len(good) < 20:
            start = time.monotonic()
            good.append(get(address))
            latencies.append(time.monotonic() - start)

    client = threading.Thread(target=well_behaved)
    client.start()
    try:
        for n in range(BAD_CONNECTIONS):
            misbehave(address, n % 4, rng)
        time.sleep(0.5)  # good requests go on while the workers get through the backlog
    finally:
        done.set()
        client.join(15)
    assert server.proc.poll() is None
    assert pool(server.pid) == before, "a worker died"
    assert "replacing it" not in server.log and "crashed" not in server.log
    bad = [status for status, body in good if status != 200 or not body.startswith(b"hello ")]
    spread = distribution(latencies)
    report(
        "garbage_connections_good_requests_failed",
        len(bad),
        f"== 0 while {BAD_CONNECTIONS} bad connections arrive; no worker dies",
        good_requests=len(good),
        good_latency_s=spread,
        tracebacks_logged=server.log.count("Error processing request"),
        log_bytes=len(server.log),
    )
    assert not bad
    assert len(good) >= 20


@pytest.mark.timeout(60)
def test_more_idle_connections_than_workers_only_delay_a_good_client(serve_cli: Serve) -> None:
    workers, idle_count, socket_timeout = 2, 8, 0.5
    server = serve_cli(HTTP, "--workers", str(workers), "--socket-timeout", str(socket_timeout))
    before = wait_pool(server.pid, workers)
    address = server.address
    idle = [socket.create_connection(address, timeout=10) for _ in range(idle_count)]
    try:
        time.sleep(0.05)
        start = time.monotonic()
        status, body = get(address)
        waited = time.monotonic() - start
        for sock in idle:  # each one was dropped by the server after socket_timeout
            assert sock.recv(100) == b""
    finally:
        for sock in idle:
            sock.close()
    # Sync workers: each idle connection holds one worker for socket_timeout, in turn.
    limit = math.ceil(idle_count / workers) * socket_timeout + 1.0
    report(
        "idle_connections_good_client_wait_s",
        round(waited, 3),
        f"<= ceil({idle_count} idle / {workers} workers) x socket_timeout {socket_timeout:g} s + 1 s"
        f" = {limit:g} s",
    )
    assert (status, body[:6]) == (200, b"hello ")
    assert pool(server.pid) == before
    assert waited <= limit
