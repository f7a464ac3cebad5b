"""``wsgi.input``: the body of one request, read from the connection as the application asks
for it (PEP 3333's input stream: ``read``, ``readline``, ``readlines``, iteration).

The body comes from :class:`~prefork.wsgi.reader.RequestReader`, already decoded from
``chunked``, and ends where the request says (``Content-Length``, the last chunk): a read past
it returns ``b""``, never the next request (``wsgi.input_terminated`` is true, as gunicorn's
and uWSGI's). With ``Expect: 100-continue`` the interim ``100 Continue`` goes out at the first
read, so an application that refuses the request without reading it never receives its body.
Runs in the worker, in the thread serving the connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket

    from prefork.wsgi.reader import Request, RequestReader

#: The interim response to ``Expect: 100-continue``.
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Input:
    """The body of ``request`` on ``sock``, read through ``reader``. Reads of an unbounded
    size (``read()``, ``readline()`` without a size) take the whole body, or line, into
    memory, as with any WSGI server: the application bounds what it reads."""

    __slots__ = ("_buffer", "_reader", "_request", "_sock", "continued")

    def __init__(self, reader: RequestReader, request: Request, sock: socket.socket) -> None:
        self._reader = reader
        self._request = request
        self._sock = sock
        self._buffer = b""
        #: ``100 Continue`` was sent (or was not asked for).
        self.continued = not request.expects_continue

    def _more(self) -> bytes:
        """The next bytes of the body (b"" at its end)."""
        if not self.continued:
            self.continued = True
            if not self._request.complete and not self._request.body:
                self._sock.sendall(CONTINUE)
        return self._reader.read_body(self._request)

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes of the body (all that is left when ``size`` is None or
        negative); b"" at its end."""
        buffer = self._buffer
        if size is None or size < 0:
            parts = [buffer]
            while chunk := self._more():
                parts.append(chunk)
            self._buffer = b""
            return b"".join(parts)
        while len(buffer) < size:
            chunk = self._more()
            if not chunk:
                break
            buffer += chunk
        self._buffer = buffer[size:]
        return buffer[:size]

    def readline(self, size: int | None = -1) -> bytes:
        """The next line of the body, with its ``\\n``, of at most ``size`` bytes when given;
        b"" at its end."""
        buffer = self._buffer
        limit = -1 if size is None or size < 0 else size
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end >= 0:
                end += 1
                break
            if 0 <= limit <= len(buffer):
                end = limit
                break
            start = len(buffer)
            chunk = self._more()
            if not chunk:
                end = len(buffer)
                break
            buffer += chunk
        if 0 <= limit < end:
            end = limit
        self._buffer = buffer[end:]
        return buffer[:end]

    def readlines(self, hint: int = -1) -> list[bytes]:
        """The body's lines, as ``readline`` reads them; with ``hint`` > 0, stop once the
        lines read total ``hint`` bytes or more."""
        lines, total = [], 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line
