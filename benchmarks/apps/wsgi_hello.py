"""A WSGI hello app, and wsgiref's request handler around it for any socketserver server.

- ``app``: GET anything -> 200 ``Hello, world!\\n`` with Content-Length (what gunicorn serves
  as ``wsgi_hello:app`` in the benchmarks, and /work/shared/bench/wsgi_hello.py).
- ``Handler``: ``wsgiref.simple_server.WSGIRequestHandler`` serving ``app`` on any socketserver
  server (``python -m prefork benchmarks/apps/wsgi_hello.py:Handler``): it builds the CGI base
  environ itself instead of asking a ``WSGIServer`` for it. One request per connection, as
  gunicorn's ``sync`` worker (HTTP/1.0 replies, so clients close).
- ``KeepAliveHandler``: the same, serving HTTP/1.1 keep-alive (a loop over the connection's
  requests), for the ``thread`` worker, where a connection holds a thread and not the process.

Both run wsgiref's own ``ServerHandler`` on each request, but collect its output and send the
whole response in one write: wsgiref writes the status line, Date, Server, the headers and the
body in five ``sendall`` calls, which with keep-alive meet Nagle's algorithm and delayed ACKs
(40 ms stalls). The app's output is buffered, which suits a benchmark, not a streaming app.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable
from typing import Any
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

BODY = b"Hello, world!\n"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI application every contender serves."""
    start_response("200 OK", HEADERS)
    return [BODY]


class Handler(WSGIRequestHandler):
    """wsgiref's handler serving ``application`` on any socketserver server, one response per
    connection (HTTP/1.0)."""

    application: WSGIApplication = staticmethod(app)
    protocol_version = "HTTP/1.0"
    keep_alive = False

    def get_environ(self) -> dict[str, Any]:
        """wsgiref's environ; the server's base part (``WSGIServer.setup_environ``'s) is
        computed on the first request when the server is not a ``WSGIServer``."""
        if not hasattr(self.server, "base_environ"):
            address: Any = self.server.server_address  # a (host, port, ...) tuple here
            host, port = address[:2]
            self.server.base_environ = {  # type: ignore[attr-defined]
                "SERVER_NAME": str(host),
                "GATEWAY_INTERFACE": "CGI/1.1",
                "SERVER_PORT": str(port),
                "REMOTE_HOST": "",
                "CONTENT_LENGTH": "",
                "SCRIPT_NAME": "",
            }
        return super().get_environ()

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one()
        while self.keep_alive and not self.close_connection:
            self.handle_one()

    def handle_one(self) -> None:
        """Read one request, run the app through wsgiref's ServerHandler, send the response."""
        self.raw_requestline = self.rfile.readline(65537)
        if not self.raw_requestline:
            self.close_connection = True
            return
        if len(self.raw_requestline) > 65536:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        if not self.parse_request():
            return
        out = io.BytesIO()
        handler = ServerHandler(
            self.rfile,
            out,
            self.get_stderr(),
            self.get_environ(),
            multithread=threading.current_thread() is not threading.main_thread(),
        )
        handler.request_handler = self  # type: ignore[attr-defined]  # for log_request, as wsgiref does
        if not self.close_connection:
            handler.http_version = "1.1"
        handler.run(self.application)
        self.wfile.write(out.getvalue())

    def log_message(self, format: str, *args: Any) -> None:
        pass


class KeepAliveHandler(Handler):
    """``Handler`` serving every request of an HTTP/1.1 keep-alive connection."""

    protocol_version = "HTTP/1.1"
    keep_alive = True
