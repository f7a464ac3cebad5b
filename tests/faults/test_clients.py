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


def good_client_among_idle(address: tuple[str, int], idle_count: int) -> tuple[int, bytes, float, float]:
    """Open ``idle_count`` connections that send nothing, then GET: (status, body, seconds
    the GET took, seconds until the server had closed every idle connection)."""
    idle = [socket.create_connection(address, timeout=10) for _ in range(idle_count)]
    try:
        time.sleep(0.05)
        start = time.monotonic()
        status, body = get(address)
        waited = time.monotonic() - start
        for sock in idle:  # the server closes each one (socket_timeout, or deferred accept's end)
            assert sock.recv(100) == b""
        return status, body, waited, time.monotonic() - start
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.timeout(60)
def test_more_idle_connections_than_workers_only_delay_a_good_client(serve_cli: Serve) -> None:
    """Without deferred accept, each idle connection holds a sync worker socket_timeout."""
    workers, idle_count, socket_timeout = 2, 8, 0.5
    server = serve_cli(
        HTTP, "--workers", str(workers), "--socket-timeout", str(socket_timeout), "--defer-accept", "0"
    )
    before = wait_pool(server.pid, workers)
    status, body, waited, _ = good_client_among_idle(server.address, idle_count)
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


@pytest.mark.timeout(60)
def test_idle_connections_never_reach_a_worker_with_deferred_accept(serve_cli: Serve) -> None:
    """An HTTP server defers accept (defer_accept auto: socket_timeout): connections that send
    nothing stay with the kernel, so a good client is answered at once by a sync pool that has
    fewer workers than idle connections; when the defer period ends, each idle connection is
    handed over, has nothing to read and is closed at once."""
    workers, idle_count, socket_timeout = 2, 8, 2.0
    server = serve_cli(HTTP, "--workers", str(workers), "--socket-timeout", str(socket_timeout))
    before = wait_pool(server.pid, workers)
    status, body, waited, closed_after = good_client_among_idle(server.address, idle_count)
    report(
        "deferred_accept_good_client_wait_s",
        round(waited, 3),
        f"< 0.5 s with {idle_count} idle connections and {workers} sync workers "
        f"(without deferred accept: up to {math.ceil(idle_count / workers) * socket_timeout:g} s)",
        idle_closed_after_s=round(closed_after, 2),
    )
    assert (status, body[:6]) == (200, b"hello ")
    assert waited < 0.5
    assert closed_after < socket_timeout * 2 + 4  # the kernel's SYN-ACK schedule: 3 s here
    assert pool(server.pid) == before


def trickle_until_cut(address: tuple[str, int], interval: float, limit: float) -> float:
    """Send an HTTP request a byte every ``interval`` seconds until the server closes the
    connection (or ``limit`` seconds pass); return how long the server kept it."""
    request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 1000
    start = time.monotonic()
    with socket.create_connection(address, timeout=limit) as sock:
        for byte in request:
            try:
                sock.send(bytes([byte]))
            except OSError:  # reset
                break
            if time.monotonic() - start > limit:
                break
            if socket_closed(sock):
                break
            time.sleep(interval)
    return time.monotonic() - start


def socket_closed(sock: socket.socket) -> bool:
    """Whether the peer closed ``sock`` (readable with nothing to read), without waiting."""
    try:
        return sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


@pytest.mark.parametrize("worker_class", ["sync", "thread"])
@pytest.mark.timeout(60)
def test_trickling_clients_are_cut_by_the_minimum_rate(serve_cli: Serve, worker_class: str) -> None:
    """A client sending a byte every 0.2 s (5 bytes/s, under read_min_rate's 500) is cut
    about socket_timeout after the worker first waits for it, not kept while it trickles;
    the pool then serves others."""
    socket_timeout, clients = 1.0, 2
    server = serve_cli(
        HTTP, "--workers", "1", "--worker-class", worker_class, "--threads", str(clients),
        "--socket-timeout", str(socket_timeout),
    )  # fmt: skip
    wait_pool(server.pid, 1)
    address = server.address
    kept: list[float] = []
    threads = [
        threading.Thread(target=lambda: kept.append(trickle_until_cut(address, 0.2, 20)))
        for _ in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    status, _ = get(address)
    report(
        f"trickling_client_kept_s_{worker_class}",
        round(max(kept), 2),
        f"< socket_timeout {socket_timeout:g} s x {clients} + 1.5 s"
        " (a byte each 0.2 s; without read_min_rate: 20 s)",
    )
    assert status == 200
    # sync: the second trickler waits in the queue while the first is served.
    assert max(kept) < socket_timeout * (clients if worker_class == "sync" else 1) + 1.5


def late_get(address: tuple[str, int], delay: float) -> int:
    """Connect, wait ``delay`` seconds, then send a GET: the status (0 when closed unanswered)."""
    with socket.create_connection(address, timeout=10) as sock:
        time.sleep(delay)
        sock.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        reply = sock.makefile("rb").readline()
    return int(reply.split()[1]) if reply else 0


@pytest.mark.timeout(60)
def test_clients_that_send_late_are_served_by_every_reuseport_socket(serve_cli: Serve) -> None:
    """Each worker's SO_REUSEPORT socket defers accept as the first one: a client that waits
    before sending is served, not closed as idle since it connected."""
    server = serve_cli(HTTP, "--workers", "2", "--accept", "reuseport")
    wait_pool(server.pid, 2)
    statuses: list[int] = []
    threads = [
        threading.Thread(target=lambda: statuses.append(late_get(server.address, 0.3))) for _ in range(12)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert statuses == [200] * 12
