"""HTTP hello world: ``BaseHTTPRequestHandler`` served by a pool of preforked workers.

``HelloHandler`` is a plain ``http.server.BaseHTTPRequestHandler``; its answer names the
worker process that served it, so repeated requests show the pool at work.

Serve it with the ``prefork`` command (an http.server handler gets a ``PreforkHTTPServer``)::

    prefork examples/http_hello.py:HelloHandler --bind 127.0.0.1:8000 --workers 4

or run this file, which uses ``PreforkHTTPServer`` (arguments: ``[PORT] [--host HOST]
[--workers N]``; port 0 picks a free port, logged on stderr)::

    python examples/http_hello.py 8000 --workers 4

Try it (run it a few times: the pid changes with the worker that answers)::

    curl http://127.0.0.1:8000/
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler

from prefork import PreforkHTTPServer


class HelloHandler(BaseHTTPRequestHandler):
    """GET any path: ``200 Hello, world! (worker pid P)``."""

    def do_GET(self) -> None:
        body = f"Hello, world! (worker pid {os.getpid()})\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve ``HelloHandler`` from a ``PreforkHTTPServer`` until stopped."""
    parser = argparse.ArgumentParser(description="HTTP hello world served by a pool of preforked workers.")
    parser.add_argument("port", nargs="?", type=int, default=8000, help="TCP port (default 8000; 0: any)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("-w", "--workers", type=int, help="worker processes (default: one per CPU)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(process)d] %(message)s")
    with PreforkHTTPServer((args.host, args.port), HelloHandler, workers=args.workers) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
