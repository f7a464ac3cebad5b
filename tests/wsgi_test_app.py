"""A WSGI application for the tests of prefork.wsgi: one route per behaviour of the server
(``python -m prefork tests/wsgi_test_app.py:app``)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

#: close() calls of the responses of /closes, in this worker.
CLOSED = [0]
#: The size of this file (served by /file and /short-file).
APP_SIZE = os.path.getsize(__file__)

Environ = dict[str, Any]
StartResponse = Callable[..., Any]


class NoRead:
    """A file whose read() fails: served through wsgi.file_wrapper, it must go by sendfile."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "rb")  # closed by the wrapper's close()

    def fileno(self) -> int:
        return self.file.fileno()

    def tell(self) -> int:
        return self.file.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.file.seek(offset, whence)

    def read(self, size: int = -1) -> bytes:
        raise AssertionError("read() called: the file was not sent with sendfile")

    def close(self) -> None:
        self.file.close()


class Closing:
    """A response body whose close() is counted."""

    def __init__(self, parts: list[bytes], fail: bool = False) -> None:
        self.parts = parts
        self.fail = fail

    def __iter__(self) -> Iterator[bytes]:
        yield from self.parts
        if self.fail:
            raise RuntimeError("failing mid-body")

    def close(self) -> None:
        CLOSED[0] += 1


def text(start_response: StartResponse, body: bytes, status: str = "200 OK") -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    query = {k: v[0] for k, v in parse_qs(environ["QUERY_STRING"]).items()}
    if path.startswith("/environ"):
        shown: dict[str, Any] = {k: v for k, v in environ.items() if isinstance(v, (str, bool))}
        shown["wsgi.version"] = list(environ["wsgi.version"])
        return text(start_response, json.dumps(shown).encode())
    if path == "/echo":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [body]
    if path == "/echo-lines":
        stream = environ["wsgi.input"]
        lines = [stream.readline(int(query.get("size", -1)))]
        lines += list(stream)
        return text(start_response, json.dumps([line.decode("latin-1") for line in lines]).encode())
    if path == "/digest":
        digest, size = hashlib.sha256(), 0
        while chunk := environ["wsgi.input"].read(65536):
            digest.update(chunk)
            size += len(chunk)
        return text(start_response, f"{size} {digest.hexdigest()}".encode())
    if path == "/stream":
        count, delay = int(query.get("n", "3")), float(query.get("delay", "0"))

        def chunks() -> Iterator[bytes]:
            for i in range(count):
                if i:
                    time.sleep(delay)
                yield b"chunk %d\n" % i

        start_response("200 OK", [("Content-Type", "text/plain")])
        return chunks()
    if path == "/big":  # MiB, streamed in 64 KiB chunks, without a length
        size = int(query.get("mib", "1")) << 20
        block = b"x" * 65536
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (block for _ in range(size // len(block)))
    if path == "/file":
        start_response("200 OK", [("Content-Type", "text/x-python")])
        wrapper: Iterable[bytes] = environ["wsgi.file_wrapper"](NoRead(__file__))
        return wrapper
    if path == "/yield-then-read":  # the head goes out before the body is asked for

        def answer() -> Iterator[bytes]:
            yield b"reading..."
            yield environ["wsgi.input"].read()

        start_response("200 OK", [("Content-Type", "text/plain")])
        return answer()
    if path == "/short-file":  # a Content-Length beyond the file's end (it shrank, say)
        start_response("200 OK", [("Content-Length", str(APP_SIZE + 10))])
        wrapped: Iterable[bytes] = environ["wsgi.file_wrapper"](open(__file__, "rb"))
        return wrapped
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"and returned\n"]
    if path == "/error":
        raise RuntimeError("the application failed")
    if path == "/error-after":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Closing([b"first\n"], fail=True)
    if path == "/closes":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Closing([b"a", b"b"])
    if path == "/close-count":
        return text(start_response, str(CLOSED[0]).encode())
    if path == "/pid":
        return text(start_response, str(os.getpid()).encode())
    if path == "/no-content":
        start_response("204 No Content", [])
        return []
    if path == "/bad-header":
        start_response("200 OK", [("X-Injected", "a\r\nSet-Cookie: evil=1")])
        return [b"never sent"]
    if path == "/short":
        start_response("200 OK", [("Content-Length", "100")])
        return [b"only this"]
    if path == "/long":
        start_response("200 OK", [("Content-Length", "4")])
        return [b"four and more"]
    if path == "/hop":
        start_response("200 OK", [("Connection", "close"), ("Transfer-Encoding", "gzip"), ("X-Kept", "1")])
        return [b"hop\n"]
    return text(start_response, b"Hello, world!\n")


def create_app(greeting: str = "Hello") -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    """A factory (``tests/wsgi_test_app.py:create_app('Hi')``)."""

    def greet(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        return text(start_response, f"{greeting} from a factory\n".encode())

    return greet


def broken_factory() -> None:
    raise RuntimeError("no app today")


not_callable = 42
