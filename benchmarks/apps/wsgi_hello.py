"""The WSGI hello app every hello benchmark serves: GET anything -> 200 ``Hello, world!\\n`` with
Content-Length.

prefork serves it as ``python -m prefork benchmarks/apps/wsgi_hello.py:app``, gunicorn and uWSGI
as ``wsgi_hello:app`` (from this folder), as /work/shared/bench/wsgi_hello.py does. ``BODY`` and
``HEADERS`` are for apps that answer the same (``graceful_stop.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from wsgiref.types import StartResponse, WSGIEnvironment

BODY = b"Hello, world!\n"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI application every contender serves."""
    start_response("200 OK", HEADERS)
    return [BODY]
