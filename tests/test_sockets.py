"""Parsing ``--bind`` values and describing bound sockets."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from prefork import (
    PreforkHTTPServer,
    PreforkMixIn,
    PreforkTCPServer,
    PreforkUDPServer,
    PreforkUnixStreamServer,
    connections,
)
from prefork.connections import RequestSocket
from prefork.sockets import Address, describe, parse_address
from tests.conftest import address
from tests.handlers import HelloHTTPHandler, PidDatagramHandler, PidEchoHandler


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8000", Address(socket.AF_INET, ("127.0.0.1", 8000))),
        ("localhost:0", Address(socket.AF_INET, ("localhost", 0))),
        (":8000", Address(socket.AF_INET, ("", 8000))),
        ("[::1]:9000", Address(socket.AF_INET6, ("::1", 9000))),
        ("unix:/run/app.sock", Address(socket.AF_UNIX, "/run/app.sock")),
        ("tcp://127.0.0.1:1", Address(socket.AF_INET, ("127.0.0.1", 1))),
        ("udp://127.0.0.1:53", Address(socket.AF_INET, ("127.0.0.1", 53), datagram=True)),
        ("udp://[::1]:53", Address(socket.AF_INET6, ("::1", 53), datagram=True)),
        ("udp://unix:/tmp/d.sock", Address(socket.AF_UNIX, "/tmp/d.sock", datagram=True)),
    ],
)
def test_parse_address(text: str, expected: Address) -> None:
    assert parse_address(text) == expected


def test_datagram_flag_applies_to_every_form() -> None:
    assert parse_address("127.0.0.1:5", datagram=True).datagram
    assert parse_address("unix:/x", datagram=True).datagram


@pytest.mark.parametrize(
    "text", ["", "8000", "host", "host:port", "1.2.3.4:70000", "[::1]", "http://x:1", "unix:"]
)
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bad address"):
        parse_address(text)


def test_describe_an_xmlrpc_server_as_http() -> None:
    import xmlrpc.server

    class RPC(PreforkMixIn, xmlrpc.server.SimpleXMLRPCServer):
        pass

    with RPC(("127.0.0.1", 0), logRequests=False) as server:
        assert describe(server) == f"http://127.0.0.1:{server.server_address[1]}"


def test_describe(unix_path: str) -> None:
    with PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler) as tcp:
        assert describe(tcp) == f"tcp://127.0.0.1:{tcp.server_address[1]}"
    with PreforkHTTPServer(("127.0.0.1", 0), HelloHTTPHandler) as http:
        assert describe(http) == f"http://127.0.0.1:{http.server_address[1]}"
    with PreforkUDPServer(("127.0.0.1", 0), PidDatagramHandler) as udp:
        assert describe(udp) == f"udp://127.0.0.1:{udp.server_address[1]}"
    with PreforkUnixStreamServer(unix_path, PidEchoHandler) as unix:
        assert describe(unix) == f"unix:{unix_path}"


# -- RequestSocket: recv and send without a poll() when they would not block ----------------------


Connection = tuple[RequestSocket, socket.socket]


@pytest.fixture(params=["tcp", "unix"])
def connection(
    request: pytest.FixtureRequest, unix_path: str
) -> Iterator[tuple[RequestSocket, socket.socket]]:
    """An accepted connection as PreforkMixIn.get_request() gives it (socket_timeout 0.3 s),
    over loopback TCP and over a Unix stream socket, and the client's end."""
    server: PreforkTCPServer | PreforkUnixStreamServer
    if request.param == "tcp":
        server = PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler, socket_timeout=0.3)
        client = socket.create_connection(address(server), timeout=5)
    else:
        server = PreforkUnixStreamServer(unix_path, PidEchoHandler, socket_timeout=0.3)
        client = socket.socket(socket.AF_UNIX)
        client.settimeout(5)
        client.connect(unix_path)
    with server, client:
        accepted, _ = server.get_request()
        assert type(accepted) is RequestSocket
        assert accepted.gettimeout() == 0.3
        with accepted:
            yield accepted, client


@pytest.fixture
def fast_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the os.read, os.readv and os.write calls prefork.connections makes from now on,
    in order: the RequestSocket tries these before socket.socket's own (polling) methods."""
    calls: list[str] = []

    class CountingOS:
        def __getattr__(self, name: str) -> Any:
            real = getattr(os, name)
            if name not in ("read", "readv", "write"):
                return real

            def counted(*args: Any) -> Any:
                calls.append(name)
                return real(*args)

            return counted

    monkeypatch.setattr(connections, "os", CountingOS())
    return calls


