"""Sending a WSGI application's response: ``start_response``, the head, the body's framing,
``wsgi.file_wrapper``.

- A response whose whole body is known (a list or tuple, what most applications return)
  goes out in one write, head and body, with a ``Content-Length`` computed when the
  application gave none: no Nagle or delayed-ACK stall, one system call.
- Anything else is streamed: each chunk the iterable yields is sent as it comes (the first
  with the head), with ``Transfer-Encoding: chunked`` on a keep-alive HTTP/1.1 connection
  and without a length (the connection then closes) otherwise. From a response's second write
  on, the connection has ``TCP_NODELAY`` so a small chunk is not held back waiting for the
  client's ACK of the last.
- A :class:`FileWrapper` of a regular file is sent with ``socket.sendfile`` (the kernel's
  ``sendfile``; over TLS, Python's fallback).
- The application's ``Content-Length`` is kept: a body longer is cut there, one shorter
  closes the connection. Hop-by-hop headers it sets (``Connection``, ``Transfer-Encoding``...)
  are the server's to send and are dropped (PEP 3333), save that ``Connection: close``
  closes the connection after the response. A header holding a line break is refused
  (response splitting): the application's error.
- ``HEAD``, 1xx, 204 and 304 responses carry no body.

Runs in the worker, in the thread serving the connection.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any
from wsgiref.handlers import format_date_time

#: Headers that concern one connection, the server's to send (RFC 9110 7.6.1).
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization"}
    | {"te", "trailer", "transfer-encoding", "upgrade"}
)

_date: list[Any] = [0, b""]
#: Whether a response header name is a token (RFC 9110 5.6.2).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+").fullmatch


def http_date() -> bytes:
    """The ``Date`` header line for now, formatted once a second."""
    now = int(time.time())
    if now != _date[0]:
        _date[1] = b"Date: " + format_date_time(now).encode("ascii") + b"\r\n"
        _date[0] = now
    value: bytes = _date[1]
    return value


class FileWrapper:
    """``wsgi.file_wrapper``: a file an application returns as its response, sent by the
    server with ``sendfile`` when it is a regular file (iterating it reads ``blksize``
    bytes at a time otherwise, as wsgiref's). Its ``close()`` closes the file."""

    def __init__(self, filelike: IO[bytes], blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while data := read(self.blksize):
            yield data


class Response:
    """The response to one request at a time on a connection ``sock``: :meth:`begin` for
    each request, then ``start_response`` (the application's), then :meth:`send_whole`,
    :meth:`send_file` or :meth:`send_chunk` and :meth:`finish`. ``keep_alive`` says after
    :meth:`finish` whether the connection may serve another request."""

    __slots__ = (
        "_nodelay",
        "_writes",
        "can_finish",
        "chunked",
        "code",
        "head_only",
        "head_sent",
        "headers",
        "http11",
        "keep_alive",
        "remaining",
        "sent",
        "sock",
        "status",
    )

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._nodelay = False  # TCP_NODELAY set (at a response's second write)
        self.begin(False, False, True)

    def begin(
        self, keep_alive: bool, head_only: bool, http11: bool, can_finish: Callable[[], bool] | None = None
    ) -> None:
        """Prepare for the next request: ``keep_alive`` (the connection may go on after it),
        ``head_only`` (a HEAD request: no body), ``http11`` (the client speaks HTTP/1.1);
        ``can_finish``: asked when the head is made, whether the request's body can be done
        with after the response (else the head says ``Connection: close``)."""
        self.keep_alive = keep_alive
        self.can_finish = can_finish
        self.head_only = head_only
        self.http11 = http11
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.head_sent = False
        self.chunked = False
        self.remaining = -1  # body bytes the application's Content-Length allows; -1: none given
        self.sent = 0  # body bytes sent (the access log's size)
        self.code = 0  # the status sent (the access log's), once the head is made
        self._writes = 0

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        """PEP 3333's ``start_response``: keep ``status`` (``"200 OK"``) and ``headers``
        (a list of (name, value) strings) for the head, sent with the first body bytes.
        With ``exc_info`` (after an error), replace them, or re-raise the error when the head
        is already out. Returns the ``write`` callable. Raises AssertionError when called a
        second time without ``exc_info``, TypeError for a status or headers not of strings."""
        if exc_info:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response() called again without exc_info")
        if type(status) is not str or type(headers) is not list:
            raise TypeError("start_response() takes a status str and a list of headers")
        self.status = status
        self.headers = headers
        return self.write

    def write(self, data: bytes) -> None:
        """PEP 3333's ``write`` callable (for legacy applications): send ``data`` now."""
        if data:
            self.send_chunk(data)

    # -- the head ---------------------------------------------------------------------------

    def head(self, length: int | None) -> bytes:
        """The status line and headers, as bytes; ``length``: the body's size when known
        (a Content-Length is added if the application gave none). Sets the body's framing.
        Raises AssertionError when start_response was not called, ValueError for a bad
        status or a header with a line break or outside ISO-8859-1."""
        status = self.status
        if status is None:
            raise AssertionError("the application returned before calling start_response()")
        code = int(status[:3]) if status[:3].isdigit() and status[3:4] == " " else 0
        if code < 200:  # 1xx are the server's (100 Continue); WSGI has no upgrade
            raise ValueError(f"bad status {status!r}")
        self.code = code
        lines = [f"HTTP/1.1 {status}\r\n"]
        date = http_date()
        token = _TOKEN
        for name, value in self.headers:
            if type(name) is not str or type(value) is not str or not token(name):
                raise ValueError(f"bad response header {name!r}: {value!r}")
            lowered = name.lower()
            if lowered in HOP_BY_HOP:
                if lowered == "connection" and "close" in value.lower():
                    self.keep_alive = False
                continue
            if lowered == "content-length":
                if self.remaining >= 0 or not (value.isascii() and value.isdigit()):
                    raise ValueError(f"bad or second Content-Length {value!r}")
                self.remaining = int(value)
            elif lowered == "date":
                date = b""  # the application's own
            lines.append(f"{name}: {value}\r\n")
        if self.keep_alive and self.can_finish is not None and not self.can_finish():
            self.keep_alive = False  # the request's body cannot be done with: say so now
        if code == 204 or code == 304:
            self.remaining = 0  # no body, whatever the headers say
        elif self.head_only:
            pass  # the body GET would have is unknown here: no length, no framing said
        elif self.remaining < 0:
            if length is not None:
                lines.append(f"Content-Length: {length}\r\n")
                self.remaining = length
            elif self.keep_alive and self.http11:
                lines.append("Transfer-Encoding: chunked\r\n")
                self.chunked = True
            else:
                self.keep_alive = False  # the body ends with the connection
        if not self.keep_alive:
            lines.append("Connection: close\r\n")
        elif not self.http11:
            lines.append("Connection: keep-alive\r\n")
        text = "".join(lines)
        if text.count("\n") != len(lines) or text.count("\r") != len(lines):
            raise ValueError("a response header holds a line break")
        return text.encode("latin-1") + date + b"\r\n"

    # -- the body ---------------------------------------------------------------------------

    def send_whole(self, body: bytes) -> None:
        """Send the head and all of ``body`` in one write (the head only for HEAD)."""
        data = head = self.head(len(body))
        self.head_sent = True
        if not self.head_only:
            remaining = self.remaining
            if remaining != len(body):
                body = body[:remaining]
                if remaining > len(body):
                    self.keep_alive = False  # shorter than its Content-Length says
            data += body
        self.sock.sendall(data)
        self.sent = len(data) - len(head) if not self.head_only else 0

    def send_chunk(self, data: bytes) -> None:
        """Send ``data``, the next part of a streamed body (with the head, the first time)."""
        if type(data) is not bytes:
            raise TypeError(f"the application yielded {type(data).__name__}, not bytes")
        out = b""
        if not self.head_sent:
            out = self.head(None)
            self.head_sent = True
        size = 0
        if self.head_only:
            data = b""
        elif self.chunked:
            size = len(data)
            data = b"%x\r\n%b\r\n" % (size, data) if data else b""
        else:
            if self.remaining >= 0:
                data = data[: self.remaining]
                self.remaining -= len(data)
            size = len(data)
        if out or data:
            self._send(out + data if out else data)
            self.sent += size

    def send_file(self, wrapper: FileWrapper) -> bool:
        """Send a file response with ``sendfile``; False (nothing sent) when ``wrapper``'s
        file is not a regular file with a descriptor and a position, so the caller iterates
        it instead."""
        file = wrapper.filelike
        try:
            fd = file.fileno()
            info = os.fstat(fd)
            offset = file.tell()
        except (AttributeError, OSError, ValueError):
            return False
        if not stat.S_ISREG(info.st_mode):
            return False
        size = max(info.st_size - offset, 0)
        head = self.head(size)  # sets remaining: the application's length, else size
        self.head_sent = True
        count = min(size, self.remaining)
        if self.head_only or count == 0:
            self.sock.sendall(head)
        else:
            self._send(head)
            self._send_nodelay()
            sent = self.sock.sendfile(file, offset, count)
            self.remaining -= sent
            self.sent = sent
            if self.remaining > 0:  # short of its Content-Length (the file shrank): close
                self.keep_alive = False
        return True

    def send_iterable(self, body: Iterable[bytes]) -> None:
        """Send each part of ``body`` as it comes, then end the response."""
        for data in body:
            if data:
                self.send_chunk(data)
        self.finish()

    def finish(self) -> None:
        """End the response: the head if nothing was sent yet (an empty body), the last
        chunk of a chunked one; a body short of its Content-Length closes the connection."""
        if not self.head_sent:
            self.sock.sendall(self.head(0))
            self.head_sent = True
        elif self.chunked and not self.head_only:
            self._send(b"0\r\n\r\n")
        elif self.remaining > 0 and not self.head_only:
            self.keep_alive = False

    def _send(self, data: bytes) -> None:
        self._writes += 1
        if self._writes == 2:
            self._send_nodelay()
        self.sock.sendall(data)

    def _send_nodelay(self) -> None:
        """Set TCP_NODELAY (once per connection): a response of several writes."""
        if not self._nodelay:
            self._nodelay = True
            try:
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # a Unix socket: no Nagle there


def body_of(result: Iterable[bytes]) -> bytes | None:
    """The whole body of an application's ``result`` when it is a list or tuple of bytes
    (joined), None when it must be iterated."""
    kind = type(result)
    if kind is list or kind is tuple:
        parts: Any = result
        if len(parts) == 1 and type(parts[0]) is bytes:
            return bytes(parts[0])
        if all(type(part) is bytes for part in parts):
            return b"".join(parts)
    return None
