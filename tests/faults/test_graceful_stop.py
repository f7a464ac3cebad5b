"""A graceful stop loses nothing: every connection queued when TERM arrives is served (not
reset), and ``shutdown_delay`` keeps serving for a while after TERM."""

from __future__ import annotations

import re
import signal
import socket
import threading
import time
from collections.abc import Callable

import psutil
import pytest

from tests.conftest import CLIServer, request_line, wait_for
from tests.faults.figures import report

Serve = Callable[..., CLIServer]
CLIENTS = 20


def ask(address: tuple[str, int], line: bytes, results: list[str]) -> None:
    """One connection: send ``line``, read the answer; record 'ok', 'reset' or the error."""
    try:
        with socket.create_connection(address, timeout=20) as sock:
            sock.sendall(line)
            answer = sock.makefile("rb").readline()
        results.append("ok" if answer.endswith(line) else "eof")
    except ConnectionResetError:
        results.append("reset")
    except OSError as exc:
        results.append(type(exc).__name__)


@pytest.mark.parametrize("worker_class", ["sync", "thread"])
@pytest.mark.timeout(60)
def test_term_serves_every_queued_connection(serve_cli: Serve, worker_class: str) -> None:
    server = serve_cli("tests.handlers:PidEchoHandler", "--workers", "2", "--worker-class", worker_class)
    server.wait_workers(2)
    address = server.address
    results: list[str] = []
    clients = [threading.Thread(target=ask, args=(address, b"sleep 0.2\n", results)) for _ in range(CLIENTS)]
    for client in clients:
        client.start()
    time.sleep(0.3)  # (sync) 2 served, 2 in progress, 16 queued in the backlog
    server.signal(signal.SIGTERM)
    for client in clients:
        client.join(30)
    assert server.wait(30) == 0
    lost = len(results) - results.count("ok")
    report(
        f"graceful_stop_lost_connections_{worker_class}",
        lost,
        f"== 0 of {CLIENTS} (2 workers, 0.2 s requests)",
        **{kind: results.count(kind) for kind in set(results)},
    )
    assert results.count("ok") == CLIENTS, results
    with pytest.raises(ConnectionRefusedError):  # the master is gone: nobody listens
        socket.create_connection(address, timeout=2).close()


@pytest.mark.parametrize("worker_class", ["sync", "thread"])
@pytest.mark.timeout(60)
def test_connection_after_the_drain_is_refused_at_once(serve_cli: Serve, worker_class: str) -> None:
    """Once every worker has drained its queue and closed its listening sockets, the master
    holds no copy either: a new connection is refused at once, not left waiting in a queue
    nobody accepts from until the stop ends (and then reset)."""
    server = serve_cli("tests.handlers:PidEchoHandler", "--workers", "1", "--worker-class", worker_class)
    server.wait_workers(1)
    address = server.address
    results: list[str] = []
    # sync: A in progress, B queued (served by the drain); thread: both in flight.
    lines = (b"sleep 1.5\n", b"sleep 3\n")
    clients = [threading.Thread(target=ask, args=(address, line, results)) for line in lines]
    for client in clients:
        client.start()
        time.sleep(0.1)
    time.sleep(0.2)
    server.signal(signal.SIGTERM)
    time.sleep(1.7)  # sync: A is done and B taken by the drain; thread: drained, B in flight
    tried = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=10).close()
    assert time.monotonic() - tried < 1.0
    for client in clients:
        client.join(30)
    assert results == ["ok", "ok"]
    assert server.wait(30) == 0


@pytest.mark.timeout(60)
def test_shutdown_delay_keeps_serving_after_term(serve_cli: Serve) -> None:
    server = serve_cli("tests.handlers:PidEchoHandler", "--workers", "1", "--shutdown-delay", "1.5")
    server.wait_workers(1)
    address = server.address
    termed = time.monotonic()
    server.signal(signal.SIGTERM)
    served_after = 0
    while time.monotonic() - termed < 1.0:
        assert request_line(address, b"still\n").endswith(b" still\n")
        served_after += 1
    assert server.wait(20) == 0
    took = time.monotonic() - termed
    assert served_after > 10
    assert 1.4 <= took < 5.0, took
    server.wait_logged("serving 1.5 s more (shutdown_delay)")


@pytest.mark.timeout(60)
def test_a_client_that_connected_and_sends_just_after_term_is_served(serve_cli: Serve) -> None:
    """An HTTP server defers accept (TCP_DEFER_ACCEPT: a connection is queued with its first
    data): a client connected before TERM whose request arrives while the pool stops was not
    in the queue the drain took, and the listener's close reset it. The drain now turns the
    option off for DEFER_STOP_GRACE (30 ms) first."""
    for _ in range(3):
        server = serve_cli("tests/wsgi_test_app.py:app", "--workers", "1")
        server.wait_workers(1)
        with socket.create_connection(server.address, timeout=10) as sock:
            time.sleep(0.05)  # connected: held back by the kernel until it sends
            server.signal(signal.SIGTERM)
            time.sleep(0.01)  # the worker drains meanwhile
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.makefile("rb").readline().startswith(b"HTTP/1.1 200 OK")
        assert server.wait(20) == 0


@pytest.mark.timeout(60)
def test_after_a_usr2_upgrade_the_new_pool_still_defers_accept(serve_cli: Serve) -> None:
    """The old pool's drain turns TCP_DEFER_ACCEPT off on the sockets it shares with the new
    master's pool, then gives it back: a client that connects and sends nothing is still
    held by the kernel, not handed to a worker (which would cut it as idle at once)."""
    server = serve_cli("tests/wsgi_test_app.py:app", "--workers", "1")
    server.wait_workers(1)
    address = server.address
    server.signal(signal.SIGUSR2)
    assert server.wait(20) == 0  # the old master, stopped by the new one once its pool is ready
    match = wait_for(lambda: re.search(r"started a new master \(pid (\d+)\)", server.log))
    new_master = psutil.Process(int(match.group(1)))
    try:
        with socket.create_connection(address, timeout=5) as idle:
            idle.settimeout(0.6)
            with pytest.raises(TimeoutError):  # deferred: nobody accepted it, nobody cut it
                idle.recv(1)
        with socket.create_connection(address, timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert sock.makefile("rb").readline().startswith(b"HTTP/1.1 200 OK")
    finally:
        new_master.send_signal(signal.SIGTERM)
        new_master.wait(20)
