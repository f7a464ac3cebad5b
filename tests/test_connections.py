"""The read rules of accepted connections (read_min_rate, read_deadline) and deferred accept,
on real socket pairs: what a slow, silent or fast client gets."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from prefork import PreforkHTTPServer, PreforkTCPServer, connections
from prefork.connections import RequestSocket, defer_seconds, request_socket_class
from tests.handlers import HelloHTTPHandler, PidEchoHandler

pytestmark = pytest.mark.timeout(20)


def rules(min_rate: int = 0, deadline: float = 0.0, deferred: bool = False) -> type[RequestSocket]:
    server: Any = SimpleNamespace(read_min_rate=min_rate, read_deadline=deadline)
    return request_socket_class(server, deferred)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected stream pair: (the server's end, made plain so a class can be set; the client's)."""
    server_end, client_end = socket.socketpair()
    with server_end, client_end:
        yield server_end, client_end


def as_connection(sock: socket.socket, cls: type[RequestSocket], timeout: float) -> RequestSocket:
    sock.__class__ = cls
    sock.settimeout(timeout)
    assert isinstance(sock, RequestSocket)
    return sock


def trickle(sock: socket.socket, interval: float, count: int) -> threading.Thread:
    """Send one byte every ``interval`` seconds, ``count`` times, in a thread."""

    def run() -> None:
        for _ in range(count):
            try:
                sock.send(b"x")
            except OSError:
                return
            time.sleep(interval)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def read_until_cut(conn: socket.socket) -> tuple[float, str]:
    """Read byte by byte until TimeoutError: (seconds it took, the error's message)."""
    start = time.monotonic()
    with pytest.raises(TimeoutError) as raised:
        while conn.recv(1):
            pass
    return time.monotonic() - start, str(raised.value)


def test_a_trickling_client_is_cut_after_the_timeout_by_the_minimum_rate(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    conn = as_connection(pair[0], rules(min_rate=100), timeout=0.5)
    trickle(pair[1], 0.05, 200)  # 20 bytes/s: each read waits 0.05 s, well within the timeout
    took, why = read_until_cut(conn)
    # 0.5 s plus one second per 100 bytes received: about 0.55 s for ~10 bytes.
    assert 0.45 < took < 1.0, took
    assert "read_min_rate 100 bytes/s" in why


def test_recv_into_with_a_byte_count_is_cut_too(pair: tuple[socket.socket, socket.socket]) -> None:
    """Length-prefixed protocols read ``recv_into(buffer, n)``: the same rules apply."""
    conn = as_connection(pair[0], rules(min_rate=100), timeout=0.5)
    trickle(pair[1], 0.05, 200)
    buffer = bytearray(64)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="read_min_rate"):
        while conn.recv_into(buffer, 1):
            assert buffer[0] == ord("x")
    assert 0.45 < time.monotonic() - start < 1.0
    with pytest.raises(ValueError, match="buffer too small"):
        conn.recv_into(bytearray(2), 3)


def test_without_the_rules_a_trickling_client_is_never_cut(pair: tuple[socket.socket, socket.socket]) -> None:
    conn = as_connection(pair[0], rules(), timeout=0.5)
    sender = trickle(pair[1], 0.05, 30)
    received = 0
    while received < 30:
        received += len(conn.recv(1))
    sender.join(5)
    assert received == 30  # 1.5 s of trickling, three times the timeout


def test_a_client_sending_fast_enough_is_not_cut(pair: tuple[socket.socket, socket.socket]) -> None:
    conn = as_connection(pair[0], rules(min_rate=100), timeout=0.3)

    def send() -> None:
        for _ in range(12):
            pair[1].send(b"y" * 100)  # 400 bytes/s, four times the rate
            time.sleep(0.25)

    threading.Thread(target=send, daemon=True).start()
    received = 0
    while received < 1200:
        received += len(conn.recv(4096))
    assert received == 1200  # 3 s: beyond the 0.3 s timeout plus what a slower client gets


def test_the_deadline_cuts_a_client_that_keeps_up_the_rate(pair: tuple[socket.socket, socket.socket]) -> None:
    conn = as_connection(pair[0], rules(min_rate=10, deadline=0.8), timeout=0.5)
    trickle(pair[1], 0.02, 500)  # 50 bytes/s: above the rate
    took, why = read_until_cut(conn)
    assert 0.7 < took < 1.3, took
    assert "read_deadline 0.8 s" in why


