"""Raw TCP throughput: prefork.PreforkTCPServer against a bare fork loop, same handler, one run.

Run it::

    python benchmarks/raw_tcp.py [--duration 5] [--runs 1] [--workers 2] [--json PATH] [--check]

The handler (``benchmarks/apps/raw_line.py:Handler``, a ``StreamRequestHandler``) reads a
request line and writes a fixed reply line, until the client closes. It is served, each in its
own process group on a free 127.0.0.1 port with the same backlog, by:

1. ``prefork``: ``prefork.PreforkTCPServer`` with ``--workers`` sync workers;
2. ``bare``: ``--workers`` forked children each running stdlib ``TCPServer.serve_forever()``
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
import json
import os
import socketserver
import statistics
import subprocess
import sys
import tempfile
from typing import Any

from apps.harness import Server, fmt_ratio, line_ok, machine, machine_line, ratio
from apps.raw_line import Handler

import prefork

CONTENDERS = ("prefork", "bare")
LABELS = {"prefork": "prefork.PreforkTCPServer (sync)", "bare": "bare fork loop (TCPServer.serve_forever)"}
MODES = ("close", "keepalive")
TARGET = ("prefork >= 0.95x bare (close)", 0.95)


def serve(kind: str, workers: int, backlog: int) -> None:
    """Bind 127.0.0.1:0, print the port on stdout, serve until signalled."""
    addr = ("127.0.0.1", 0)
    if kind == "prefork":
        server = prefork.PreforkTCPServer(addr, Handler, workers=workers, request_queue_size=backlog)
        print(server.server_address[1], flush=True)
        server.serve_forever()
        return
    bare = type("BareTCP", (socketserver.TCPServer,), {"request_queue_size": backlog})(addr, Handler)
    print(bare.server_address[1], flush=True)
    for _ in range(workers):
        if os.fork() == 0:
            try:
                bare.serve_forever()
            finally:
                os._exit(0)
    for _ in range(workers):
        os.wait()


def loadgen_cmd(port: int, duration: float, concurrency: int, keepalive: bool, out: str) -> list[str]:
    cmd = [sys.executable, "-m", "prefork", "bench", "--address", f"127.0.0.1:{port}", "--protocol", "line"]
    cmd += ["--payload", "ping", "--expect", "Hello", "--concurrency", str(concurrency)]
    cmd += ["--duration", f"{duration:g}s", "--warmup", "1s", "--out", out]
    return cmd + (["--keepalive"] if keepalive else [])


def load(port: int, duration: float, concurrency: int, keepalive: bool) -> dict[str, Any]:
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


def measure(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    server = Server(
        kind, [sys.executable, os.path.abspath(__file__), "--serve", kind, "--workers", str(args.workers)]
    )
    out: dict[str, Any] = {}
    try:
        port = 0

        def ready() -> bool:
            nonlocal port
            if not port:
                text = server.output(100).strip()
                if not text.isdigit():
                    return False
                port = int(text)
            return line_ok(port)

        server.wait_ready(ready)
        out["close"] = load(port, args.duration, args.concurrency, False)
        out["keepalive"] = load(port, args.duration, args.workers, True)
    finally:
        out["left"] = server.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5, help="seconds of each load run (default 5)")
    ap.add_argument("--runs", type=int, default=1, help="repetitions, median kept (default 1)")
    ap.add_argument("--workers", type=int, default=2, help="prefork workers and bare children (default 2)")
    ap.add_argument("--concurrency", type=int, default=50, help="requests in flight, close mode (50)")
    ap.add_argument("--backlog", type=int, default=1024, help="listen backlog of both (1024)")
    ap.add_argument("--json", metavar="PATH", help="write every figure to PATH as JSON")
    ap.add_argument("--check", action="store_true", help="exit 1 when the target fails")
    ap.add_argument("--serve", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.workers, args.backlog)
        return 0
    m = machine()
    print(machine_line(m))
    print(
        "load:",
        " ".join(loadgen_cmd(0, args.duration, args.concurrency, False, "OUT")).replace(":0 ", ":PORT "),
    )
    print(f"      keep-alive: the same with --keepalive --concurrency {args.workers}")
    print(f"workers {args.workers}, backlog {args.backlog}, runs {args.runs}, contenders interleaved\n")

    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in CONTENDERS}
    failed = False
    for r in range(args.runs):
        for kind in CONTENDERS:
            try:
                fig = measure(kind, args)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"run {r + 1} {kind}: FAILED: {exc}", file=sys.stderr)
                failed = True
                continue
            if fig["left"]:
                print(f"run {r + 1} {kind}: processes left after SIGKILL: {fig['left']}", file=sys.stderr)
                failed = True
            runs[kind].append(fig)
            line = "  ".join(f"{mode} {fig[mode]['rps']:>9.1f} req/s" for mode in MODES)
            print(f"run {r + 1} {kind:<8} {line}", flush=True)

    summary = {
        kind: {
            mode: {
                key: statistics.median(float(f[mode][key]) for f in figs)
                for key in ("rps", "p50_ms", "p99_ms", "errors")
            }
            for mode in MODES
        }
        for kind, figs in runs.items()
        if figs
    }
    print(f"\n{'contender':<42} {'mode':<10} {'req/s':>9} {'p50':>9} {'p99':>9} {'errors':>7}")
    for mode in MODES:
        for kind, s in summary.items():
            f = s[mode]
            print(
                f"{LABELS[kind]:<42} {mode:<10} {f['rps']:>9.1f} {f['p50_ms']:>7.2f}ms {f['p99_ms']:>7.2f}ms",
                f"{int(f['errors']):>6}",
            )

    def rps(kind: str, mode: str) -> float | None:
        return summary[kind][mode]["rps"] if kind in summary else None

    ratios = {f"prefork/bare ({mode})": ratio(rps("prefork", mode), rps("bare", mode)) for mode in MODES}
    print()
    for name, value in ratios.items():
        print(f"{name:<28} {fmt_ratio(value)}")
    value = ratios["prefork/bare (close)"]
    verdict = {"target": TARGET[0], "ratio": value, "ok": value is not None and value >= TARGET[1]}
    print(f"\n{'PASS' if verdict['ok'] else 'FAIL'} {TARGET[0]} ({fmt_ratio(value)})")
    if args.json:
        report = {"machine": m, "settings": vars(args), "runs": runs, "summary": summary, "ratios": ratios}
        with open(args.json, "w") as fh:
            json.dump({**report, "targets": [verdict]}, fh, indent=2)
        print(f"\nfigures written to {args.json}")
    if failed:
        return 1
    return 1 if args.check and not verdict["ok"] else 0


if __name__ == "__main__":
    sys.exit(main())
