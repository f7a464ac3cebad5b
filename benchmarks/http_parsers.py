"""The HTTP/1.1 request parsers a WSGI server could use, timed on the requests of the WSGI
benchmark: httptools (llhttp, C) through prefork's own RequestReader, and h11 (pure Python).

Run it (h11 from PyPI: ``pip install h11``)::

    python benchmarks/http_parsers.py [--requests 200000]

It parses wrk's request (``GET / HTTP/1.1``, Host, ``Connection: close``) and a browser-like
request with 10 headers, each fed whole, the way a worker reads them, and prints the
microseconds per request and the ratio h11/httptools. prefork uses httptools
(``prefork/wsgi/reader.py``).
"""

from __future__ import annotations

import argparse
import importlib
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from prefork.wsgi.reader import RequestReader

WRK = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nConnection: close\r\n\r\n"
BROWSER = (
    b"GET /articles/2026/11/prefork?page=2 HTTP/1.1\r\nHost: example.test\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-GB,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n"
    b"Referer: https://example.test/articles\r\nCookie: session=abcdef0123456789; theme=dark\r\n"
    b"Upgrade-Insecure-Requests: 1\r\nSec-Fetch-Dest: document\r\nSec-Fetch-Mode: navigate\r\n\r\n"
)


def with_httptools(data: bytes) -> Callable[[], object]:
    sock = socket.socket()  # never read: the request is fed as if just received

    def parse() -> object:
        return RequestReader(sock, 4094, 100, 8190).next_request(data)

    return parse


def with_h11(data: bytes) -> Callable[[], object]:
    h11: Any = importlib.import_module("h11")  # optional: in the bench extra

    def parse() -> object:
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(data)
        event = conn.next_event()
        assert isinstance(event, h11.Request)
        return event

    return parse


def per_request(parse: Callable[[], object], count: int) -> float:
    """Microseconds per call of ``parse``, the best of 3 runs of ``count``."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(count):
            parse()
        best = min(best, time.perf_counter() - started)
    return best / count * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200_000, help="requests per timing (200000)")
    args = parser.parse_args()
    try:
        h11: Any = importlib.import_module("h11")
    except ImportError:
        print("h11 is not installed (pip install h11)", file=sys.stderr)
        return 2
    version = getattr(h11, "__version__", "?")
    print(f"Python {sys.version.split()[0]}, h11 {version}, {args.requests} requests per timing\n")
    print(f"{'request':<28} {'httptools (RequestReader)':>26} {'h11':>10} {'h11/httptools':>14}")
    for name, data in (("wrk's (2 headers)", WRK), ("a browser's (10 headers)", BROWSER)):
        fast = per_request(with_httptools(data), args.requests)
        slow = per_request(with_h11(data), args.requests // 4)
        print(f"{name:<28} {fast:>23.2f} us {slow:>7.2f} us {slow / fast:>13.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
