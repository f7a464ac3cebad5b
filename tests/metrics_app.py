"""A handler that counts its requests with prefork.metrics (served by tests/test_observer.py).

The counter is declared at import, as an application does: in the master with ``--preload``,
in each worker without it."""

from __future__ import annotations

import os
import socketserver

from prefork.metrics import Counter, Histogram

HITS = Counter("app_hits", "Requests answered by the test application", labelnames=("kind",))
SIZES = Histogram("app_line_bytes", "Bytes per request line", buckets=(4, 16, 64))


class CountingHandler(socketserver.StreamRequestHandler):
    """Reads one line, counts it, answers ``PID LINE``."""

    def handle(self) -> None:
        line = self.rfile.readline()
        HITS.labels(kind="line").inc()
        SIZES.observe(len(line))
        self.wfile.write(f"{os.getpid()} ".encode() + line)
