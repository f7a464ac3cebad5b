"""The built-in demo handler that ``prefork`` serves when given no target."""

from __future__ import annotations

import logging
import os
from http.server import BaseHTTPRequestHandler
from typing import Any

log = logging.getLogger("prefork.demo")


class DemoHandler(BaseHTTPRequestHandler):
    """GET or HEAD any path: ``Hello from prefork worker K (pid P)``, so you can see the pool.

    Try ``curl http://127.0.0.1:8000/``: one request at a time is usually answered by the
    same worker (the kernel wakes one idle worker per connection); requests sent at once
    are answered by several workers of the pool.
    """

    server_version = "prefork-demo"

    def do_GET(self) -> None:
        worker = getattr(self.server, "worker", None)
        number = "?" if worker is None else worker.number
        body = f"Hello from prefork worker {number} (pid {os.getpid()})\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Log each request on the ``prefork.demo`` logger at DEBUG (not on stderr)."""
        log.debug("%s %s", self.address_string(), format % args)
