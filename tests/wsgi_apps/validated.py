"""A plain WSGI app inside :func:`wsgiref.validate.validator`: served by prefork, every request
checks the server's half of PEP 3333 (environ keys and types, ``wsgi.input`` and
``wsgi.errors`` methods, ``start_response`` before the body, ``close()`` called on every
iterable). A failed check raises AssertionError in the worker (a 500 and a traceback in the
log); a dubious value warns (``WSGIWarning`` in the log); an iterable never closed writes
"Iterator garbage collected without being closed".

Routes (on PATH_INFO):

- ``/env...``: JSON of the CGI variables and ``wsgi.*`` flags the server set;
- ``POST /echo?how=HOW``: the body back, read with ``read(n)`` in pieces (``read``), in one
  ``read(CONTENT_LENGTH)`` (``all``), ``readline()`` (``readline``), ``readline(7)``
  (``readline-size``), ``readlines()`` (``readlines``) or by iterating (``iter``). All but
  ``all`` read until the stream ends: they rely on the server ending ``wsgi.input`` with the
  body (PEP 3333: it "should simulate an end-of-file condition"), as a chunked body needs;
- ``/stream?n=N&delay=S``: a generator of N lines, each saying when it was made, S s apart;
- ``/closing?token=T&n=N&delay=S``: an iterable whose ``close()`` creates the file
  ``closed-T`` in ``$WSGI_APPS_MARKS`` (a directory the test gives);
- ``/file``: ``wsgi.file_wrapper`` of :func:`~tests.wsgi_apps.served_file` (the validator
  wraps it, so the server gets a plain iterable: its fallback path);
- ``/sized?size=N``: N bytes with a Content-Length (for HEAD);
- ``/write``: the body through the legacy ``write()`` callable, then an empty iterable;
- ``/raise``: raises RuntimeError before starting the response.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import parse_qs
from wsgiref.types import StartResponse, WSGIEnvironment
from wsgiref.validate import validator

from tests.wsgi_apps import served_file

#: The CGI variables ``/env`` reports (those set; HTTP_* are all reported).
CGI_KEYS = (
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "REMOTE_ADDR",
    "REMOTE_PORT",
)


class Closing:
    """An iterable of ``count`` lines whose ``close()`` leaves a mark the test can see."""

    def __init__(self, token: str, count: int, delay: float) -> None:
        self.token = token
        self.count = count
        self.delay = delay

    def __iter__(self) -> Iterator[bytes]:
        for number in range(self.count):
            if number:
                time.sleep(self.delay)
            yield f"line {number} of {self.count}\n".encode()

    def close(self) -> None:
        marks = os.environ.get("WSGI_APPS_MARKS")
        if marks:
            (Path(marks) / f"closed-{self.token}").touch()


def stream(count: int, delay: float) -> Iterator[bytes]:
    for number in range(count):
        if number:
            time.sleep(delay)
        yield f"chunk {number} of {count} made at {time.time():.6f}\n".encode()


def read_body(environ: WSGIEnvironment, how: str) -> bytes:
    body = environ["wsgi.input"]
    if how == "read":
        pieces = []
        while piece := body.read(1000):
            pieces.append(piece)
        return b"".join(pieces)
    if how == "all":
        return bytes(body.read(int(environ.get("CONTENT_LENGTH") or 0)))
    if how == "readline":
        lines = []
        while line := body.readline():
            lines.append(line)
        return b"".join(lines)
    if how == "readline-size":
        lines = []
        while line := body.readline(7):
            assert len(line) <= 7, line
            lines.append(line)
        return b"".join(lines)
    if how == "readlines":
        return b"".join(body.readlines())
    if how == "iter":
        return b"".join(line for line in body)
    raise ValueError(f"unknown how={how!r}")


def respond(
    start_response: StartResponse, body: bytes, content_type: str = "text/plain", status: str = "200 OK"
) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


def plain_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The app the validator wraps."""
    path = environ.get("PATH_INFO", "")
    query = {key: values[-1] for key, values in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if path.startswith("/env"):
        report: dict[str, object] = {key: environ[key] for key in CGI_KEYS if key in environ}
        report.update((key, value) for key, value in environ.items() if key.startswith("HTTP_"))
        for key in ("wsgi.version", "wsgi.url_scheme", "wsgi.multithread", "wsgi.multiprocess"):
            report[key] = environ[key]
        report["wsgi.run_once"] = environ["wsgi.run_once"]
        report["wsgi.input_terminated"] = environ.get("wsgi.input_terminated")
        report["has_file_wrapper"] = "wsgi.file_wrapper" in environ
        return respond(start_response, json.dumps(report).encode(), "application/json")
    if path == "/echo":
        return respond(
            start_response, read_body(environ, query.get("how", "read")), "application/octet-stream"
        )
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return stream(int(query.get("n", "5")), float(query.get("delay", "0")))
    if path == "/closing":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Closing(query["token"], int(query.get("n", "3")), float(query.get("delay", "0")))
    if path == "/file":
        served = served_file(__file__)
        start_response(
            "200 OK",
            [("Content-Type", "application/octet-stream"), ("Content-Length", str(served.stat().st_size))],
        )
        wrapper = environ["wsgi.file_wrapper"]
        return wrapper(served.open("rb"), 8192)  # type: ignore[no-any-return]
    if path == "/sized":
        return respond(start_response, b"s" * int(query.get("size", "100")))
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        write(b"with write()\n")
        return []
    if path == "/raise":
        raise RuntimeError("raised by the validated app on purpose")
    return respond(start_response, b"not found\n", status="404 Not Found")


app = validator(plain_app)
