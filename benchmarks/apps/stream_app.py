"""A WSGI app streaming a large response from a generator, for ``benchmarks/wsgi_stream.py``.

- ``GET /?bytes=N``: 200, ``Content-Type: application/octet-stream``, no Content-Length, and a
  body of N bytes (default ``STREAM_BYTES``, 100 MiB) yielded by a generator in chunks of
  ``CHUNK`` (64 KiB). Each chunk is a new bytes object with its own content (a counter), built
  when the server asks for it: a server that keeps the chunks it has not sent yet, or joins them,
  holds new memory, which the benchmark sees in the worker's RSS.
- ``GET /pid``: the pid of the process that answered, as the body (and an ``X-Pid`` header on
  every answer): the benchmark's way to find the worker serving its stream.

prefork serves it as ``python -m prefork benchmarks/apps/stream_app.py:app``, gunicorn as
``stream_app:app`` from this folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import parse_qs
from wsgiref.types import StartResponse, WSGIEnvironment

CHUNK = 64 * 1024
STREAM_BYTES = 100 * 2**20
LINE = 16  # bytes of each numbered line: a chunk is CHUNK // LINE of them


def chunks(total: int) -> Iterator[bytes]:
    """``total`` bytes in chunks of ``CHUNK`` (the last one shorter), each made when asked for."""
    sent = 0
    for i in range((total + CHUNK - 1) // CHUNK):
        size = min(CHUNK, total - sent)
        chunk = (b"%015d\n" % i) * (CHUNK // LINE)
        sent += size
        yield chunk[:size] if size < CHUNK else chunk


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
    """``/pid``: the pid; anything else: ``?bytes=N`` (``STREAM_BYTES``) streamed by :func:`chunks`."""
    pid = str(os.getpid())
    if environ.get("PATH_INFO") == "/pid":
        body = pid.encode()
        headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), ("X-Pid", pid)]
        start_response("200 OK", headers)
        return iter([body])
    query = parse_qs(environ.get("QUERY_STRING", ""))
    total = int(query.get("bytes", [str(STREAM_BYTES)])[0])
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("X-Pid", pid)])
    return chunks(total)
