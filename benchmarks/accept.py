"""Accept strategies and waiting mechanisms: throughput, latency, spread, wake-ups, kills.

Run it (wrk is needed: ``apt-get install -y wrk``)::

    python benchmarks/accept.py [--duration 3] [--workers 2 8] [--json PATH]

Each variant serves the same ``BaseHTTPRequestHandler`` (GET / -> 200 "Hello, world!\\n") with
``prefork.PreforkHTTPServer`` in its own subprocess and process group, on a free port of
127.0.0.1 (backlog 2048):

- ``shared/exclusive``: one shared listening socket, epoll with EPOLLEXCLUSIVE;
- ``shared/select``: one shared socket, a level-triggered selector (every idle worker wakes; the default);
- ``shared/blocking``: one shared socket, blocking ``accept()`` (the kernel wakes one waiter);
- ``reuseport/exclusive``: one SO_REUSEPORT socket per worker (``accept="reuseport"``).

For each, and each ``--workers`` count, it reports: req/s with wrk at 50 connections, a new
connection per request (``-H 'Connection: close'``) and without that header (the stdlib
handler speaks HTTP/1.0, so it closes anyway; wrk reconnects); p50/p99 latency (ms) at 50
and 500 connections (``wrk --latency``); the spread of requests over the workers (from the
scoreboard, ``--scoreboard-file``: min/max requests per worker as a share of the mean);
spurious wake-ups per request (accept() calls that found nothing, counted by each worker
and written to a file when it stops); and failed requests while a worker is SIGKILLed every
0.5 s under load (wrk socket errors: at most the in-flight ones should fail).

Loopback only; every server is stopped with SIGTERM to its own process group, then SIGKILL
for what is left. Exit status: 0 when every measurement completed, 1 otherwise, 2 when wrk
is missing.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from apps import harness
from http_hello import Hello

import prefork
from prefork.scoreboard import Scoreboard
from prefork.workers import SyncWorker

VARIANTS = ("shared/exclusive", "shared/select", "shared/blocking", "reuseport/exclusive")


# -- server side: `accept.py --serve VARIANT` -----------------------------------------------------


def serve(variant: str, workers: int, scoreboard: str, counters: str) -> None:
    """Serve ``variant`` on 127.0.0.1:0, print the port, serve until signalled. Each worker
    writes its spurious wake-ups (``empty_accepts``) and requests to ``counters``/PID on exit."""
    strategy, wait = variant.split("/")

    sync_serve = SyncWorker.serve

    def counting_serve(self: SyncWorker) -> None:
        try:
            sync_serve(self)
        finally:
            Path(counters, str(os.getpid())).write_text(f"{self.empty_accepts} {self.requests}")

    SyncWorker.accept_wait = wait  # this subprocess only
    setattr(SyncWorker, "serve", counting_serve)  # noqa: B010 (mypy: no assigning to a method)
    server = prefork.PreforkHTTPServer(
        ("127.0.0.1", 0), Hello, workers=workers, accept=strategy, scoreboard_file=scoreboard
    )
    harness.print_port(server)
    server.serve_forever()


# -- client side ------------------------------------------------------------------------------------


class Variant:
    """One variant's server (``accept.py --serve VARIANT``, a :class:`Server`), once it answers."""

    def __init__(self, variant: str, workers: int, tmp: str) -> None:
        self.scoreboard = os.path.join(tmp, "scoreboard")
        self.counters = os.path.join(tmp, "counters")
        os.makedirs(self.counters, exist_ok=True)
        options = ["--workers", str(workers), "--scoreboard", self.scoreboard, "--counters", self.counters]
        self.server = harness.script_server(__file__, variant, *options)
        try:
            port = harness.wait_printed_port(self.server, harness.http_ok)
        except BaseException:
            self.server.stop()
            raise
        self.url = f"http://127.0.0.1:{port}/"
        time.sleep(0.5)  # the other workers boot

    def workers(self) -> list[int]:
        """Pids of the live workers (the master's children)."""
        try:
            return [p.pid for p in psutil.Process(self.server.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def spread(self) -> list[int]:
        """Requests served by each worker so far (scoreboard slots in use)."""
        with Scoreboard.open(self.scoreboard) as board:
            return sorted((s.requests for s in board.slots() if s.pid), reverse=True)

    def stop(self) -> tuple[int, int]:
        """Stop the server (:meth:`Server.stop`); return the workers' (spurious wake-ups,
        requests) totals from their counter files."""
        self.server.stop()
        empty = served = 0
        for path in Path(self.counters).iterdir():
            a, b = path.read_text().split()
            empty, served = empty + int(a), served + int(b)
            path.unlink()
        return empty, served


def kill_under_load(server: Variant, duration: float) -> int:
    """SIGKILL a worker every 0.5 s during a wrk run; return wrk's socket errors."""
    cmd = harness.wrk_cmd(server.url, duration, 50, keepalive=False, latency=False)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    end = time.monotonic() + duration - 0.5
    kills = 0
    while time.monotonic() < end:
        time.sleep(0.5)
        pids = server.workers()
        if pids:
            os.kill(pids[kills % len(pids)], signal.SIGKILL)
            kills += 1
    out, _ = proc.communicate(timeout=duration + 30)
    return int(harness.parse_wrk(out)["socket_errors"])


def measure(variant: str, workers: int, duration: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server = Variant(variant, workers, tmp)
        try:
            close50 = harness.run_wrk(server.url, duration, 50, keepalive=False)  # after a 1 s warm-up
            keep50 = harness.run_wrk(server.url, duration, 50, keepalive=True, warmup=0)
            close500 = harness.run_wrk(server.url, duration, 500, keepalive=False, warmup=0)
            spread = server.spread()
        finally:
            empty, served = server.stop()
        server = Variant(variant, workers, tmp)
        try:
            killed_errors = kill_under_load(server, duration)
        finally:
            server.stop()
    mean = sum(spread) / len(spread) if spread else 0.0
    return {
        "variant": variant,
        "workers": workers,
        "rps_close": close50["rps"],
        "rps_keepalive": keep50["rps"],
        "p50_50": close50["p50_ms"],
        "p99_50": close50["p99_ms"],
        "p50_500": close500["p50_ms"],
        "p99_500": close500["p99_ms"],
        "errors_500": close500["socket_errors"],
        "spread": spread,
        "spread_min_max": (min(spread) / mean, max(spread) / mean) if mean else (0.0, 0.0),
        "spurious_per_request": empty / served if served else float("nan"),
        "errors_with_kills": killed_errors,
    }


def main() -> int:
    ap = harness.bench_parser(__doc__)
    harness.add_duration_option(ap, 3)
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 8], help="pool sizes (default 2 8)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    harness.add_report_options(ap, check=None)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--scoreboard", help=argparse.SUPPRESS)
    ap.add_argument("--counters", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.workers[0], args.scoreboard, args.counters)
        return 0
    if harness.wrk_missing():
        return 2
    print(f"{os.cpu_count()} CPUs, wrk on the same machine, {args.duration:g} s per wrk run")
    head = (
        f"{'variant':20} {'wk':>3} {'close r/s':>9} {'k-a r/s':>8} {'p50/p99 @50':>13} "
        f"{'p50/p99 @500':>14} {'spread min-max':>14} {'spur/req':>8} {'kill errs':>9}"
    )
    print(head)
    results = []
    status = 0
    for workers in args.workers:
        for variant in args.variants:
            try:
                r = measure(variant, workers, args.duration)
            except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
                print(f"{variant:20} {workers:3} failed: {exc}")
                status = 1
                continue
            results.append(r)
            lo, hi = r["spread_min_max"]
            print(
                f"{variant:20} {workers:3} {r['rps_close']:9.0f} {r['rps_keepalive']:8.0f} "
                f"{r['p50_50']:6.1f}/{r['p99_50']:6.1f} {r['p50_500']:6.1f}/{r['p99_500']:7.1f} "
                f"{lo:6.2f}-{hi:6.2f} {r['spurious_per_request']:8.3f} {r['errors_with_kills']:9d}",
                flush=True,
            )
    harness.write_json(args.json, results)
    return status


if __name__ == "__main__":
    sys.exit(main())
