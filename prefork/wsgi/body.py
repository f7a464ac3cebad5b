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
    from prefork.wsgi.response import Response

#: The interim response to ``Expect: 100-continue``.
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: The most body bytes the server reads and drops after a response so a keep-alive
#: connection can go on (what the application did not read); more closes the connection.
DRAIN_LIMIT = 1 << 20


class Input:
    """The body of ``request`` on ``sock``, read through ``reader``; ``response``: the
    response to the same request (no ``100 Continue`` once its head is out: the client sends
    the body when its wait for the interim response ends). Reads of an unbounded size
    (``read()``, ``readline()`` without a size) take the whole body, or line, into memory, as
    with any WSGI server: the application bounds what it reads."""

    __slots__ = ("_buffer", "_reader", "_request", "_response", "_sock", "consumed", "continued")

    def __init__(
        self, reader: RequestReader, request: Request, sock: socket.socket, response: Response
    ) -> None:
        self._reader = reader
        self._request = request
        self._sock = sock
        self._response = response
        self._buffer = b""
        #: ``100 Continue`` was sent (or was not asked for, or can no longer be).
        self.continued = not request.expects_continue
        #: Body bytes taken from the reader so far.
        self.consumed = 0

    def _more(self) -> bytes:
        """The next bytes of the body (b"" at its end)."""
        if not self.continued:
            self.continued = True
            if not (self._request.complete or self._request.body or self._response.head_sent):
                self._sock.sendall(CONTINUE)
        chunk = self._reader.read_body(self._request)
        self.consumed += len(chunk)
        return chunk

    def can_finish(self) -> bool:
        """Whether the connection can go on after the response: what is left of the body
        can be read and dropped (the client was told to send it, and a ``Content-Length``
        leaves at most :data:`DRAIN_LIMIT` bytes). Of a chunked body, whose rest is of
        unknown size, what has arrived is read ahead (kept for the application, at most
        :data:`DRAIN_LIMIT` bytes more): True only when that is its end."""
        request = self._request
        if request.complete or (not request.body and request.content_length == self.consumed):
            return True
        if not self.continued:
            return False  # the client waits for 100 Continue
        if request.chunked:  # its rest is of unknown size: what has arrived of it is read
            return self._reader.read_ahead(request, self.consumed + DRAIN_LIMIT)
        length = request.content_length
        return length is None or length - self.consumed <= DRAIN_LIMIT

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes of the body (all that is left when ``size`` is None or
        negative); b"" at its end."""
        want = -1 if size is None or size < 0 else size
        parts = [self._buffer]
        have = len(self._buffer)
        while want < 0 or have < want:
            chunk = self._more()
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        if want < 0:
            self._buffer = b""
            return data
        self._buffer = data[want:]
        return data[:want]

    def readline(self, size: int | None = -1) -> bytes:
        """The next line of the body, with its ``\\n``, of at most ``size`` bytes when given;
        b"" at its end."""
        limit = -1 if size is None or size < 0 else size
        parts = [self._buffer]
        have = len(self._buffer)
        found = self._buffer.find(b"\n")
        while found < 0 and (limit < 0 or have < limit):
            chunk = self._more()
            if not chunk:
                break
            newline = chunk.find(b"\n")
            if newline >= 0:
                found = have + newline
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts) if len(parts) > 1 else parts[0]
        end = found + 1 if found >= 0 else len(data)
        if 0 <= limit < end:
            end = limit
        self._buffer = data[end:]
        return data[:end]

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
