"""WSGI: a WSGI application served by a pool of preforked workers.

``app`` stands for any WSGI application (a Flask or Django app object is served the same way).
Serve it with the ``prefork`` command, as with ``gunicorn examples.wsgi_app:app``::

    prefork examples/wsgi_app.py:app --bind 127.0.0.1:8003 --workers 4
    prefork examples/wsgi_app.py:app --bind 127.0.0.1:8003 -k thread --threads 8   # keep-alive

or run this file, which does the same in code with ``PreforkWSGIServer`` (arguments:
``[PORT] [--host HOST] [--workers N]``; port 0 picks a free port, logged on stderr)::

    python examples/wsgi_app.py 8003 --workers 4

Try it (run it a few times: the pid changes with the worker that answers)::

    curl http://127.0.0.1:8003/
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterable, Sequence
from wsgiref.types import StartResponse, WSGIEnvironment

from prefork.wsgi import PreforkWSGIServer


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI application: ``200 Hello from WSGI (worker pid P), path PATH``."""
    body = f"Hello from WSGI (worker pid {os.getpid()}), path {environ['PATH_INFO']}\n".encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    start_response("200 OK", headers)
    return [body]


def main(argv: Sequence[str] | None = None) -> None:
    """Serve ``app`` until stopped, each request logged (``access_log``)."""
    parser = argparse.ArgumentParser(description="A WSGI app served by a pool of preforked workers.")
    parser.add_argument("port", nargs="?", type=int, default=8003, help="TCP port (default 8003; 0: any)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("-w", "--workers", type=int, help="worker processes (default: one per CPU)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(process)d] %(message)s")
    with PreforkWSGIServer((args.host, args.port), workers=args.workers, access_log="-") as server:
        server.set_app(app)
        server.serve_forever()


if __name__ == "__main__":
    main()
