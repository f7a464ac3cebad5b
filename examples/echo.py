r"""TCP line echo: each line a client sends comes back to it, until the client closes.

``EchoHandler`` is a plain ``socketserver.StreamRequestHandler``; prefork only replaces the
server class. A sync worker serves one connection at a time, so a pool of N workers serves N
clients at once.

Serve it with the ``prefork`` command::

    prefork examples/echo.py:EchoHandler --bind 127.0.0.1:9000 --workers 4

or run this file, which uses ``PreforkTCPServer`` (arguments: ``[PORT] [--host HOST]
[--workers N]``; port 0 picks a free port, logged on stderr)::

    python examples/echo.py 9000 --workers 4

Try it::

    printf 'hi\nthere\n' | nc -N 127.0.0.1 9000    # -N: close after the input (OpenBSD nc)
    nc 127.0.0.1 9000                              # or type lines (Ctrl-C to quit)

Stop it with Ctrl-C (fast stop) or ``kill -TERM`` the master (graceful stop).
"""

from __future__ import annotations

import argparse
import logging
import socketserver
from collections.abc import Sequence

from prefork import PreforkTCPServer

#: The longest line echoed (bytes): every read from the network is bounded.
MAX_LINE = 65536


class EchoHandler(socketserver.StreamRequestHandler):
    """Write back each line read, as soon as it is complete, until EOF. A line longer than
    ``MAX_LINE`` bytes ends the connection (a client must not grow the worker without bound)."""

    def handle(self) -> None:
        while line := self.rfile.readline(MAX_LINE + 1):
            if len(line) > MAX_LINE:
                self.wfile.write(b"error: line too long\n")
                return
            self.wfile.write(line)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve ``EchoHandler`` from a ``PreforkTCPServer`` until stopped."""
    parser = argparse.ArgumentParser(description="TCP line echo served by a pool of preforked workers.")
    parser.add_argument("port", nargs="?", type=int, default=9000, help="TCP port (default 9000; 0: any)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("-w", "--workers", type=int, help="worker processes (default: one per CPU)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(process)d] %(message)s")
    with PreforkTCPServer((args.host, args.port), EchoHandler, workers=args.workers) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
