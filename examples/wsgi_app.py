"""WSGI: a WSGI application served by ``wsgiref`` from a pool of preforked workers.

``PreforkMixIn`` goes in front of ``wsgiref.simple_server.WSGIServer``; the app is set with
``set_app()`` before ``serve_forever()`` forks the pool, so every worker inherits it. The
environ says ``wsgi.multiprocess`` is true, which is right here. ``app`` stands for any WSGI
application (a Flask or Django app object is served the same way).

Run this file (arguments: ``[PORT] [--host HOST] [--workers N]``; port 0 picks a free port,
logged on stderr)::

    python examples/wsgi_app.py 8003 --workers 4

Try it (run it a few times: the pid changes with the worker that answers)::

    curl http://127.0.0.1:8003/
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.types import StartResponse, WSGIEnvironment

from prefork import PreforkMixIn

log = logging.getLogger("wsgi_app")


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI application: ``200 Hello from WSGI (worker pid P), path PATH``."""
    body = f"Hello from WSGI (worker pid {os.getpid()}), path {environ['PATH_INFO']}\n".encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    start_response("200 OK", headers)
    return [body]


class PreforkWSGIServer(PreforkMixIn, WSGIServer):
    """``wsgiref``'s ``WSGIServer`` whose requests are served by a pool of preforked workers."""


class RequestHandler(WSGIRequestHandler):
    """wsgiref's handler, logging each request through ``logging`` instead of to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve ``app`` until stopped."""
    parser = argparse.ArgumentParser(description="A WSGI app served by a pool of preforked workers.")
    parser.add_argument("port", nargs="?", type=int, default=8003, help="TCP port (default 8003; 0: any)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("-w", "--workers", type=int, help="worker processes (default: one per CPU)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(process)d] %(message)s")
    with PreforkWSGIServer((args.host, args.port), RequestHandler, workers=args.workers) as server:
        server.set_app(app)
        server.serve_forever()


if __name__ == "__main__":
    main()
