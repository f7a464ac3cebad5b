"""The PROXY protocol (HAProxy's, versions 1 and 2): the header a load balancer sends first on
each connection, naming the client it accepted.

:func:`parse_v1` and :func:`parse_v2` are pure (bytes in, the client's address out);
:func:`read_header` reads one header from an accepted socket, no byte more than the header
(the application's data that follows stays in the socket), within a deadline. The spec
(haproxy.org/download/2.9/doc/proxy-protocol.txt) bounds a v1 header to 107 bytes, CRLF
included; a v2 header is 16 bytes and the length they give (TLVs are skipped). A ``LOCAL``
header (v2, a health check of the balancer's own) and ``PROXY UNKNOWN`` (v1) keep the
connection's own address. No well-kept library parses it for a blocking socket (the ones on
PyPI are asyncio protocols), so these 150 lines are ours.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import struct
import time
from typing import Any

#: The most bytes of a v1 header, CRLF included (the spec's 107).
V1_MAX = 107
#: The first 12 bytes of every v2 header.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_HEADER = struct.Struct("!12sBBH")  # signature, version and command, family, length
#: poll()'s "the peer closed its end" (Linux): tells a closed peer from one that is slow.
_RDHUP = getattr(select, "POLLRDHUP", 0)
_V2_ADDRESSES = {0x11: ("!4s4sHH", 4), 0x12: ("!4s4sHH", 4), 0x21: ("!16s16sHH", 16), 0x22: ("!16s16sHH", 16)}


class ProxyHeaderError(ValueError):
    """A PROXY header that is missing, malformed or truncated; the message says which."""


def parse_v1(line: bytes) -> tuple[str, int] | None:
    """The client address of the v1 header ``line`` (CRLF included), or None for ``PROXY
    UNKNOWN`` (keep the connection's address). Raises ProxyHeaderError."""
    if len(line) > V1_MAX or not line.endswith(b"\r\n"):
        raise ProxyHeaderError("a PROXY v1 header longer than 107 bytes, or without its CRLF")
    parts = line[:-2].split(b" ")
    if parts[:1] != [b"PROXY"] or len(parts) < 2:
        raise ProxyHeaderError("not a PROXY v1 header")
    if parts[1] == b"UNKNOWN":
        return None
    if parts[1] not in (b"TCP4", b"TCP6") or len(parts) != 6:
        raise ProxyHeaderError("a PROXY v1 header with a bad protocol or field count")
    try:
        source = ipaddress.ip_address(parts[2].decode("ascii"))
        ipaddress.ip_address(parts[3].decode("ascii"))
        ports = [_port(part) for part in parts[4:6]]
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError("a PROXY v1 header with a bad address or port") from None
    if source.version != (4 if parts[1] == b"TCP4" else 6):
        raise ProxyHeaderError("a PROXY v1 header whose address is not of its protocol")
    return str(source), ports[0]


def _port(text: bytes) -> int:
    if not text.isdigit() or (len(text) > 1 and text.startswith(b"0")) or int(text) > 65535:
        raise ValueError(text)
    return int(text)


def parse_v2(header: bytes) -> tuple[str, int] | None:
    """The client address of the whole v2 ``header`` (16 bytes and its length), or None for
    a ``LOCAL`` command or an unspecified or Unix family (keep the connection's address).
    Raises ProxyHeaderError."""
    if len(header) < _V2_HEADER.size:
        raise ProxyHeaderError("a truncated PROXY v2 header")
    signature, version_command, family, length = _V2_HEADER.unpack_from(header)
    if signature != V2_SIGNATURE or version_command >> 4 != 2:
        raise ProxyHeaderError("not a PROXY v2 header")
    if len(header) != _V2_HEADER.size + length:
        raise ProxyHeaderError("a PROXY v2 header of the wrong length")
    command = version_command & 0x0F
    if command == 0:  # LOCAL: the balancer's own connection (a health check)
        return None
    if command != 1:
        raise ProxyHeaderError("a PROXY v2 header with an unknown command")
    if family not in _V2_ADDRESSES:  # UNSPEC, or a Unix socket's: no IP address to take
        return None
    layout, size = _V2_ADDRESSES[family]
    if length < struct.calcsize(layout):
        raise ProxyHeaderError("a PROXY v2 header too short for its addresses")
    source, _, port, _ = struct.unpack_from(layout, header, _V2_HEADER.size)
    family_of = socket.AF_INET if size == 4 else socket.AF_INET6
    return socket.inet_ntop(family_of, source), int(port)


def read_header(sock: socket.socket, version: str, deadline: float) -> tuple[str, int] | None:
    """Read the PROXY header at the start of ``sock`` (``version``: ``v1``, ``v2`` or
    ``auto``) and return the client address it names (None: keep the connection's), reading
    nothing beyond it, by ``deadline`` (``time.monotonic()`` seconds). Raises
    ProxyHeaderError for a missing or malformed header, TimeoutError past the deadline,
    OSError when the connection fails. Runs in the worker."""
    start = _peek(sock, 16, deadline, enough=lambda data: _decided(data))
    if start.startswith(V2_SIGNATURE[: len(start)]) and len(start) >= 12 and version in ("v2", "auto"):
        (length,) = struct.unpack_from("!H", start, 14)
        return parse_v2(_recv_exactly(sock, 16 + length, deadline))
    if start.startswith(b"PROXY ") and version in ("v1", "auto"):
        line = _peek(sock, V1_MAX, deadline, enough=lambda data: b"\r\n" in data)
        end = line.find(b"\r\n")
        if end < 0:
            raise ProxyHeaderError("a PROXY v1 header longer than 107 bytes, or without its CRLF")
        return parse_v1(_recv_exactly(sock, end + 2, deadline))
    raise ProxyHeaderError(f"no PROXY {version if version != 'auto' else 'v1 or v2'} header")


def _decided(data: bytes) -> bool:
    """Whether the first bytes ``data`` tell a v1 header, a v2 header or neither."""
    if len(data) >= 16 or not data:
        return bool(data)
    could_be = V2_SIGNATURE.startswith(data[:12]) or b"PROXY ".startswith(data[:6])
    return not could_be or data.startswith(b"PROXY ")


def _wait(sock: socket.socket, deadline: float) -> int:
    """Wait until ``sock`` is readable; its poll events. Raises TimeoutError at ``deadline``."""
    left = deadline - time.monotonic()
    poller = select.poll()
    poller.register(sock, select.POLLIN | _RDHUP)
    ready = poller.poll(left * 1000) if left > 0 else []
    if not ready:
        raise TimeoutError("no complete PROXY header in time")
    return int(ready[0][1])


def _peek(sock: socket.socket, size: int, deadline: float, enough: Any) -> bytes:
    """Up to ``size`` bytes at the start of ``sock``, left in it, once ``enough(data)`` or
    ``size`` are there. While a part waits for the rest, the socket stays readable: the
    next look comes after a pause doubling from 1 ms to 50 ms. Raises ProxyHeaderError when
    the peer closes first."""
    seen, pause = -1, 0.001
    while True:
        events = _wait(sock, deadline)
        try:
            data = sock.recv(size, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
        if not data:
            raise ProxyHeaderError("the connection closed before its PROXY header")
        if len(data) >= size or enough(data):
            return data
        if len(data) == seen:
            if events & _RDHUP:
                raise ProxyHeaderError("the connection closed within its PROXY header")
            time.sleep(pause)
            pause = min(2 * pause, 0.05)
        seen = len(data)


def _recv_exactly(sock: socket.socket, size: int, deadline: float) -> bytes:
    """Exactly ``size`` bytes from ``sock``. Raises ProxyHeaderError when it closes first."""
    data = b""
    while len(data) < size:
        _wait(sock, deadline)
        try:
            chunk = sock.recv(size - len(data), socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
        if not chunk:
            raise ProxyHeaderError("a truncated PROXY header")
        data += chunk
    return data
