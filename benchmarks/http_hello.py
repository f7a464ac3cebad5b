"""Hello-world HTTP throughput: prefork.PreforkHTTPServer against the stdlib servers, in one run.

Run it (wrk is needed: ``apt-get install -y wrk``)::

    python benchmarks/http_hello.py [--duration 8] [--runs 3] [--workers 2] [--json PATH]

The same ``BaseHTTPRequestHandler`` (``Hello`` below: GET / -> 200 "Hello, world!\\n") is served
by each contender in turn, each in its own subprocess and process group, bound to a free port on
127.0.0.1 with the same backlog:

1. ``forking``: stdlib ``socketserver.ForkingMixIn`` + ``http.server.HTTPServer`` (fork per request);
2. ``threading``: stdlib ``socketserver.ThreadingMixIn`` + ``HTTPServer`` (daemon threads);
3. ``prefork``: ``prefork.PreforkHTTPServer`` with ``--workers`` workers;
4. ``bare`` (``--no-bare`` to skip): ``--workers`` forked children each running stdlib
   ``HTTPServer.serve_forever()`` on one inherited socket, the floor of what any engine adds.

Each is loaded as the anchors in /work/shared/ANCHORS.md were: a 1 s warm-up, then
``wrk -t2 -c50 -d{duration}s -H 'Connection: close' URL`` (one connection per request); the
contenders are interleaved across the ``--runs`` repetitions and the median req/s is kept.
Compare the ratios printed by one run, never absolute numbers between machines.

Exit status: 0 when every measurement completed, 1 when a server failed to start, wrk failed or
a process outlived its group's SIGKILL (or, with ``--check``, when an issue 2 target fails),
2 when wrk is missing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import select
import shutil
import signal
import socketserver
import statistics
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import psutil

import prefork

BODY = b"Hello, world!\n"
CONTENDERS = ("forking", "threading", "prefork", "bare")
LABELS = {
    "forking": "stdlib ForkingMixIn + HTTPServer",
    "threading": "stdlib ThreadingMixIn + HTTPServer",
    "prefork": "prefork.PreforkHTTPServer",
    "bare": "bare fork loop (HTTPServer.serve_forever)",
}
# (target, the contender prefork is compared with, minimum ratio prefork/contender)
ISSUE2_TARGETS = (("prefork >= 10x forking", "forking", 10.0), ("prefork >= 3x threading", "threading", 3.0))
ISSUE4_TARGETS = (
    ("prefork >= 14x forking", "forking", 14.0),
    ("prefork >= 4x threading", "threading", 4.0),
    ("prefork >= 0.95x bare", "bare", 0.95),
)


class Hello(BaseHTTPRequestHandler):
    """The one handler every contender serves."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:
        pass


# -- server side: `http_hello.py --serve KIND` runs one contender ------------------------------------


def serve(kind: str, workers: int, backlog: int) -> None:
    """Bind 127.0.0.1:0, print the port on stdout, serve until signalled."""
    addr = ("127.0.0.1", 0)
    if kind == "forking":
        cls = type("ForkingHTTP", (socketserver.ForkingMixIn, HTTPServer), {"request_queue_size": backlog})
        server = cls(addr, Hello)
    elif kind == "threading":
        attrs = {"request_queue_size": backlog, "daemon_threads": True}
        server = type("ThreadingHTTP", (socketserver.ThreadingMixIn, HTTPServer), attrs)(addr, Hello)
    elif kind == "prefork":
        server = prefork.PreforkHTTPServer(addr, Hello, workers=workers, request_queue_size=backlog)
    else:  # bare
        server = type("BareHTTP", (HTTPServer,), {"request_queue_size": backlog})(addr, Hello)
    print(server.server_address[1], flush=True)
    if kind != "bare":
        server.serve_forever()
        return
    for _ in range(workers):
        if os.fork() == 0:
            try:
                server.serve_forever()
            finally:
                os._exit(0)
    for _ in range(workers):
        os.wait()


