"""Serving WSGI applications (PEP 3333) over HTTP/1.1 from a pool of preforked workers:
``prefork module:app`` on the command line, :class:`PreforkWSGIServer` in code.

The rooms: :mod:`~prefork.wsgi.reader` (parsing requests with httptools, within the limits),
:mod:`~prefork.wsgi.environ` (the environ), :mod:`~prefork.wsgi.body` (``wsgi.input``),
:mod:`~prefork.wsgi.response` (``start_response``, sending, ``wsgi.file_wrapper``),
:mod:`~prefork.wsgi.handler` (the request handler), :mod:`~prefork.wsgi.application` (what a
server adds), :mod:`~prefork.wsgi.server` (the servers).
"""

from __future__ import annotations

from prefork.wsgi.application import WSGIServerMixIn
from prefork.wsgi.handler import WSGIRequestHandler, wsgi_handler
from prefork.wsgi.response import FileWrapper
from prefork.wsgi.server import PreforkUnixWSGIServer, PreforkWSGIServer

__all__ = [
    "FileWrapper",
    "PreforkUnixWSGIServer",
    "PreforkWSGIServer",
    "WSGIRequestHandler",
    "WSGIServerMixIn",
    "wsgi_handler",
]
