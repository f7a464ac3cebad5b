"""WSGI hello throughput: prefork's WSGI server (sync and thread workers) against gunicorn and uWSGI.

Run it (needs wrk; gunicorn: ``pip install ".[bench]"``; uWSGI: ``pip install pyuwsgi``)::

    python benchmarks/wsgi_hello.py [--duration 5] [--runs 1] [--workers 2] [--threads 25]
                                    [--only A,B] [--json PATH] [--check]

One WSGI app (``benchmarks/apps/wsgi_hello.py:app``: 200 ``Hello, world!\\n`` with
Content-Length) is served by each contender in turn, N workers each (``--workers``, 2), in its
own process group on a free 127.0.0.1 port, backlog 1024:

1. ``prefork-sync``: ``python -m prefork benchmarks/apps/wsgi_hello.py:app -k sync`` (one request
   per connection, answered with ``Connection: close``, as gunicorn's sync worker);
2. ``prefork-thread``: the same with ``-k thread --threads T`` (HTTP/1.1 keep-alive);
3. ``gunicorn-sync``: ``gunicorn -k sync -w N wsgi_hello:app``;
4. ``gunicorn-gthread``: ``gunicorn -k gthread -w N --threads T wsgi_hello:app``;
5. ``uwsgi``: uWSGI from pyuwsgi, as /work/shared/ANCHORS.md measured it: ``uwsgi --http-socket
   127.0.0.1:PORT --master --processes N --module wsgi_hello:app --disable-logging --die-on-term
   --listen 1024`` (``--pythonpath benchmarks/apps``, ``--need-app``);
6. ``uwsgi-thread``: the same with ``--http11-socket`` (uWSGI's keep-alive HTTP socket) and
   ``--threads T``, for the keep-alive figure. ``--threads T --http-keepalive`` on the
   ``--http-socket``, as ANCHORS.md measured "keep-alive", closes every connection all the same
   (``--http-keepalive`` is an option of uWSGI's HTTP router).

A contender whose server is not installed is skipped with a message. Each is loaded twice, after
a 1 s warm-up each: ``wrk -t2 -c50 -dD --latency -H 'Connection: close'`` (a connection per
request) and the same without the header (keep-alive, where the server allows it: the sync
workers and ``uwsgi`` answer with a close). ``--threads`` (25) is chosen so that N x T threads
hold all 50 keep-alive connections: a keep-alive connection holds a thread of ``prefork-thread``
and of ``uwsgi-thread``. Two uWSGI quirks show in the figures: ``uwsgi`` answers HTTP/1.1 without
``Connection: close`` and then closes, which wrk counts as a read error (its errors column counts
these, one per request: nothing is lost); ``uwsgi-thread`` ignores the request's ``Connection:
close`` and keeps the connection, so its close row is keep-alive in fact.

Contenders are interleaved over ``--runs``; the median is kept. It prints req/s, p50 and p99,
the ratios, and PASS/FAIL for the targets: prefork sync >= 2x gunicorn sync (close); prefork
thread >= 2x gunicorn gthread (keep-alive); prefork sync >= 0.6x uWSGI (close). A target whose
contenders did not both run fails.

Exit status: 0 when every measurement completed (a skipped contender is not a failure), 1 when a
server failed or a process outlived its group's SIGKILL (or, with ``--check``, a target
failed), 2 when wrk is missing.
"""

from __future__ import annotations

import argparse
import functools
import sys

from apps import harness

CONTENDERS = harness.WSGI_KINDS
LABELS = {
    "prefork-sync": "prefork sync",
    "prefork-thread": "prefork thread (T threads)",
    "gunicorn-sync": "gunicorn sync",
    "gunicorn-gthread": "gunicorn gthread (T threads)",
    "uwsgi": "uWSGI (processes, no threads)",
    "uwsgi-thread": "uWSGI (T threads, --http11-socket)",
}
TARGETS: tuple[harness.HelloTarget, ...] = (
    ("prefork sync >= 2.0x gunicorn sync (close)", "close", "prefork-sync", "gunicorn-sync", 2.0),
    (
        "prefork thread >= 2.0x gunicorn gthread (keep-alive)",
        "keepalive",
        "prefork-thread",
        "gunicorn-gthread",
        2.0,
    ),
    ("prefork sync >= 0.6x uWSGI (close)", "close", "prefork-sync", "uwsgi", 0.6),
)
PAIRS = (
    ("prefork-sync", "gunicorn-sync"),
    ("prefork-thread", "gunicorn-gthread"),
    ("prefork-sync", "uwsgi"),
    ("prefork-thread", "uwsgi-thread"),
)


def measure(kind: str, args: argparse.Namespace) -> harness.Figures:
    """Start one contender, load it in each mode, stop it."""
    port = harness.free_port()
    cmd = harness.wsgi_command(kind, "wsgi_hello:app", port, args.workers, args.threads, args.backlog)
    server = harness.Server(kind, cmd)
    return harness.load_modes(server, lambda: harness.http_ok(port), f"http://127.0.0.1:{port}/", args)


def main() -> int:
    args = harness.hello_parser(__doc__).parse_args()
    if harness.wrk_missing():
        return 2
    run = functools.partial(measure, args=args)
    return harness.hello_benchmark(args, CONTENDERS, run, LABELS, PAIRS, TARGETS)


if __name__ == "__main__":
    sys.exit(main())
