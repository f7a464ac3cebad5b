"""The WSGI request handler: socketserver's handler serving a WSGI application over HTTP/1.1.

:class:`WSGIRequestHandler` reads each request of its connection
(:class:`~prefork.wsgi.reader.RequestReader`), builds the environ
(:mod:`prefork.wsgi.environ`), calls the application and sends what it returns
(:class:`~prefork.wsgi.response.Response`); the application's ``close()`` is always called.

- With the ``sync`` worker a connection carries one request, answered with ``Connection:
  close`` (as gunicorn's sync worker: a keep-alive client would hold the whole process).
  With the ``thread`` worker a connection is kept alive while the client asks for it, for
  ``keepalive`` seconds between requests (pipelined requests are answered in order); before
  the next request, what the application left unread of a body is read and dropped (up to
  :data:`DRAIN_LIMIT` bytes, else the connection closes).
- A request the reader refuses (limits, smuggling: :class:`~prefork.wsgi.reader.HTTPError`)
  is answered 400, 414, 431 or 505 and the connection closed, with one DEBUG line.
- An application that raises before its response started gets a ``500 Internal Server
  Error``; the exception then goes to the server's ``handle_error`` (a traceback in the
  log, the request counted in the worker's errors) and the connection closes. The worker
  goes on. After the head was sent, the connection is closed mid-response.

Runs in the worker, in the thread serving the connection.
"""

from __future__ import annotations

import logging
import socketserver
from collections.abc import Callable, Iterable
from time import monotonic
from typing import TYPE_CHECKING, Any, ClassVar

from prefork.accesslog import ERROR, SERVED
from prefork.connections import forget_waits, wait_readable
from prefork.wsgi.body import DRAIN_LIMIT, Input
from prefork.wsgi.environ import request_environ
from prefork.wsgi.reader import HTTPError, Request, RequestReader
from prefork.wsgi.response import FileWrapper, Response, body_of

if TYPE_CHECKING:
    from prefork.wsgi.application import WSGIServerMixIn

log = logging.getLogger("prefork")


