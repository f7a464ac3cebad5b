"""Raw TCP throughput: prefork.PreforkTCPServer against a bare fork loop, same handler, one run.

Run it::

    python benchmarks/raw_tcp.py [--duration 5] [--runs 1] [--workers 2] [--json PATH] [--check]

The handler (``benchmarks/apps/raw_line.py:Handler``, a ``StreamRequestHandler``) reads a
request line and writes a fixed reply line, until the client closes. It is served, each in its
own process group on a free 127.0.0.1 port with the same backlog, by:

1. ``prefork``: ``prefork.PreforkTCPServer`` with ``--workers`` sync workers;
2. ``prefork-no-timeout``: the same with ``socket_timeout=0``, no socket timeout, as the bare
   loop (the default 10 s timeout makes each connection a ``prefork.connections.RequestSocket``,
   whose ``recv_into`` and ``sendall`` are Python methods: a cost per call, which keep-alive
   mode, with a tiny handler, shows);
3. ``bare``: ``--workers`` forked children each running stdlib ``TCPServer.serve_forever()``
   on one inherited listening socket, the floor of what any engine adds.

The load is the project's own generator (``python -m prefork bench --address 127.0.0.1:PORT
--protocol line --payload ping``), 1 s warm-up then ``--duration`` s, in two modes:

- ``close``: a connection per request, ``--concurrency`` (50) in flight;
- ``keepalive``: ``--keepalive`` with one connection per worker (a sync worker serves one
  connection at a time, so more connections would only wait in the backlog).

Contenders are interleaved over ``--runs`` and the median is kept. The load generator is Python
and shares the cores, so it is often the bottleneck: compare the ratio, not req/s with wrk's.

Exit status: 0 when every measurement completed, 1 when a server or the load generator failed
or a process outlived its group's SIGKILL (or, with ``--check``, the target failed).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import socketserver
import subprocess
import sys
import tempfile

from apps import harness
from apps.raw_line import Handler

import prefork

CONTENDERS = ("prefork", "prefork-no-timeout", "bare")
LABELS = {
    "prefork": "prefork.PreforkTCPServer (sync)",
    "prefork-no-timeout": "the same, socket_timeout=0",
    "bare": "bare fork loop (TCPServer.serve_forever)",
}
MODES = ("close", "keepalive")
TARGET = ("prefork >= 0.95x bare (close)", 0.95)


def serve(kind: str, workers: int, backlog: int) -> None:
    """Bind 127.0.0.1:0, print the port on stdout, serve until signalled."""
    addr = ("127.0.0.1", 0)
    if kind.startswith("prefork"):
        timeout = {"socket_timeout": 0} if kind == "prefork-no-timeout" else {}
        server = prefork.PreforkTCPServer(
            addr, Handler, workers=workers, request_queue_size=backlog, **timeout
        )
        harness.print_port(server)
        server.serve_forever()
    else:
        bare = type("BareTCP", (socketserver.TCPServer,), {"request_queue_size": backlog})(addr, Handler)
        harness.serve_bare(bare, workers)


def loadgen_cmd(port: int, duration: float, concurrency: int, keepalive: bool, out: str) -> list[str]:
    cmd = [sys.executable, "-m", "prefork", "bench", "--address", f"127.0.0.1:{port}", "--protocol", "line"]
    cmd += ["--payload", "ping", "--expect", "Hello", "--concurrency", str(concurrency)]
    cmd += ["--duration", f"{duration:g}s", "--warmup", "1s", "--rounds", "1", "--out", out]
    return cmd + (["--keepalive"] if keepalive else [])


def load(port: int, duration: float, concurrency: int, keepalive: bool) -> harness.Figures:
    with tempfile.TemporaryDirectory(prefix="raw-tcp-") as tmp:
        out = os.path.join(tmp, "run.json")
        res = subprocess.run(
            loadgen_cmd(port, duration, concurrency, keepalive, out),
            capture_output=True,
            text=True,
            timeout=duration + 60,
            stdin=subprocess.DEVNULL,
        )
        if res.returncode != 0:
            raise RuntimeError(f"load generator exited {res.returncode}: {res.stderr.strip()[-500:]}")
        with open(out) as fh:
            run = json.load(fh)["runs"][0]
    keys = ("rps", "p50_ms", "p99_ms", "errors", "requests", "machine_cpu_percent", "client_saturated")
    return {k: run.get(k) for k in keys}


def measure(kind: str, args: argparse.Namespace) -> harness.Figures:
    """Start one contender, load it in each mode, stop it."""
    server = harness.pool_contender(__file__, kind, args)
    out: harness.Figures = {}
    try:
        port = harness.wait_printed_port(server, harness.line_ok)
        out["close"] = load(port, args.duration, args.concurrency, False)
        out["keepalive"] = load(port, args.duration, args.workers, True)
    finally:
        out["left"] = server.stop()
    return out


def main() -> int:
    ap = harness.bench_parser(__doc__)
    harness.add_duration_option(ap, 5, of="load run")
    harness.add_runs_option(ap, 1)
    ap.add_argument("--workers", type=int, default=2, help="prefork workers and bare children (default 2)")
    ap.add_argument("--concurrency", type=int, default=50, help="requests in flight, close mode (50)")
    harness.add_backlog_option(ap)
    harness.add_report_options(ap, check="the target fails")
    ap.add_argument("--serve", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.workers, args.backlog)
        return 0
    m = harness.machine()
    print(harness.machine_line(m))
    print(
        "load:",
        " ".join(loadgen_cmd(0, args.duration, args.concurrency, False, "OUT")).replace(":0 ", ":PORT "),
    )
    print(f"      keep-alive: the same with --keepalive --concurrency {args.workers}")
    print(f"workers {args.workers}, backlog {args.backlog}, runs {args.runs}, contenders interleaved\n")

    runs, tally = harness.interleaved_runs(
        CONTENDERS, args.runs, functools.partial(measure, args=args), harness.show_rps_by_mode(MODES), 8
    )
    summary = harness.medians_by_mode(runs, MODES, ("rps", "p50_ms", "p99_ms", "errors"))
    harness.print_mode_table(summary, MODES, LABELS, 42, ("errors",))
    ratios = harness.mode_ratios(summary, MODES, [("prefork", "bare"), ("prefork-no-timeout", "bare")])
    harness.print_ratios(ratios, 36)
    verdict = harness.ratio_target(TARGET[0], ratios["prefork/bare (close)"], TARGET[1])
    harness.print_verdicts([verdict])
    report = {"machine": m, "settings": vars(args), "runs": runs, "summary": summary, "ratios": ratios}
    harness.write_json(args.json, {**report, "targets": [verdict]})
    return harness.exit_status(tally.failed, args.check, [verdict])


if __name__ == "__main__":
    sys.exit(main())
