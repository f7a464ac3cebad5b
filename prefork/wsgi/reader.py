"""Reading HTTP/1.x requests from a connection: httptools (llhttp, Node.js's parser) parses,
this module bounds what it may read and keeps the messages apart.

A :class:`RequestReader` feeds what the connection sends to one ``httptools.HttpRequestParser``
and turns its callbacks into :class:`Request` records, queued in order: a client that
pipelines gets its requests answered one after the other. It reads only when the request
being served needs more (its head, or body the application asks for), at most
:data:`READ_SIZE` bytes at a time, so its memory is bounded by the limits below whatever the
client sends.

The limits are gunicorn's settings (``limit_request_line``, ``limit_request_fields``,
``limit_request_field_size``); a request over one raises :class:`HTTPError` (414 for the line,
431 for the fields), as does anything llhttp refuses (400): the ambiguities request smuggling
relies on (``Content-Length`` with ``Transfer-Encoding``, two ``Content-Length``, obsolete line
folding, a header name that is not a token, a bare LF) and, checked here, a
``Transfer-Encoding`` other than ``chunked`` (llhttp lets ``gzip, chunked`` through, a
coding no WSGI server decodes) or in an HTTP/1.0 request, no ``Host`` in an HTTP/1.1 request
or more than one (RFC 9112), and an HTTP version other than 1.0 and 1.1 (505). A body's chunk
framing and trailers are bounded as a head is. After an
HTTPError the connection is closed: what follows in it cannot be trusted to start a request.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import httptools

from prefork.connections import wait_readable

if TYPE_CHECKING:
    import socket

#: The most bytes read from the connection at once.
READ_SIZE = 65536
#: The most bytes of the request line and of a header field whatever the limits say (0: this).
MOST_LINE = 65534
#: The most header fields whatever the limits say (0: this).
MOST_FIELDS = 32768
#: The most bytes a request's head may take whatever the limits say (they may allow GiBs).
MOST_HEAD = 1 << 20
#: Bytes of chunk framing and trailers a body may take per byte of data (1-byte chunks take 5),
#: beyond a head's worth: more is a client sending something else than a body.
FRAMING_PER_BYTE = 8


class HTTPError(Exception):
    """A request the server refuses: answered with ``status`` (and ``reason`` as the body),
    then the connection is closed."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


class Request:
    """One request as parsed: its head, then its body as it arrives (``body``, chunks
    decoded from ``chunked`` when it was sent so). ``complete``: the whole message was read."""

    __slots__ = (
        "body",
        "chunked",
        "complete",
        "content_length",
        "error",
        "expects_continue",
        "head_done",
        "headers",
        "keep_alive",
        "method",
        "received",
        "url",
        "version",
    )

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.method = ""
        self.version = ""
        self.keep_alive = False
        self.chunked = False
        self.content_length: int | None = None
        self.expects_continue = False
        self.head_done = False
        self.complete = False
        self.body: deque[bytes] = deque()
        self.received = 0  # body bytes parsed so far
        #: What the reader refused in this request (its head, or its body after the bytes
        #: in ``body``): raised when the request is reached, requests before it are served.
        self.error: HTTPError | None = None


