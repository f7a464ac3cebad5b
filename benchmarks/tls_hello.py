"""HTTPS hello throughput: prefork's TLS against gunicorn's, same certificate, same workers.

Run it (needs wrk, gunicorn and trustme: ``pip install ".[bench,test]"``)::

    python benchmarks/tls_hello.py [--duration 5] [--runs 1] [--workers 2] [--threads 25]
                                   [--json PATH] [--check]

One WSGI app (``benchmarks/apps/wsgi_hello.py:app``: 200 ``Hello, world!\\n``) and one
certificate for 127.0.0.1 (made with ``trustme`` for this run: RSA 2048, as its default) are
served by each contender in turn, each in its own process group on a free 127.0.0.1 port:

1. ``prefork-sync``: ``python -m prefork benchmarks/apps/wsgi_hello.py:app -k sync --certfile C
   --keyfile K`` (prefork's WSGI server; one context built in the master before the fork);
2. ``prefork-sync-http``: the same without TLS, for the plain-HTTP figure beside;
3. ``gunicorn-sync``: ``gunicorn -k sync -w N --certfile C --keyfile K wsgi_hello:app``;
4. ``prefork-thread``: ``...:app -k thread --threads T --certfile C --keyfile K``;
5. ``gunicorn-gthread``: ``gunicorn -k gthread --threads T --certfile C --keyfile K``.

Each is loaded with a connection per request (``wrk -t2 -c50 -dD --latency -H 'Connection:
close'``: a TLS handshake per request), then with keep-alive (the same without the header:
handshakes only when wrk opens its 50 connections; both sync workers close after each answer
anyway), after a 1 s warm-up each. Contenders are interleaved over ``--runs``; the median is
kept. It prints req/s, p50 and p99, the ratios and PASS/FAIL for the targets (issue
"Production edge"): prefork sync >= 2x gunicorn sync over HTTPS with a connection per
request; prefork thread >= 1x gunicorn gthread over HTTPS with keep-alive.

Exit status: 0 when every measurement completed (a skipped contender is not a failure), 1 when a
server failed or a process outlived its group (or, with ``--check``, a target failed), 2 when
wrk is missing.
"""

from __future__ import annotations

import argparse
import functools
import os
import socket
import ssl
import sys
import tempfile

import trustme
from apps import harness

CONTENDERS = ("prefork-sync", "prefork-sync-http", "gunicorn-sync", "prefork-thread", "gunicorn-gthread")
LABELS = {
    "prefork-sync": "prefork sync, HTTPS",
    "prefork-sync-http": "prefork sync, plain HTTP",
    "gunicorn-sync": "gunicorn sync, HTTPS",
    "prefork-thread": "prefork thread (T threads), HTTPS",
    "gunicorn-gthread": "gunicorn gthread (T threads), HTTPS",
}
TARGETS: tuple[harness.HelloTarget, ...] = (
    (
        "prefork sync >= 2x gunicorn sync (HTTPS, a connection per request)",
        "close",
        "prefork-sync",
        "gunicorn-sync",
        2.0,
    ),
    (
        "prefork thread >= 1x gunicorn gthread (HTTPS, keep-alive)",
        "keepalive",
        "prefork-thread",
        "gunicorn-gthread",
        1.0,
    ),
)
PAIRS = (
    ("prefork-sync", "gunicorn-sync"),
    ("prefork-thread", "gunicorn-gthread"),
    ("prefork-sync", "prefork-sync-http"),
)


def https_ok(port: int, tls: bool) -> bool:
    """True when GET / on 127.0.0.1:port (over TLS, unverified: a readiness probe) answers 200."""
    if not tls:
        return harness.http_ok(port)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
            with context.wrap_socket(raw) as conn:
                conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
                return conn.recv(64).startswith(b"HTTP/1.")
    except OSError:
        return False


def measure(kind: str, args: argparse.Namespace) -> harness.Figures:
    """Start one contender, load it in each mode, stop it."""
    port = harness.free_port()
    tls = not kind.endswith("-http")
    options = ["--certfile", args.certfile, "--keyfile", args.keyfile] if tls else []
    base = kind.removesuffix("-http")
    cmd = harness.wsgi_command(
        base, "wsgi_hello:app", port, args.workers, args.threads, args.backlog, options
    )
    server = harness.Server(kind, cmd)
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/"
    return harness.load_modes(server, lambda: https_ok(port, tls), url, args)


def main() -> int:
    args = harness.hello_parser(__doc__).parse_args()
    if harness.wrk_missing():
        return 2
    with tempfile.TemporaryDirectory(prefix="tls-hello-") as tmp:
        ca = trustme.CA()
        issued = ca.issue_cert("127.0.0.1")
        args.certfile, args.keyfile = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        issued.cert_chain_pems[0].write_to_path(args.certfile)
        issued.private_key_pem.write_to_path(args.keyfile)
        run = functools.partial(measure, args=args)
        note = "; a trustme certificate"
        return harness.hello_benchmark(args, CONTENDERS, run, LABELS, PAIRS, TARGETS, note)


if __name__ == "__main__":
    sys.exit(main())
