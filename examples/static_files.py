"""Static files: ``http.server.SimpleHTTPRequestHandler`` served by a pool of preforked workers.

The stdlib handler is used unmodified; ``functools.partial`` gives it the directory to serve,
as ``python -m http.server --directory DIR`` does. GET and HEAD serve the files under DIR, an
index page for a directory without ``index.html``, and 404 for what does not exist.

Run this file (arguments: ``DIR [PORT] [--host HOST] [--workers N]``; port 0 picks a free
port, logged on stderr)::

    python examples/static_files.py ./public 8001 --workers 4

Try it::

    curl http://127.0.0.1:8001/               # the index of ./public
    curl -O http://127.0.0.1:8001/some/file   # a file under ./public

To serve the current directory, the ``prefork`` command alone is enough::

    prefork http.server:SimpleHTTPRequestHandler --bind 127.0.0.1:8001

Like ``python -m http.server``, this is for development: it makes no attempt at access control.
"""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Sequence
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

from prefork import PreforkHTTPServer


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the files of DIR from a ``PreforkHTTPServer`` until stopped."""
    parser = argparse.ArgumentParser(description="Serve a directory from a pool of preforked workers.")
    parser.add_argument("directory", metavar="DIR", type=Path, help="the directory to serve")
    parser.add_argument("port", nargs="?", type=int, default=8001, help="TCP port (default 8001; 0: any)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("-w", "--workers", type=int, help="worker processes (default: one per CPU)")
    args = parser.parse_args(argv)
    if not args.directory.is_dir():
        parser.error(f"{args.directory} is not a directory")
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(process)d] %(message)s")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(args.directory.resolve()))
    with PreforkHTTPServer((args.host, args.port), handler, workers=args.workers) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
