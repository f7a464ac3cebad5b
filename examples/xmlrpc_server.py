r"""XML-RPC: ``xmlrpc.server.SimpleXMLRPCServer`` served by a pool of preforked workers.

``PreforkMixIn`` goes in front of any socketserver server class, here the stdlib's XML-RPC
server. Functions are registered in the master before ``serve_forever()`` forks the pool, so
every worker inherits them. ``pid`` tells which worker answered a call.

Run this file (arguments: ``[PORT] [--host HOST] [--workers N]``; port 0 picks a free port,
logged on stderr)::

    python examples/xmlrpc_server.py 8002 --workers 4

Try it::

    python -c "import xmlrpc.client as x; p = x.ServerProxy('http://127.0.0.1:8002/'); \
        print(p.add(2, 3), p.pid(), p.system.listMethods())"
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from xmlrpc.server import SimpleXMLRPCServer

from prefork import PreforkMixIn


class PreforkXMLRPCServer(PreforkMixIn, SimpleXMLRPCServer):
    """``SimpleXMLRPCServer`` whose requests are served by a pool of preforked workers."""


def add(a: int, b: int) -> int:
    """Return ``a + b``."""
    return a + b


def pid() -> int:
    """Return the pid of the worker that serves the call."""
    return os.getpid()


def make_server(address: tuple[str, int], workers: int | None = None) -> PreforkXMLRPCServer:
    """Create the server, bound to ``address``, with ``add``, ``pid`` and ``system.*``."""
    server = PreforkXMLRPCServer(address, workers=workers)
    server.register_introspection_functions()
    server.register_function(add)
    server.register_function(pid)
    return server


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the XML-RPC functions until stopped."""
    parser = argparse.ArgumentParser(description="XML-RPC server served by a pool of preforked workers.")
    parser.add_argument("port", nargs="?", type=int, default=8002, help="TCP port (default 8002; 0: any)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("-w", "--workers", type=int, help="worker processes (default: one per CPU)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(process)d] %(message)s")
    with make_server((args.host, args.port), args.workers) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
