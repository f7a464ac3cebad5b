"""PreforkWSGIServer and PreforkUnixWSGIServer: a WSGI application served over HTTP/1.1 by a
pool of preforked workers, on TCP or on a Unix socket."""

from __future__ import annotations

import socketserver
from typing import Any

from prefork.connections import UnixPeerMixIn
from prefork.server import PreforkMixIn
from prefork.wsgi.application import WSGIServerMixIn
from prefork.wsgi.handler import WSGIRequestHandler


class _DefaultHandler:
    """Makes :class:`~prefork.wsgi.handler.WSGIRequestHandler` the default handler class."""

    def __init__(
        self,
        server_address: Any,
        RequestHandlerClass: type[socketserver.BaseRequestHandler] = WSGIRequestHandler,
        bind_and_activate: bool = True,
        **settings: Any,
    ) -> None:
        super().__init__(server_address, RequestHandlerClass, bind_and_activate, **settings)  # type: ignore[call-arg]


class PreforkWSGIServer(_DefaultHandler, WSGIServerMixIn, PreforkMixIn, socketserver.TCPServer):
    """A WSGI application served by a pool of preforked workers over HTTP/1.1, with
    :class:`~prefork.wsgi.handler.WSGIRequestHandler` (its default handler class)::

        server = PreforkWSGIServer(("127.0.0.1", 8000), workers=4)
        server.set_app(app)
        server.serve_forever()

    What the ``prefork`` command serves for ``prefork module:app``. Settings as other
    prefork servers, and the WSGI ones (``keepalive``, the ``limit_request_*`` limits,
    ``root_path``, ``forwarded_allow_ips``)."""

    allow_reuse_address = True


class PreforkUnixWSGIServer(
    UnixPeerMixIn, _DefaultHandler, WSGIServerMixIn, PreforkMixIn, socketserver.UnixStreamServer
):
    """:class:`PreforkWSGIServer` on a Unix stream socket (behind nginx's ``proxy_pass
    http://unix:...``). ``REMOTE_ADDR`` is the peer's socket path, or ``unix`` for an
    unnamed one (the usual case: :class:`~prefork.connections.UnixPeerMixIn`), unless a
    PROXY header or a trusted proxy's ``X-Forwarded-For`` names the client;
    ``SERVER_NAME`` is ``localhost``."""
