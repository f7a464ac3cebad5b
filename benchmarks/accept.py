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
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

import prefork
from prefork.scoreboard import Scoreboard
from prefork.workers import SyncWorker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_hello import Hello, group_members

VARIANTS = ("shared/exclusive", "shared/select", "shared/blocking", "reuseport/exclusive")
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


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
    print(server.server_address[1], flush=True)
    server.serve_forever()


# -- client side ------------------------------------------------------------------------------------


class Server:
    """One variant's server subprocess, in its own session (process group == its pid)."""

    def __init__(self, variant: str, workers: int, tmp: str) -> None:
        self.scoreboard = os.path.join(tmp, "scoreboard")
        self.counters = os.path.join(tmp, "counters")
        os.makedirs(self.counters, exist_ok=True)
        cmd = [sys.executable, os.path.abspath(__file__), "--serve", variant, "--workers", str(workers)]
        cmd += ["--scoreboard", self.scoreboard, "--counters", self.counters]
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL, start_new_session=True
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        line = self.proc.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"{variant}: no port from the server")
        self.port = int(line)
        self.url = f"http://127.0.0.1:{self.port}/"
        time.sleep(0.5)  # the workers boot

    def workers(self) -> list[int]:
        """Pids of the live workers (the master's children)."""
        try:
            return [p.pid for p in psutil.Process(self.proc.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def spread(self) -> list[int]:
        """Requests served by each worker so far (scoreboard slots in use)."""
        with Scoreboard.open(self.scoreboard) as board:
            return sorted((s.requests for s in board.slots() if s.pid), reverse=True)

    def stop(self) -> tuple[int, int]:
        """SIGTERM the group, then SIGKILL what is left; return the workers' (spurious
        wake-ups, requests) totals from their counter files."""
        pgid = self.proc.pid
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log.close()
        empty = served = 0
        for path in Path(self.counters).iterdir():
            a, b = path.read_text().split()
            empty, served = empty + int(a), served + int(b)
            path.unlink()
        return empty, served


def wrk(url: str, connections: int, duration: float, close: bool = True) -> dict[str, float]:
    """Run wrk (2 threads, ``--latency``); return req/s, p50 and p99 (ms) and socket errors."""
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{duration:g}s", "--latency", url]
    if close:
        cmd[1:1] = ["-H", "Connection: close"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 30).stdout
    rps = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{out}")
    lat = {m[0]: float(m[1]) * UNITS[m[2]] for m in re.findall(r"\s(50|99)%\s+([\d.]+)(us|ms|s|m)\b", out)}
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(rps.group(1)),
        "p50": lat.get("50", float("nan")),
        "p99": lat.get("99", float("nan")),
        "errors": sum(int(g) for g in sock.groups()) if sock else 0,
    }


def kill_under_load(server: Server, duration: float) -> int:
    """SIGKILL a worker every 0.5 s during a wrk run; return wrk's socket errors."""
    cmd = ["wrk", "-t2", "-c50", f"-d{duration:g}s", "-H", "Connection: close", server.url]
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
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return sum(int(g) for g in sock.groups()) if sock else 0


def measure(variant: str, workers: int, duration: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(variant, workers, tmp)
        try:
            wrk(server.url, 50, 1)  # warm-up
            close50 = wrk(server.url, 50, duration)
            keep50 = wrk(server.url, 50, duration, close=False)
            close500 = wrk(server.url, 500, duration)
            spread = server.spread()
        finally:
            empty, served = server.stop()
        server = Server(variant, workers, tmp)
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
        "p50_50": close50["p50"],
        "p99_50": close50["p99"],
        "p50_500": close500["p50"],
        "p99_500": close500["p99"],
        "errors_500": close500["errors"],
        "spread": spread,
        "spread_min_max": (min(spread) / mean, max(spread) / mean) if mean else (0.0, 0.0),
        "spurious_per_request": empty / served if served else float("nan"),
        "errors_with_kills": killed_errors,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=3, help="seconds of each wrk run (default 3)")
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 8], help="pool sizes (default 2 8)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--scoreboard", help=argparse.SUPPRESS)
    ap.add_argument("--counters", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.workers[0], args.scoreboard, args.counters)
        return 0
    if shutil.which("wrk") is None:
        print("wrk is missing: apt-get install -y wrk", file=sys.stderr)
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
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
