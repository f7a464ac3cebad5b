"""A raw TCP handler: read a request line, write a fixed reply line, until the client closes.

With a connection per request the second ``readline`` meets EOF and the handler returns; with
keep-alive it answers every line. ``python -m prefork benchmarks/apps/raw_line.py:Handler``.
"""

from __future__ import annotations

import socketserver

REPLY = b"HTTP/1.0 200 OK Hello, world!\n"


class Handler(socketserver.StreamRequestHandler):
    """One fixed reply (one ``sendall``) per request line."""

    def handle(self) -> None:
        for _line in self.rfile:
            self.wfile.write(REPLY)