def test_a_silent_client_gets_the_timeouts_own_error(pair: tuple[socket.socket, socket.socket]) -> None:
    conn = as_connection(pair[0], rules(min_rate=100, deadline=5), timeout=0.3)
    buffer = bytearray(10)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="timed out"):
        conn.recv_into(buffer)
    assert 0.25 < time.monotonic() - start < 0.8


def test_the_rules_cost_nothing_while_no_read_waits(pair: tuple[socket.socket, socket.socket]) -> None:
    conn = as_connection(pair[0], rules(min_rate=100, deadline=5), timeout=0.3)
    pair[1].sendall(b"all at once")
    time.sleep(0.05)
    assert conn.recv(100) == b"all at once"
    assert conn not in connections._PROGRESS  # no wait, no record


# -- deferred accept -----------------------------------------------------------------------


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A loopback TCP connection: (the accepted end, the client's end); tcp_info needs TCP."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        accepted, _ = listener.accept()
    with accepted, client:
        yield accepted, client


def test_a_deferred_connection_that_never_spoke_is_cut_when_a_read_would_wait(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    conn = as_connection(tcp_pair[0], rules(deferred=True), timeout=5)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="defer_accept"):
        conn.recv_into(bytearray(10))
    assert time.monotonic() - start < 0.5  # not the 5 s timeout


def test_a_deferred_connection_that_sent_is_waited_for_normally(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    conn = as_connection(tcp_pair[0], rules(deferred=True), timeout=0.3)
    tcp_pair[1].sendall(b"GET /")
    assert conn.recv(100) == b"GET /"
    with pytest.raises(TimeoutError, match="timed out"):  # the rest: the timeout's own wait
        conn.recv(100)


def test_data_arriving_just_after_the_first_wait_is_not_cut(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    """The kernel queues a deferred connection a moment before the data that made it
    acceptable: the first wait gives it DEFER_RACE_GRACE."""
    conn = as_connection(tcp_pair[0], rules(deferred=True), timeout=5)
    timer = threading.Timer(connections.DEFER_RACE_GRACE / 4, tcp_pair[1].sendall, (b"late",))
    timer.start()
    assert conn.recv(100) == b"late"
    timer.join()


def test_a_server_that_speaks_first_is_waited_for_normally(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    conn = as_connection(tcp_pair[0], rules(deferred=True), timeout=0.3)
    conn.sendall(b"220 hello\r\n")  # a greeting: in flight or acknowledged, it counts
    with pytest.raises(TimeoutError, match="timed out"):
        conn.recv(100)


def test_without_deferred_accept_a_silent_connection_waits_the_timeout(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    conn = as_connection(tcp_pair[0], rules(min_rate=500), timeout=0.3)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="timed out"):
        conn.recv(100)
    assert time.monotonic() - start >= 0.25


def test_auto_defers_http_servers_only() -> None:
    with PreforkHTTPServer(("127.0.0.1", 0), HelloHTTPHandler, socket_timeout=7) as http:
        assert defer_seconds(http) == 7
        http.defer_accept = 0
        assert defer_seconds(http) == 0
    with PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler) as tcp:  # may greet: never by default
        assert defer_seconds(tcp) == 0
        tcp.defer_accept = 3
        assert defer_seconds(tcp) == 3


def test_a_connection_handed_over_when_the_defer_period_ran_out_is_cut_without_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The kernel hands a silent connection over once the defer period (1 s here) runs out,
    after retransmitting its SYN-ACK: that is enough to know it idle, with no grace wait (made
    2 s here, so that waiting it would show)."""
    monkeypatch.setattr(connections, "DEFER_RACE_GRACE", 2.0)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)
        listener.settimeout(10)
        with socket.create_connection(listener.getsockname(), timeout=5) as client:
            accepted, _ = listener.accept()  # after about 1 s: nothing was sent
            with accepted:
                conn = as_connection(accepted, rules(deferred=True), timeout=5)
                start = time.monotonic()
                with pytest.raises(TimeoutError, match="defer_accept"):
                    conn.recv(100)
                assert time.monotonic() - start < 0.5
            assert client.recv(100) == b""