def received(sock: socket.socket) -> bytes:
    """Everything ``sock`` receives until the peer shuts down its side."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


class TimeoutEchoHandler(PidEchoHandler):
    timeout = 0.3  # StreamRequestHandler.setup() sets it on the connection


def test_without_socket_timeout_a_handler_timeout_gets_the_fast_path(fast_calls: list[str]) -> None:
    with PreforkTCPServer(("127.0.0.1", 0), TimeoutEchoHandler, socket_timeout=0) as server:
        with socket.create_connection(address(server), timeout=5) as client:
            accepted, _ = server.get_request()
            with accepted:
                assert type(accepted) is RequestSocket
                assert accepted.gettimeout() is None  # blocking, as accept() gave it
                accepted.settimeout(TimeoutEchoHandler.timeout)  # as the handler's setup() does
                client.sendall(b"ping")
                time.sleep(0.05)
                assert accepted.recv(100) == b"ping"
                with pytest.raises(TimeoutError):
                    accepted.recv(100)
    assert fast_calls == ["read", "read"]


def test_without_any_timeout_the_accepted_socket_stays_a_plain_socket() -> None:
    with PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler, socket_timeout=0) as server:
        with socket.create_connection(address(server), timeout=5):
            accepted, _ = server.get_request()
            with accepted:
                assert type(accepted) is socket.socket  # nothing to save: no Python layer
                assert accepted.gettimeout() is None


def test_ready_data_is_read_and_written_by_the_fast_path(
    connection: Connection, fast_calls: list[str]
) -> None:
    accepted, client = connection
    client.sendall(b"GET / HTTP/1.0\r\n\r\n")
    time.sleep(0.05)  # the bytes are in the accepted socket's receive buffer
    reader = accepted.makefile("rb")
    assert reader.readline() == b"GET / HTTP/1.0\r\n"
    assert reader.readline() == b"\r\n"
    client.sendall(b"more")
    time.sleep(0.05)
    assert accepted.recv(100) == b"more"
    accepted.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
    assert accepted.send(b"hello") == 5
    accepted.shutdown(socket.SHUT_WR)
    assert received(client) == b"HTTP/1.0 200 OK\r\n\r\nhello"
    assert fast_calls == ["readv", "read", "write", "write"]


@pytest.mark.parametrize("call", ["recv", "recv_into", "readline"])
def test_a_silent_peer_still_times_out_after_the_timeout(
    connection: Connection, fast_calls: list[str], call: str
) -> None:
    accepted, _ = connection
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        if call == "recv":
            accepted.recv(100)
        elif call == "recv_into":
            accepted.recv_into(bytearray(100))
        else:
            accepted.makefile("rb").readline()
    assert 0.25 <= time.monotonic() - start < 2
    assert fast_calls in (["read"], ["readv"])  # tried at once, then socket.socket's wait


def test_sendall_to_a_peer_that_does_not_read_times_out(
    connection: Connection,
) -> None:
    accepted, _ = connection
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        accepted.sendall(b"x" * (64 << 20))  # far more than the socket buffers hold
    assert 0.25 <= time.monotonic() - start < 2


@pytest.mark.parametrize("kind", ["bytes", "memoryview"])
def test_sendall_to_a_slow_reader_delivers_every_byte_in_order(
    connection: Connection, fast_calls: list[str], kind: str
) -> None:
    accepted, client = connection
    data = os.urandom(8 << 20)
    got: list[bytes] = []

    def read_slowly() -> None:
        while chunk := client.recv(1 << 16):
            got.append(chunk)
            time.sleep(0.0005)

    reader = threading.Thread(target=read_slowly)
    reader.start()
    accepted.sendall(data if kind == "bytes" else memoryview(data))
    accepted.shutdown(socket.SHUT_WR)
    reader.join(10)
    assert hashlib.sha256(b"".join(got)).digest() == hashlib.sha256(data).digest()
    assert fast_calls == ["write"]  # the rest was sent by socket.socket.sendall, waiting


def test_a_handler_changing_the_timeout_gets_socket_behaviour(
    connection: Connection, fast_calls: list[str]
) -> None:
    accepted, client = connection
    accepted.settimeout(0)  # non-blocking: no wait at all
    with pytest.raises(BlockingIOError):
        accepted.recv(100)
    accepted.settimeout(None)  # blocking, as StreamRequestHandler.timeout = None keeps it
    client.sendall(b"ping")
    assert accepted.recv(100) == b"ping"
    accepted.sendall(b"pong")
    assert client.recv(100) == b"pong"
    assert fast_calls == []
    copy = accepted.dup()
    with copy:
        assert type(copy) is RequestSocket and copy.gettimeout() is None
