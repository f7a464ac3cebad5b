"""UDP echo: each datagram is sent back to where it came from.

``EchoHandler`` is a plain ``socketserver.DatagramRequestHandler``: ``rfile`` holds the
datagram, and what is written to ``wfile`` goes back as one datagram. The workers share one
UDP socket; each datagram is received, and answered, by exactly one of them.

Serve it with the ``prefork`` command (a DatagramRequestHandler makes it serve UDP on every
``--bind`` address, as ``--udp`` would; ``udp://`` says so explicitly)::

    prefork examples/udp_echo.py:EchoHandler --bind udp://127.0.0.1:9001 --workers 4

or run this file, which uses ``PreforkUDPServer`` (arguments: ``[PORT] [--host HOST]
[--workers N]``; port 0 picks a free port, logged on stderr)::

    python examples/udp_echo.py 9001 --workers 4

Try it (``-w 1``: wait one second for the answer, then quit)::

    printf 'hi' | nc -u -w 1 127.0.0.1 9001
"""

from __future__ import annotations

import argparse
import logging
import socketserver
from collections.abc import Sequence

from prefork import PreforkUDPServer


class EchoHandler(socketserver.DatagramRequestHandler):
    """Answer each datagram with the same bytes."""

    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


def main(argv: Sequence[str] | None = None) -> None:
    """Serve ``EchoHandler`` from a ``PreforkUDPServer`` until stopped."""
    parser = argparse.ArgumentParser(description="UDP echo served by a pool of preforked workers.")
    parser.add_argument("port", nargs="?", type=int, default=9001, help="UDP port (default 9001; 0: any)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("-w", "--workers", type=int, help="worker processes (default: one per CPU)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(process)d] %(message)s")
    with PreforkUDPServer((args.host, args.port), EchoHandler, workers=args.workers) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
