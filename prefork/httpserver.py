"""PreforkHTTPServer: ``http.server.HTTPServer`` served by a pool of preforked workers.

A module of its own so that servers which are not HTTP servers never import ``http.server``
(with ``http.client`` and ``email``, about 40 ms at start-up).
"""

from __future__ import annotations

import http.server

from prefork.server import PreforkMixIn


class PreforkHTTPServer(PreforkMixIn, http.server.HTTPServer):
    """``http.server.HTTPServer`` served by a pool of preforked workers; use it with
    ``BaseHTTPRequestHandler`` or ``SimpleHTTPRequestHandler`` unmodified."""