# -- client side ------------------------------------------------------------------------------------


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes whose process group is pgid."""
    out = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (ProcessLookupError, psutil.Error):
            pass
    return out


class Contender:
    """One server subprocess, in its own session (process group == its pid)."""

    def __init__(self, kind: str, workers: int, backlog: int) -> None:
        self.kind = kind
        self.log = tempfile.TemporaryFile()
        cmd = [sys.executable, os.path.abspath(__file__), "--serve", kind]
        cmd += ["--workers", str(workers), "--backlog", str(backlog)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL, start_new_session=True
        )
        self.port = 0

    def start(self, timeout: float = 15.0) -> None:
        """Read the port from the server and wait until GET / answers 200."""
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        self.proc.stdout.close()
        if not line.strip().isdigit():
            raise RuntimeError(f"{self.kind}: no port from the server; its stderr:\n{self.stderr()}")
        self.port = int(line)
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/")
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind}: port {self.port} never answered 200; stderr:\n{self.stderr()}")

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def stop(self, grace: float = 10.0) -> dict[str, Any]:
        """SIGTERM the group, wait, SIGKILL what remains, then check with psutil that none is left."""
        pgid = self.proc.pid
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            self.proc.poll()
            if not group_members(pgid):
                break
            time.sleep(0.05)
        killed = bool(group_members(pgid))
        if killed:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        deadline = time.monotonic() + 5
        while (left := group_members(pgid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.log.close()
        return {"needed_sigkill": killed, "left": [p.pid for p in left]}


def wrk_cmd(duration: float, url: str) -> list[str]:
    return ["wrk", "-t2", "-c50", f"-d{duration:g}s", "-H", "Connection: close", url]


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def parse_wrk(out: str) -> dict[str, float]:
    """Requests/sec, avg latency (ms), requests, socket errors and non-2xx/3xx from wrk's output."""
    rps = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{out}")
    lat = re.search(r"Latency\s+([\d.]+)(us|ms|s|m|h)\b", out)
    total = re.search(r"(\d+) requests in", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(rps.group(1)),
        "latency_avg_ms": float(lat.group(1)) * UNITS[lat.group(2)] if lat else float("nan"),
        "requests": int(total.group(1)) if total else 0,
        "socket_errors": sum(int(g) for g in sock.groups()) if sock else 0,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def measure(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    server = Contender(kind, args.workers, args.backlog)
    try:
        server.start()
        url = f"http://127.0.0.1:{server.port}/"
        subprocess.run(wrk_cmd(1, url), capture_output=True, check=False)  # warm-up
        res = subprocess.run(wrk_cmd(args.duration, url), capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"wrk exited {res.returncode}: {res.stderr.strip()}")
        figures: dict[str, Any] = dict(parse_wrk(res.stdout))
    finally:
        stopped = server.stop()
    return {**figures, **stopped}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=8, help="seconds of each wrk run (default 8)")
    ap.add_argument("--runs", type=int, default=3, help="repetitions per contender, median kept (default 3)")
    ap.add_argument("--workers", type=int, default=2, help="prefork workers and bare children (default 2)")
    ap.add_argument("--backlog", type=int, default=1024, help="listen backlog of every contender (1024)")
    ap.add_argument("--bare", action=argparse.BooleanOptionalAction, default=True, help="bare fork loop")
    ap.add_argument("--json", metavar="PATH", help="write every figure to PATH as JSON")
    ap.add_argument("--check", action="store_true", help="exit 1 when an issue 2 target fails")
    ap.add_argument("--serve", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.workers, args.backlog)
        return 0
    if shutil.which("wrk") is None:
        print("wrk not found on PATH: install it (apt-get install -y wrk) and rerun.", file=sys.stderr)
        return 2

    kinds = [k for k in CONTENDERS if args.bare or k != "bare"]
    machine = {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "prefork": prefork.__version__,
        "platform": platform.platform(),
    }
    wrk_line = " ".join(wrk_cmd(args.duration, "http://127.0.0.1:PORT/")).replace(
        "Connection: close", "'Connection: close'"
    )
    print(f"machine: {machine['cpu_count']} cores, Python {machine['python']}, prefork {machine['prefork']}")
    print(f"wrk: {wrk_line}  (after a 1 s warm-up run)")
    print(f"backlog {args.backlog}, workers {args.workers}, runs {args.runs}, contenders interleaved\n")

    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    failed = False
    for r in range(args.runs):
        for kind in kinds:
            try:
                fig = measure(kind, args)
            except RuntimeError as exc:
                print(f"run {r + 1} {kind}: FAILED: {exc}", file=sys.stderr)
                failed = True
                continue
            runs[kind].append(fig)
            if fig["left"]:
                print(f"run {r + 1} {kind}: processes left after SIGKILL: {fig['left']}", file=sys.stderr)
                failed = True
            print(f"run {r + 1} {kind:<9} {fig['rps']:>10.1f} req/s", flush=True)

    summary: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        figs = runs[kind]
        if not figs:
            continue
        summary[kind] = {
            "rps_median": statistics.median(float(f["rps"]) for f in figs),
            "latency_avg_ms_median": statistics.median(float(f["latency_avg_ms"]) for f in figs),
            "runs": len(figs),
            "errors": sum(int(f["socket_errors"]) + int(f["non_2xx"]) for f in figs),
        }

    print(f"\n{'contender':<44} {'req/s':>10} {'runs':>5} {'lat avg':>10} {'errors':>7}")
    for kind, s in summary.items():
        print(
            f"{LABELS[kind]:<44} {s['rps_median']:>10.1f} {s['runs']:>5} "
            f"{s['latency_avg_ms_median']:>8.2f}ms {s['errors']:>7}"
        )

    def ratio(other: str) -> float | None:
        if "prefork" not in summary or other not in summary or not summary[other]["rps_median"]:
            return None
        return float(summary["prefork"]["rps_median"]) / float(summary[other]["rps_median"])

    ratios = {f"prefork/{k}": ratio(k) for k in ("forking", "threading", "bare")}
    print()
    for name, value in ratios.items():
        print(f"{name:<20} {'n/a' if value is None else f'{value:.2f}x'}")

    def verdicts(targets: tuple[tuple[str, str, float], ...]) -> list[dict[str, Any]]:
        out = []
        for name, other, minimum in targets:
            value = ratios[f"prefork/{other}"]
            out.append({"target": name, "ratio": value, "ok": value is not None and value >= minimum})
        return out

    issue2, issue4 = verdicts(ISSUE2_TARGETS), verdicts(ISSUE4_TARGETS)
    print()
    for v in issue2:
        value = "n/a" if v["ratio"] is None else f"{v['ratio']:.2f}x"
        print(f"{'PASS' if v['ok'] else 'FAIL'} issue 2: {v['target']} ({value})")
    for v in issue4:
        value = "n/a" if v["ratio"] is None else f"{v['ratio']:.2f}x"
        print(f"info issue 4: {v['target']} ({value}): {'met' if v['ok'] else 'not met'}")

    if args.json:
        report = {
            "machine": machine,
            "wrk": wrk_line,
            "settings": {"duration": args.duration, "runs": args.runs, "workers": args.workers},
            "backlog": args.backlog,
            "runs": runs,
            "summary": summary,
            "ratios": ratios,
            "issue2": issue2,
            "issue4": issue4,
        }
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
        print(f"\nfigures written to {args.json}")
    if failed:
        return 1
    if args.check and not all(v["ok"] for v in issue2):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
