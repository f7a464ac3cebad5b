"""The protocols ``prefork bench`` speaks: what a request is, when a reply is whole and good,
and how a socket error is counted.

- ``line``: send PAYLOAD and a newline, half-close unless ``keepalive``, read one line.
- ``http``: an HTTP/1.1 GET of the path PAYLOAD; good when the status is below 400.
- ``raw``: send PAYLOAD, half-close, read until EOF (never ``keepalive``).
- ``udp``: one datagram, one datagram back (Unix datagram sockets too).

Errors are counted by kind: ``refused``, ``reset``, ``timeout``, ``bad reply`` (EOF before a
whole reply, an HTTP status >= 400, a reply without the ``expect`` bytes), and ``other: ERRNO``.
Pure functions of bytes and flags: the load generator (:mod:`prefork.bench.loadgen`) owns the
sockets.
"""

from __future__ import annotations

import errno

PROTOCOLS = ("line", "http", "raw", "udp")
#: Error kinds, in the order reports list them.
ERROR_KINDS = ("refused", "reset", "timeout", "bad reply")


def request_bytes(protocol: str, payload: bytes, *, keepalive: bool, host: str) -> bytes:
    """The bytes of one request of ``protocol`` (one of :data:`PROTOCOLS`).

    ``payload``: the line to send (``line``, a newline added unless there), the path to GET
    (``http``; empty means ``/``), or the bytes as they are (``raw``, ``udp``). ``keepalive``:
    whether an HTTP request asks to keep the connection. ``host``: the HTTP Host header.
    Raises nothing.
    """
    if protocol == "http":
        path = payload.decode("latin-1") or "/"
        close = "" if keepalive else "Connection: close\r\n"
        message = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: prefork-bench\r\n{close}\r\n"
        return message.encode("latin-1")
    if protocol == "line":
        return payload.rstrip(b"\n") + b"\n"
    return payload


def half_closes(protocol: str, keepalive: bool) -> bool:
    """Whether a request of ``protocol`` is followed by a half-close (``SHUT_WR``).

    A request per connection says so with a half-close once it is sent, as ``nc -N`` does, so
    a server reading until EOF (socketserver's line handlers) ends at once: always for ``raw``,
    for ``line`` unless ``keepalive``. Raises nothing.
    """
    return protocol == "raw" or (protocol == "line" and not keepalive)


def judge_reply(
    protocol: str, inbox: bytearray, eof: bool, *, keepalive: bool, expect: bytes | None
) -> tuple[bool, bool, bool]:
    """(complete, good, reusable) for the reply of ``protocol`` read so far.

    ``inbox``: the bytes received for this request; ``eof``: the server closed its side (never
    for ``udp``); ``keepalive``: whether connections may be reused at all; ``expect``: bytes a
    good reply contains (None: any whole reply). ``complete`` is true once no more bytes are
    awaited, ``good`` only for a whole and acceptable reply, ``reusable`` when the connection
    may carry the next request. A malformed reply is complete and not good; raises ValueError
    only for an HTTP ``Content-Length`` that is not a number.
    """
    if protocol == "http":
        complete, good, reusable = _http_reply(inbox, eof)
        reusable = reusable and keepalive
    elif protocol == "line":
        complete = b"\n" in inbox or eof
        good = inbox.endswith(b"\n") and inbox.count(b"\n") == 1
        reusable = keepalive
    elif protocol == "udp":
        complete, good, reusable = True, True, True
    else:  # raw: the reply runs until EOF
        complete = eof
        good = bool(inbox)
        reusable = False
    if complete and good and expect is not None:
        good = expect in inbox
    return complete, good, reusable


def head_ends(protocol: str, inbox: bytearray, searched: int) -> bool:
    """Whether the end of a reply's head of ``protocol`` is in ``inbox``, its first
    ``searched`` bytes known not to hold it: the newline of a ``line`` reply, the blank line
    after an HTTP response's head; a ``udp`` reply is whole at once, a ``raw`` one only at
    EOF (never). Only the bytes from ``searched`` on (and the 3 before, for a blank line cut
    in two) are searched, so a reply read in many pieces is not searched again and again.
    Raises nothing."""
    if protocol == "line":
        return inbox.find(b"\n", searched) >= 0
    if protocol == "http":
        return inbox.find(b"\r\n\r\n", max(0, searched - 3)) >= 0
    return protocol == "udp"


def error_kind(err: int) -> str:
    """The kind an ``errno`` value ``err`` is counted as: ``refused``, ``reset``, ``timeout``,
    or ``other: NAME`` (``other: N`` for an unknown number). Raises nothing."""
    if err in (errno.ECONNREFUSED, errno.ENOENT, errno.EAGAIN):  # EAGAIN: a full Unix backlog
        return "refused"
    if err in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ENOTCONN):  # ENOTCONN: reset already
        return "reset"
    if err == errno.ETIMEDOUT:
        return "timeout"
    return "other: " + errno.errorcode.get(err, str(err))


def _http_reply(data: bytearray, eof: bool) -> tuple[bool, bool, bool]:
    """(complete, good, reusable) for the HTTP response read so far."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return eof, False, False
    head = bytes(data[:end]).decode("latin-1").split("\r\n")
    parts = head[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return True, False, False
    status = int(parts[1])
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    body = len(data) - end - 4
    if "content-length" in headers:
        complete = body >= int(headers["content-length"] or 0)
    elif "chunked" in headers.get("transfer-encoding", ""):
        complete = data.endswith(b"0\r\n\r\n")
    else:
        complete = eof  # the body runs until the server closes
    connection = headers.get("connection", "")
    reusable = ("close" not in connection and (parts[0] != "HTTP/1.0" or "keep-alive" in connection)) and (
        "content-length" in headers or "chunked" in headers.get("transfer-encoding", "")
    )
    return complete or eof, complete and status < 400, reusable
