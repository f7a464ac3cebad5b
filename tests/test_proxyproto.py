"""The PROXY protocol's parsers (prefork.proxyproto), on valid, malformed and truncated
headers; and read_header on a socket pair: it reads the header and not a byte more."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from prefork.proxyproto import V2_SIGNATURE, ProxyHeaderError, parse_v1, parse_v2, read_header


def v2(command: int, family: int, addresses: bytes, tlvs: bytes = b"") -> bytes:
    body = addresses + tlvs
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family, len(body)) + body


V2_TCP4 = v2(
    1, 0x11, socket.inet_aton("192.0.2.7") + socket.inet_aton("10.0.0.1") + struct.pack("!HH", 4242, 443)
)
V2_TCP6 = v2(
    1,
    0x21,
    socket.inet_pton(socket.AF_INET6, "2001:db8::7")
    + socket.inet_pton(socket.AF_INET6, "::1")
    + struct.pack("!HH", 1, 2),
)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"PROXY TCP4 192.0.2.7 10.0.0.1 4242 443\r\n", ("192.0.2.7", 4242)),
        (b"PROXY TCP6 2001:db8::7 ::1 65535 443\r\n", ("2001:db8::7", 65535)),
        (b"PROXY UNKNOWN\r\n", None),
        (b"PROXY UNKNOWN ff:: ff:: 1 2\r\n", None),
    ],
)
def test_v1_headers(line: bytes, expected: tuple[str, int] | None) -> None:
    assert parse_v1(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.0.2.7 10.0.0.1 4242 443\n",  # no CR
        b"PROXY TCP4 192.0.2.7 10.0.0.1 4242\r\n",  # a field missing
        b"PROXY TCP4 192.0.2.300 10.0.0.1 4242 443\r\n",
        b"PROXY TCP4 2001:db8::7 10.0.0.1 4242 443\r\n",  # an IPv6 address as TCP4
        b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 443\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 0042 443\r\n",  # leading zeros
        b"PROXY TCP4 192.0.2.7 10.0.0.1 -1 443\r\n",
        b"PROXY UDP4 192.0.2.7 10.0.0.1 1 2\r\n",
        b"PROXY TCP4  192.0.2.7 10.0.0.1 1 2\r\n",  # two spaces
        b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2" + b" " * 80 + b"\r\n",  # over 107 bytes
        b"GET / HTTP/1.1\r\n",
        b"PROXY TCP4 \xff\xfe 10.0.0.1 1 2\r\n",
    ],
)
def test_malformed_v1_headers(line: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_v1(line)


def test_v2_headers() -> None:
    assert parse_v2(V2_TCP4) == ("192.0.2.7", 4242)
    assert parse_v2(V2_TCP6) == ("2001:db8::7", 1)
    tlv = b"\x04\x00\x03abc"  # a TLV (NOOP, 3 bytes), skipped
    addresses = socket.inet_aton("192.0.2.8") + socket.inet_aton("10.0.0.1") + struct.pack("!HH", 7, 8)
    assert parse_v2(v2(1, 0x11, addresses, tlv)) == ("192.0.2.8", 7)
    assert parse_v2(v2(0, 0x00, b"")) is None  # LOCAL: a health check of the balancer's
    assert parse_v2(v2(1, 0x00, b"")) is None  # UNSPEC
    assert parse_v2(v2(1, 0x31, b"\0" * 216)) is None  # a Unix socket's: no IP address


@pytest.mark.parametrize(
    "header",
    [
        V2_TCP4[:15],  # truncated in the fixed part
        V2_TCP4[:-1],  # shorter than its length says
        V2_TCP4 + b"x",  # longer
        b"\r\n\r\n\x00\r\nQUIX\n" + V2_TCP4[12:],  # a bad signature
        V2_TCP4[:12] + b"\x11" + V2_TCP4[13:],  # version 1 in a v2 header
        V2_TCP4[:12] + b"\x22" + V2_TCP4[13:],  # an unknown command
        v2(1, 0x11, b"\0" * 4),  # too short for its addresses
    ],
)
def test_malformed_v2_headers(header: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_v2(header)


@pytest.mark.parametrize("version", ["v1", "v2", "auto"])
def test_read_header_takes_the_header_and_leaves_the_data(version: str) -> None:
    header = V2_TCP4 if version == "v2" else b"PROXY TCP4 192.0.2.7 10.0.0.1 4242 443\r\n"
    server, client = socket.socketpair()
    with server, client:
        client.sendall(header + b"hello\n")
        assert read_header(server, version, time.monotonic() + 2) == ("192.0.2.7", 4242)
        assert server.recv(100) == b"hello\n"


@pytest.mark.parametrize(
    ("version", "data"),
    [
        ("v1", V2_TCP4),  # the other version
        ("v2", b"PROXY TCP4 192.0.2.7 10.0.0.1 4242 443\r\n"),
        ("auto", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),  # no header at all
        ("v1", b"PROXY TCP4 192.0.2.7 10.0.0.1 4242 443" + b"0" * 100),  # no CRLF in 107 bytes
    ],
)
def test_read_header_refuses_what_is_not_a_header(version: str, data: bytes) -> None:
    server, client = socket.socketpair()
    with server, client:
        client.sendall(data)
        with pytest.raises(ProxyHeaderError):
            read_header(server, version, time.monotonic() + 2)


def test_read_header_of_a_silent_or_closing_peer() -> None:
    server, client = socket.socketpair()
    with server, client:
        client.sendall(b"PROXY TCP4 192.0.2.7")  # then nothing more
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            read_header(server, "auto", time.monotonic() + 0.3)
        assert time.monotonic() - started < 1.5
        client.close()
        with pytest.raises(ProxyHeaderError):
            read_header(server, "auto", time.monotonic() + 1)
