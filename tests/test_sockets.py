"""Parsing ``--bind`` values and describing bound sockets."""

from __future__ import annotations

import socket

import pytest

from prefork import PreforkHTTPServer, PreforkTCPServer, PreforkUDPServer, PreforkUnixStreamServer
from prefork.sockets import Address, describe, parse_address
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


def test_describe(unix_path: str) -> None:
    with PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler) as tcp:
        assert describe(tcp) == f"tcp://127.0.0.1:{tcp.server_address[1]}"
    with PreforkHTTPServer(("127.0.0.1", 0), HelloHTTPHandler) as http:
        assert describe(http) == f"http://127.0.0.1:{http.server_address[1]}"
    with PreforkUDPServer(("127.0.0.1", 0), PidDatagramHandler) as udp:
        assert describe(udp) == f"udp://127.0.0.1:{udp.server_address[1]}"
    with PreforkUnixStreamServer(unix_path, PidEchoHandler) as unix:
        assert describe(unix) == f"unix:{unix_path}"
