"""WSGI hello throughput: prefork (wsgiref's handler; sync and thread workers) against gunicorn.

Run it (needs wrk, and gunicorn: ``pip install ".[bench]"``)::

    python benchmarks/wsgi_hello.py [--duration 5] [--runs 1] [--workers 2] [--threads 25] [--json PATH]

One WSGI app (``benchmarks/apps/wsgi_hello.py:app``: 200 ``Hello, world!\\n``) is served by
each contender in turn, each in its own process group on a free 127.0.0.1 port, backlog 1024:

1. ``prefork-sync``: ``python -m prefork benchmarks/apps/wsgi_hello.py:Handler -k sync``
   (wsgiref's ``WSGIRequestHandler`` and ``ServerHandler`` around the app; one request per
   connection, as gunicorn's sync worker);
2. ``prefork-thread``: ``...:KeepAliveHandler -k thread --threads T`` (HTTP/1.1 keep-alive;
   skipped with a message when this prefork rejects ``-k thread``);
3. ``gunicorn-sync``: ``gunicorn -k sync -w N wsgi_hello:app``;
4. ``gunicorn-gthread``: ``gunicorn -k gthread -w N --threads T wsgi_hello:app``.

Each is loaded twice, after a 1 s warm-up each: ``wrk -t2 -c50 -dD --latency -H 'Connection:
close'`` (a connection per request) and the same without the header (keep-alive, where the
server allows it: both sync workers answer with a close). ``--threads`` (25) is chosen so that
N x T threads hold all 50 keep-alive connections: a ``thread`` worker's keep-alive connection
holds one thread, as ``http.server``'s do. Contenders are interleaved over ``--runs``; the median
is kept. It prints req/s, p50 and p99, and the ratios prefork/gunicorn.

Exit status: 0 when every measurement completed (a skipped contender is not a failure), 1 when a
server failed or a process outlived its group's SIGKILL (or, with ``--check``, a target
failed), 2 when wrk is missing.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

from apps import harness

CONTENDERS = ("prefork-sync", "prefork-thread", "gunicorn-sync", "gunicorn-gthread")
LABELS = {
    "prefork-sync": "prefork sync, wsgiref handler",
    "prefork-thread": "prefork thread (T threads), wsgiref handler",
    "gunicorn-sync": "gunicorn sync",
    "gunicorn-gthread": "gunicorn gthread (T threads)",
}
MODES = ("close", "keepalive")
# (target, mode, prefork contender, gunicorn contender, minimum ratio)
TARGETS = (
    ("prefork sync >= 1.2x gunicorn sync (close)", "close", "prefork-sync", "gunicorn-sync", 1.2),
    (
        "prefork thread >= 1.0x gunicorn gthread (keep-alive)",
        "keepalive",
        "prefork-thread",
        "gunicorn-gthread",
        1.0,
    ),
)
PAIRS = (
    ("prefork-sync", "gunicorn-sync"),
    ("prefork-thread", "gunicorn-gthread"),
    ("prefork-sync", "gunicorn-gthread"),
    ("prefork-thread", "gunicorn-sync"),
)


def command(kind: str, port: int, args: argparse.Namespace) -> list[str]:
    n, t = str(args.workers), str(args.threads)
    if kind.startswith("prefork"):
        target = os.path.join(
            harness.APPS_DIR, "wsgi_hello.py:" + ("Handler" if kind == "prefork-sync" else "KeepAliveHandler")
        )
        cmd = [sys.executable, "-m", "prefork", target, "--bind", f"127.0.0.1:{port}", "-w", n]
        cmd += ["--backlog", str(args.backlog), "--log-level", "warning"]
        return cmd + (["-k", "sync"] if kind == "prefork-sync" else ["-k", "thread", "--threads", t])
    gunicorn = harness.gunicorn_command()
    if gunicorn is None:
        raise harness.Skip(f"{kind}: gunicorn is not installed (pip install '.[bench]')")
    cmd = [*gunicorn, "-b", f"127.0.0.1:{port}", "-w", n, "--backlog", str(args.backlog)]
    cmd += ["--chdir", harness.APPS_DIR, "--log-level", "warning"]
    cmd += ["-k", "sync"] if kind == "gunicorn-sync" else ["-k", "gthread", "--threads", t]
    return [*cmd, "wsgi_hello:app"]


def measure(kind: str, args: argparse.Namespace) -> harness.Figures:
    """Start one contender, load it in each mode, stop it."""
    port = harness.free_port()
    server = harness.Server(kind, command(kind, port, args))
    out: harness.Figures = {}
    try:
        server.wait_ready(lambda: harness.http_ok(port))
        url = f"http://127.0.0.1:{port}/"
        for mode in MODES:
            out[mode] = harness.run_wrk(url, args.duration, args.connections, mode == "keepalive")
    finally:
        out["left"] = server.stop()
    return out


def main() -> int:
    args = harness.hello_parser(__doc__).parse_args()
    if harness.wrk_missing():
        return 2
    kinds = harness.chosen(CONTENDERS, args.only)
    m = harness.machine()
    wrk = {mode: harness.wrk_line(args.duration, args.connections, mode == "keepalive") for mode in MODES}
    print(harness.machine_line(m))
    for mode in MODES:
        print(f"wrk ({mode}): {wrk[mode]}", "(1 s warm-up first)")
    print(f"workers {args.workers}, threads {args.threads}, backlog {args.backlog}, runs {args.runs}\n")

    runs, tally = harness.interleaved_runs(
        kinds, args.runs, functools.partial(measure, args=args), harness.show_rps_by_mode(MODES), 17
    )
    summary = harness.medians_by_mode(runs, MODES, ("rps", "p50_ms", "p99_ms", "socket_errors", "non_2xx"))
    labels = {kind: label.replace("T threads", f"{args.threads} threads") for kind, label in LABELS.items()}
    harness.print_mode_table(summary, MODES, labels, 45, ("socket_errors", "non_2xx"))
    ratios = harness.mode_ratios(summary, MODES, PAIRS)
    harness.print_ratios(ratios, 45)
    verdicts = [
        harness.ratio_target(name, ratios[f"{a}/{b} ({mode})"], minimum)
        for name, mode, a, b, minimum in TARGETS
    ]
    harness.print_verdicts(verdicts)
    harness.print_skipped(tally.skipped)

    report = {
        "machine": m,
        "wrk": wrk,
        "settings": vars(args),
        "runs": runs,
        "summary": summary,
        "ratios": ratios,
        "targets": verdicts,
        "skipped": tally.skipped,
    }
    harness.write_json(args.json, report)
    return harness.exit_status(tally.failed, args.check, verdicts)


if __name__ == "__main__":
    sys.exit(main())