class WSGIRequestHandler(socketserver.BaseRequestHandler):
    """Serves the requests of one connection to a WSGI application: this class's
    ``application`` (set by :func:`wsgi_handler`), else the server's (``set_app()``).
    Used with :class:`~prefork.wsgi.server.PreforkWSGIServer` (its settings: the limits,
    ``keepalive``, ``root_path``, ``forwarded_allow_ips``). ``handle`` may be extended."""

    #: The WSGI application served; None: the server's ``get_app()``.
    application: ClassVar[Callable[..., Iterable[bytes]] | None] = None

    server: WSGIServerMixIn  # type: ignore[assignment]  # mixed into a prefork server

    def handle(self) -> None:
        """Serve the connection's requests until it closes, or one is answered with
        ``Connection: close``. Raises what the application raised (after a 500 when the
        response had not started) and the socket's errors."""
        server, sock = self.server, self.request
        app = self.application or server.get_app()
        base = server.wsgi_environ()
        keepalive = server.keepalive if base["wsgi.multithread"] else 0.0
        allowed, forwarded = server.forwarded_allow_ips, server.forwarded_header
        reader = RequestReader(
            sock, server.limit_request_line, server.limit_request_fields, server.limit_request_field_size
        )
        response = Response(sock)
        worker = getattr(server, "worker", None)
        access = server.access if server.logs_requests else None  # here, not by the worker
        request: Request | None = None
        line, started = "-", 0.0  # the request line and start of the request, for the access log
        try:
            while True:
                if request is not None:  # the next request of a kept-alive connection
                    reader.done(request)
                    if worker is not None:  # waiting for the client is no request in progress
                        worker.request_idle(sock)
                    if not reader.has_data() and not wait_readable(sock, keepalive):
                        return
                    forget_waits(sock)  # the read rules and request_timeout bound each request
                    if worker is not None:
                        worker.request_continues(sock)
                    response.head_sent = False
                    line = "-"
                request = reader.next_request()
                if request is None:
                    return
                started = monotonic()
                if access is not None:
                    line = f"{request.method} {request.url.decode('latin-1')} HTTP/{request.version}"
                keep = keepalive > 0 and request.keep_alive and not reader.upgraded
                try:
                    environ = request_environ(base, request, self.client_address, allowed, forwarded)
                except ValueError:
                    raise HTTPError(400, "Bad request target") from None
                body = environ["wsgi.input"] = Input(reader, request, sock, response)
                response.begin(keep, request.method == "HEAD", request.version == "1.1", body.can_finish)
                try:
                    self.run_application(app, environ, response)
                except HTTPError:  # a body the reader refused: answered and logged below
                    raise
                except BaseException:
                    self.log_request(line, response.code or 500, response.sent, ERROR, started)
                    raise
                self.log_request(line, response.code, response.sent, SERVED, started)
                if not response.keep_alive or not self.drained(reader, request):
                    return
        except HTTPError as error:
            log.debug("Bad request from %s: %s", self.client_address, error)
            if not response.head_sent:
                _send_error(sock, error.status, error.reason)
                self.log_request(line, error.status, 0, SERVED, started or monotonic())

    def log_request(self, line: str, status: int, size: int, outcome: str, started: float) -> None:
        """Write the access log's line of one request (when the server has an access log):
        its request ``line`` (``-`` when none was read), the ``status`` sent, the body bytes
        sent (``size``), the ``outcome`` and its duration since ``started`` (``monotonic()``)."""
        server = self.server
        access, worker = server.access, getattr(server, "worker", None)
        if access is not None and worker is not None and server.logs_requests:
            elapsed, http = monotonic() - started, (line, status, size)
            access.record(self.client_address, worker.number, worker.pid, elapsed, outcome, http)

    def run_application(
        self, app: Callable[..., Iterable[bytes]], environ: dict[str, Any], response: Response
    ) -> None:
        """Call ``app`` and send its response; its ``close()`` is always called. Raises what
        the application raised (after a 500 when nothing was sent yet)."""
        result = None
        try:
            result = app(environ, response.start_response)
            whole = None if response.head_sent else body_of(result)  # write() sent the head
            if whole is not None:
                response.send_whole(whole)
            elif type(result) is FileWrapper and not response.head_sent and response.send_file(result):
                pass
            else:
                response.send_iterable(result)
        except HTTPError:  # a body the reader refused: answered by handle()
            raise
        except Exception:
            response.keep_alive = False
            if not response.head_sent:
                response.head_sent = True
                response.code = 500
                _send_error(response.sock, 500, "Internal Server Error")
            raise
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def drained(self, reader: RequestReader, request: Request) -> bool:
        """Read and drop what is left of ``request``'s body so the next request can be read;
        False (close the connection) when it is more than :data:`DRAIN_LIMIT` bytes. (A body
        the client was never told to send closed the connection already: ``can_finish``.)"""
        if not reader.body_pending(request):
            return True
        left = DRAIN_LIMIT
        while left > 0:
            data = reader.read_body(request)
            if not data:
                return request.complete
            left -= len(data)
        return False


def _send_error(sock: Any, status: int, reason: str) -> None:
    """Answer ``status`` with a short text body and ``Connection: close``; a client gone
    meanwhile is not an error."""
    body = reason.encode("latin-1", "replace") + b"\n"
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    try:
        sock.sendall(head.encode("latin-1", "replace") + body)
    except OSError:
        pass


def wsgi_handler(
    app: Callable[..., Iterable[bytes]], name: str = "WSGIRequestHandler"
) -> type[WSGIRequestHandler]:
    """A :class:`WSGIRequestHandler` subclass serving ``app`` (what the ``prefork`` command
    serves for a TARGET that is a WSGI application)."""
    return type(name, (WSGIRequestHandler,), {"application": staticmethod(app)})
