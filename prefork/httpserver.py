"""PreforkHTTPServer and PreforkUnixHTTPServer: ``http.server``'s handlers served by a pool of
preforked workers, on TCP or on a Unix socket.

A module of its own so that servers which are not HTTP servers never import ``http.server``
(with ``http.client`` and ``email``, about 40 ms at start-up).
"""

from __future__ import annotations

import http.server
import socketserver

from prefork.connections import UnixPeerMixIn
from prefork.server import PreforkMixIn


class PreforkHTTPServer(PreforkMixIn, http.server.HTTPServer):
    """``http.server.HTTPServer`` served by a pool of preforked workers; use it with
    ``BaseHTTPRequestHandler`` or ``SimpleHTTPRequestHandler`` unmodified."""


class PreforkUnixHTTPServer(UnixPeerMixIn, PreforkMixIn, socketserver.UnixStreamServer):
    """An HTTP server on a Unix stream socket (behind nginx's ``proxy_pass http://unix:...``,
    say), served by a pool of preforked workers; use it with ``BaseHTTPRequestHandler`` or
    ``SimpleHTTPRequestHandler`` unmodified.

    Handlers get ``client_address`` as ``(PEER, 0)``, where PEER is the peer's socket path or
    ``"unix"`` for an unnamed one (the usual case) (:class:`~prefork.connections.UnixPeerMixIn`):
    ``BaseHTTPRequestHandler`` logs ``client_address[0]``, which socketserver's ``''`` for a
    Unix peer breaks (IndexError, and every request got an empty reply). ``server_name`` is
    ``"localhost"`` and ``server_port`` 0, as ``HTTPServer`` sets them from a (host, port)
    address.
    """

    server_name = "localhost"
    server_port = 0
