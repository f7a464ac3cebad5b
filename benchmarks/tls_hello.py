"""HTTPS hello throughput: prefork's TLS against gunicorn's, same certificate, same workers.

Run it (needs wrk, gunicorn and trustme: ``pip install ".[bench,test]"``)::

    python benchmarks/tls_hello.py [--duration 5] [--runs 1] [--workers 2] [--threads 25]
                                   [--json PATH] [--check]

One WSGI app (``benchmarks/apps/wsgi_hello.py:app``: 200 ``Hello, world!\\n``) and one
certificate for 127.0.0.1 (made with ``trustme`` for this run: RSA 2048, as its default) are
served by each contender in turn, each in its own process group on a free 127.0.0.1 port:

1. ``prefork-sync``: ``python -m prefork benchmarks/apps/wsgi_hello.py:Handler -k sync
   --certfile C --keyfile K`` (one context built in the master before the fork);
2. ``prefork-sync-http``: the same without TLS, for the plain-HTTP figure beside;
3. ``gunicorn-sync``: ``gunicorn -k sync -w N --certfile C --keyfile K wsgi_hello:app``;
4. ``prefork-thread``: ``...:KeepAliveHandler -k thread --threads T --certfile C --keyfile K``;
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
from typing import Any

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
MODES = ("close", "keepalive")
TARGETS = (
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


def command(kind: str, port: int, args: argparse.Namespace) -> list[str]:
    n, t = str(args.workers), str(args.threads)
    tls = [] if kind.endswith("-http") else ["--certfile", args.certfile, "--keyfile", args.keyfile]
    if kind.startswith("prefork"):
        handler = "Handler" if kind.startswith("prefork-sync") else "KeepAliveHandler"
        target = os.path.join(harness.APPS_DIR, f"wsgi_hello.py:{handler}")
        cmd = [sys.executable, "-m", "prefork", target, "--bind", f"127.0.0.1:{port}", "-w", n, *tls]
        cmd += ["--backlog", str(args.backlog), "--log-level", "warning"]
        return cmd + (["-k", "sync"] if kind.startswith("prefork-sync") else ["-k", "thread", "--threads", t])
    gunicorn = harness.gunicorn_command()
    if gunicorn is None:
        raise harness.Skip(f"{kind}: gunicorn is not installed (pip install '.[bench]')")
    cmd = [*gunicorn, "-b", f"127.0.0.1:{port}", "-w", n, "--backlog", str(args.backlog), *tls]
    cmd += ["--chdir", harness.APPS_DIR, "--log-level", "warning"]
    cmd += ["-k", "sync"] if kind == "gunicorn-sync" else ["-k", "gthread", "--threads", t]
    return [*cmd, "wsgi_hello:app"]


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
    server = harness.Server(kind, command(kind, port, args))
    out: harness.Figures = {}
    try:
        server.wait_ready(lambda: https_ok(port, tls))
        url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/"
        for mode in MODES:
            out[mode] = harness.run_wrk(url, args.duration, args.connections, mode == "keepalive")
    finally:
        out["left"] = server.stop()
    return out


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
        return run(args)


def run(args: argparse.Namespace) -> int:
    kinds = harness.chosen(CONTENDERS, args.only)
    m = harness.machine()
    print(harness.machine_line(m))
    for mode in MODES:
        print(f"wrk ({mode}): {harness.wrk_line(args.duration, args.connections, mode == 'keepalive')}")
    print(f"workers {args.workers}, threads {args.threads}, runs {args.runs}; a trustme certificate\n")
    runs, tally = harness.interleaved_runs(
        kinds, args.runs, functools.partial(measure, args=args), harness.show_rps_by_mode(MODES), 17
    )
    summary = harness.medians_by_mode(runs, MODES, ("rps", "p50_ms", "p99_ms", "socket_errors", "non_2xx"))
    labels = {kind: label.replace("T threads", f"{args.threads} threads") for kind, label in LABELS.items()}
    harness.print_mode_table(summary, MODES, labels, 45, ("socket_errors", "non_2xx"))
    ratios = harness.mode_ratios(summary, MODES, PAIRS)
    harness.print_ratios(ratios, 45)
    verdicts = [
        harness.ratio_target(name, ratios.get(f"{a}/{b} ({mode})"), minimum)
        for name, mode, a, b, minimum in TARGETS
    ]
    harness.print_verdicts(verdicts)
    harness.print_skipped(tally.skipped)
    report: dict[str, Any] = {
        "machine": m,
        "settings": {k: v for k, v in vars(args).items() if "file" not in k},
        "runs": runs,
    }
    report |= {"summary": summary, "ratios": ratios, "targets": verdicts, "skipped": tally.skipped}
    harness.write_json(args.json, report)
    return harness.exit_status(tally.failed, args.check, verdicts)


if __name__ == "__main__":
    sys.exit(main())
