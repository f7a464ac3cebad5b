"""Where a WSGI request's time goes in prefork's HTTP/1.1 path (prefork/wsgi/), in-process.

Run it::

    python benchmarks/wsgi_profile.py [--requests 20000] [--top 15]

A socket pair stands for each connection: wrk's request (``GET / HTTP/1.1``, Host,
``Connection: close``) is written to one end, and ``WSGIRequestHandler`` serves the hello app
(benchmarks/apps/wsgi_hello.py) on the other, as a sync worker does after accept. It prints the
microseconds per request of the handler alone (no profiler), then cProfile's functions by
their own time (tottime), which the profiler inflates but ranks. The engine's part around it
(accept, the scoreboard, the socket timeout) is measured by benchmarks/request_cost.py.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from apps.wsgi_hello import app

from prefork.wsgi import WSGIRequestHandler, wsgi_handler
from prefork.wsgi.application import WSGIServerMixIn

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nConnection: close\r\n\r\n"


class Server(WSGIServerMixIn):
    """What the handler reads of a PreforkWSGIServer, with its defaults."""

    server_address = ("127.0.0.1", 8000)
    edge = None
    keepalive = 2.0
    limit_request_line = 4094
    limit_request_fields = 100
    limit_request_field_size = 8190
    root_path = ""
    forwarded_allow_ips = None
    forwarded_header = "x-forwarded-for"
    access = None
    worker = None


def serve(count: int, handler: type[WSGIRequestHandler], server: Any) -> None:
    for _ in range(count):
        ours, theirs = socket.socketpair()
        theirs.sendall(REQUEST)
        handler(ours, ("127.0.0.1", 50000), server)
        ours.close()
        theirs.recv(4096)
        theirs.close()


def baseline(count: int) -> None:
    """The same socket pairs and I/O with no HTTP work: what the loop itself costs."""
    for _ in range(count):
        ours, theirs = socket.socketpair()
        theirs.sendall(REQUEST)
        ours.recv(65536)
        ours.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
        ours.close()
        theirs.recv(4096)
        theirs.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    handler, server = wsgi_handler(app), Server()
    serve(1000, handler, server)  # warm: the environ's base, the header-name cache
    timings = {}
    runs: dict[str, Callable[[int], None]] = {
        "loop and I/O only": baseline,
        "WSGI handler": lambda count: serve(count, handler, server),
    }
    for name, run in runs.items():
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            run(args.requests)
            best = min(best, time.perf_counter() - started)
        timings[name] = best / args.requests * 1e6
    print(f"Python {sys.version.split()[0]}, {args.requests} requests, best of 3")
    for name, micros in timings.items():
        print(f"  {name:<20} {micros:6.2f} us/request")
    work = timings["WSGI handler"] - timings["loop and I/O only"]
    print(f"  {'HTTP and WSGI work':<20} {work:6.2f} us/request\n")
    profile = cProfile.Profile()
    profile.runcall(serve, args.requests, handler, server)
    stats = pstats.Stats(profile)
    stats.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