class RequestReader:
    """The requests of one connection, read and parsed as they are needed. Runs in the worker
    (in the thread serving the connection).

    ``limit_line``, ``limit_fields`` and ``limit_field_size`` are the server's settings of
    those names (bytes, a count, bytes; 0 for the most, :data:`MOST_LINE` and
    :data:`MOST_FIELDS`). The connection's reads (``sock.recv``) keep its timeout and read
    rules, whose TimeoutError and OSError go to the caller.
    """

    __slots__ = (
        "_current",
        "_error",
        "_field_size",
        "_fields",
        "_framing",
        "_head_budget",
        "_head_read",
        "_limit_line",
        "_parser",
        "_queue",
        "_sock",
        "closed",
        "upgraded",
    )

    def __init__(
        self, sock: socket.socket, limit_line: int, limit_fields: int, limit_field_size: int
    ) -> None:
        self._sock = sock
        self._limit_line = limit_line or MOST_LINE
        self._fields = limit_fields or MOST_FIELDS
        self._field_size = limit_field_size or MOST_LINE
        # The head of a request can take no more than this (the request line, each field and
        # its CRLF, the empty line; and a read's worth, as a read may hold the end of the
        # request before): a client sending more without finishing it is refused.
        budget = self._limit_line + 2 + self._fields * (self._field_size + 2) + 2
        self._head_budget = min(budget, MOST_HEAD) + READ_SIZE
        self._head_read = 0
        self._framing = 0  # bytes read of the current body, framing and trailers included
        self._queue: deque[Request] = deque()
        self._current: Request | None = None
        self._error: HTTPError | None = None
        self._parser = httptools.HttpRequestParser(self)
        #: Nothing more is read: the client closed its side, or a request was refused.
        self.closed = False
        #: The client asked to switch protocols (Upgrade, CONNECT): no request follows this one.
        self.upgraded = False

    # -- what the handler calls ------------------------------------------------------------

    def next_request(self, data: bytes = b"") -> Request | None:
        """The next request with its head read (its body may still be to come), reading from
        the connection as needed; ``data``: bytes already read from it to parse first. Returns
        None when the client closed the connection (or sent no byte more) between requests.
        Raises HTTPError for a request to refuse, TimeoutError or OSError from the socket."""
        if data:
            self._feed(data)
        while True:
            queue = self._queue
            if queue and queue[0].head_done:
                return queue[0]
            if queue and queue[0].error is not None:
                raise queue[0].error
            if self.closed or self.upgraded:
                if queue:  # a request cut short
                    raise HTTPError(400, "Incomplete request")
                return None
            self._read()

    def done(self, request: Request) -> None:
        """``request`` has been answered: the next call of :meth:`next_request` goes on with
        the one after it."""
        if self._queue and self._queue[0] is request:
            self._queue.popleft()

    def read_body(self, request: Request) -> bytes:
        """The next bytes of ``request``'s body (decoded), reading from the connection when
        none are waiting; b"" at its end, or when the client closed the connection first."""
        body = request.body
        while not body:
            if request.error is not None:
                raise request.error
            if request.complete or self.closed or self.upgraded:
                return b""
            self._read()
        return body.popleft()

    def read_ahead(self, request: Request, most: int) -> bool:
        """Read what has arrived of ``request``'s body without waiting, until ``most`` body
        bytes in all were parsed (kept in ``request.body``); return whether the body is
        complete."""
        while not (request.complete or self.closed or self.upgraded) and request.received < most:
            if not wait_readable(self._sock, 0):
                break
            self._read()
        return request.complete

    def body_pending(self, request: Request) -> bool:
        """Whether ``request``'s body has bytes not yet read by the application (a drain
        before the next request reads them)."""
        return bool(request.body) or not request.complete

    def has_data(self) -> bool:
        """Whether the next request has begun (pipelined), after :meth:`done`."""
        return bool(self._queue)

    # -- reading and parsing ----------------------------------------------------------------

    def _read(self) -> None:
        data = self._sock.recv(READ_SIZE)
        if not data:
            self.closed = True
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.upgraded = True  # what follows is another protocol: this request is the last
        except httptools.HttpParserCallbackError:
            self._refuse(self._error or HTTPError(400, "Bad request"))
        except httptools.HttpParserError as exc:
            self._refuse(HTTPError(400, str(exc) or "Bad request"))
        current = self._current
        if current is None or self.closed:
            return
        if not current.head_done:
            self._head_read += len(data)  # what the head took so far
            if self._head_read > self._head_budget:
                self._refuse(HTTPError(431, "Request Header Fields Too Large"))
        elif not current.complete:  # a body: chunk sizes and trailers are bounded too
            self._framing += len(data)
            if self._framing - current.received > self._head_budget + FRAMING_PER_BYTE * current.received:
                self._refuse(HTTPError(431, "Request trailers or chunk framing too large"))

    def _refuse(self, error: HTTPError) -> None:
        """The request being parsed is refused: it raises ``error`` when reached (the ones
        before it are served); nothing more is read from the connection."""
        self.closed = True
        current = self._current
        if current is None or current not in self._queue:
            current = Request()
            self._queue.append(current)
        current.error = error

    def _fail(self, error: HTTPError) -> None:
        self._error = error
        raise error

    # -- httptools' callbacks (called inside feed_data) ----------------------------------------

    def on_message_begin(self) -> None:
        request = Request()
        self._current = request
        self._queue.append(request)
        self._head_read = self._framing = 0

    def on_url(self, url: bytes) -> None:
        request = self._current
        assert request is not None
        request.url += url
        if len(request.url) + 10 > self._limit_line:  # "GET " and " HTTP/1.1" at the least
            self._fail(HTTPError(414, "Request-URI Too Long"))

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self._current
        assert request is not None
        headers = request.headers
        headers.append((name, value))
        if len(headers) > self._fields:
            self._fail(HTTPError(431, "Too many header fields"))
        if len(name) + len(value) + 2 > self._field_size:
            self._fail(HTTPError(431, "Request Header Field Too Large"))

    def on_headers_complete(self) -> None:
        request = self._current
        assert request is not None
        parser: Any = self._parser
        request.method = parser.get_method().decode("ascii")
        version = request.version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            self._fail(HTTPError(505, "HTTP Version Not Supported"))
        request.keep_alive = parser.should_keep_alive()
        hosts = 0
        for name, value in request.headers:
            size = len(name)
            if size == 4 and name.lower() == b"host":
                hosts += 1
            elif size == 17 and name.lower() == b"transfer-encoding":
                if value.strip().lower() != b"chunked":  # llhttp let it through: not ours to decode
                    self._fail(HTTPError(400, "Unsupported Transfer-Encoding"))
                if version == "1.0":  # RFC 9112 6.1: faulty framing
                    self._fail(HTTPError(400, "Transfer-Encoding in an HTTP/1.0 request"))
                request.chunked = True
            elif size == 14 and name.lower() == b"content-length":
                request.content_length = int(value)  # llhttp checked: digits, one value
            elif size == 6 and name.lower() == b"expect":
                if value.strip().lower() == b"100-continue":
                    request.expects_continue = version == "1.1"
        if hosts > 1 or (hosts == 0 and version == "1.1"):  # RFC 9112 3.2: exactly one
            self._fail(HTTPError(400, "Missing Host header" if not hosts else "More than one Host header"))
        request.head_done = True

    def on_body(self, body: bytes) -> None:
        request = self._current
        assert request is not None
        request.body.append(body)
        request.received += len(body)

    def on_message_complete(self) -> None:
        request = self._current
        assert request is not None
        request.complete = True
