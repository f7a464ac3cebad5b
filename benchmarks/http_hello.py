"""Hello-world HTTP throughput: prefork.PreforkHTTPServer against the stdlib servers, in one run.

Run it (wrk is needed: ``apt-get install -y wrk``)::

    python benchmarks/http_hello.py [--duration 8] [--runs 3] [--workers 2] [--json PATH]

The same ``BaseHTTPRequestHandler`` (``Hello`` below: GET / -> 200 "Hello, world!\\n") is served
by each contender in turn, each in its own subprocess and process group, bound to a free port on
127.0.0.1 with the same backlog:

1. ``forking``: stdlib ``socketserver.ForkingMixIn`` + ``http.server.HTTPServer`` (fork per request);
2. ``threading``: stdlib ``socketserver.ThreadingMixIn`` + ``HTTPServer`` (daemon threads);
3. ``prefork-no-timeout``: ``prefork.PreforkHTTPServer`` with ``--workers`` workers and
   ``socket_timeout=0``: no timeout on the accepted sockets, as the bare loop (the default
   timeout costs an ioctl() per connection);
4. ``prefork``: the same with the default settings;
5. ``bare`` (``--no-bare`` to skip): ``--workers`` forked children each running stdlib
   ``HTTPServer.serve_forever()`` on one inherited socket, the floor of what any engine adds.

Each is loaded as the anchors in /work/shared/ANCHORS.md were: a 1 s warm-up, then
``wrk -t2 -c50 -d{duration}s -H 'Connection: close' URL`` (one connection per request); the
contenders are interleaved across the ``--runs`` repetitions (a round runs each once, every
other round in reverse order) and the median req/s is kept. A ratio is the median over the
rounds of that round's ratio, which a machine speeding up or slowing down during the run moves
far less than the ratio of the medians (printed too, "of medians").
Each run also measures the CPU the contender's processes used per request (µs, psutil): with
wrk on the same cores, req/s also measures how wrk and the server share the CPUs, while CPU
per request is the server's own cost. Compare the ratios printed by one run, never absolute
numbers between machines.

``--side-by-side N`` then runs N rounds of ``prefork`` and ``bare`` at the same time, each loaded
by its own ``wrk -t1`` with half the connections, and prints the median of the rounds' ratios:
both servers see the same moment of the machine, so a host whose speed drifts (a shared VM)
moves both alike. Two bare loops measured so gave 0.99 (rounds 0.94 to 1.07).

Exit status: 0 when every measurement completed, 1 when a server failed to start, wrk failed or
a process outlived its group's SIGKILL (or, with ``--check``, when an issue 2 target fails),
2 when wrk is missing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import socketserver
import statistics
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from apps import harness

import prefork

BODY = b"Hello, world!\n"
# In this order (and reversed every other round) prefork and the bare loop run next to each other
# and never right after a stdlib contender, whose thousands of forks or threads a server started
# just after can pay for (freed memory, sockets closing).
CONTENDERS = ("forking", "threading", "prefork-no-timeout", "prefork", "bare")
LABELS = {
    "forking": "stdlib ForkingMixIn + HTTPServer",
    "threading": "stdlib ThreadingMixIn + HTTPServer",
    "prefork": "prefork.PreforkHTTPServer",
    "prefork-no-timeout": "PreforkHTTPServer, socket_timeout=0",
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
    elif kind.startswith("prefork"):  # prefork-no-timeout: no socket timeout, as the bare loop
        timeout = {"socket_timeout": 0} if kind == "prefork-no-timeout" else {}
        server = prefork.PreforkHTTPServer(
            addr, Hello, workers=workers, request_queue_size=backlog, **timeout
        )
    else:  # bare
        bare = type("BareHTTP", (HTTPServer,), {"request_queue_size": backlog})(addr, Hello)
        harness.serve_bare(bare, workers)
        return
    harness.print_port(server)
    server.serve_forever()


# -- client side ------------------------------------------------------------------------------------


# wrk as the anchors were loaded: a connection per request, 50 of them, no --latency
CONNECTIONS = 50
FIGURES = ("rps", "latency_avg_ms", "requests", "socket_errors", "non_2xx", "cpu_us_per_request")


def measure(kind: str, args: argparse.Namespace) -> harness.Figures:
    """Start one contender, load it with wrk after a 1 s warm-up, stop it."""
    server = harness.pool_contender(__file__, kind, args)
    figures: harness.Figures = {}
    try:
        port = harness.wait_printed_port(server, harness.http_ok)
        url = f"http://127.0.0.1:{port}/"
        wrk = harness.run_wrk(
            url, args.duration, CONNECTIONS, keepalive=False, latency=False, server_pgid=server.pid
        )
        figures = {key: wrk[key] for key in FIGURES}
    finally:
        left = server.stop()
    return {**figures, "needed_sigkill": server.needed_sigkill, "left": left}


def side_by_side(kinds: tuple[str, str], args: argparse.Namespace) -> harness.Figures:
    """Start both contenders, then load both at once for the same ``--duration`` seconds, each
    with its own ``wrk -t1`` and half the connections: both see the same moment of the machine,
    so its drift cancels out of the ratio. Returns each one's req/s by kind."""
    servers = [harness.pool_contender(__file__, kind, args) for kind in kinds]
    try:
        urls = [f"http://127.0.0.1:{harness.wait_printed_port(s, harness.http_ok)}/" for s in servers]
        with concurrent.futures.ThreadPoolExecutor(len(urls)) as pool:
            loads = [
                pool.submit(
                    harness.run_wrk, url, args.duration, CONNECTIONS // 2, False, latency=False, threads=1
                )
                for url in urls
            ]
            rps = [float(load.result()["rps"]) for load in loads]
    finally:
        left = [pid for server in servers for pid in server.stop()]
    return {kinds[0]: rps[0], kinds[1]: rps[1], "left": left}


def main() -> int:
    ap = harness.bench_parser(__doc__)
    harness.add_duration_option(ap, 8)
    harness.add_runs_option(ap, 3, "repetitions per contender")
    ap.add_argument("--workers", type=int, default=2, help="prefork workers and bare children (default 2)")
    harness.add_backlog_option(ap)
    ap.add_argument("--bare", action=argparse.BooleanOptionalAction, default=True, help="bare fork loop")
    ap.add_argument(
        "--side-by-side",
        type=int,
        default=0,
        metavar="N",
        help="then N rounds of prefork and the bare loop loaded at the same time (default 0: none)",
    )
    harness.add_report_options(ap, check="an issue 2 target fails")
    ap.add_argument("--serve", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.workers, args.backlog)
        return 0
    if harness.wrk_missing():
        return 2

    kinds = [k for k in CONTENDERS if args.bare or k != "bare"]
    m = harness.machine()
    wrk = harness.wrk_line(args.duration, CONNECTIONS, keepalive=False, latency=False)
    print(harness.machine_line(m))
    print(f"wrk: {wrk}  (after a 1 s warm-up run)")
    print(f"backlog {args.backlog}, workers {args.workers}, runs {args.runs}, contenders interleaved\n")

    runs, tally = harness.interleaved_runs(
        kinds, args.runs, functools.partial(measure, args=args), lambda f: f"{f['rps']:>10.1f} req/s", 9
    )
    summary: dict[str, dict[str, Any]] = {}
    for kind, figs in runs.items():
        if figs:
            summary[kind] = {
                "rps_median": statistics.median(float(f["rps"]) for f in figs),
                "latency_avg_ms_median": statistics.median(float(f["latency_avg_ms"]) for f in figs),
                "cpu_us_per_request_median": statistics.median(float(f["cpu_us_per_request"]) for f in figs),
                "runs": len(figs),
                "errors": sum(int(f["socket_errors"]) + int(f["non_2xx"]) for f in figs),
            }

    print(f"\n{'contender':<44} {'req/s':>10} {'runs':>5} {'lat avg':>10} {'CPU/req':>9} {'errors':>7}")
    for kind, s in summary.items():
        print(
            f"{LABELS[kind]:<44} {s['rps_median']:>10.1f} {s['runs']:>5} "
            f"{s['latency_avg_ms_median']:>8.2f}ms {s['cpu_us_per_request_median']:>7.1f}us {s['errors']:>7}"
        )

    def rps(kind: str) -> float | None:
        return float(summary[kind]["rps_median"]) if kind in summary else None

    # Each ratio is the median over the rounds of that round's ratio: one round runs each contender
    # once, back to back, so a machine speeding up or slowing down during the run (this 2-core VM's
    # req/s drifts by a third within minutes) moves both sides of a ratio alike.
    def per_round(a: str, b: str, key: str = "rps") -> float | None:
        return harness.paired_ratio(runs, a, b, key)

    ratios = {f"prefork/{k}": per_round("prefork", k) for k in ("forking", "threading", "bare")}
    ratios["prefork-no-timeout/bare"] = per_round("prefork-no-timeout", "bare")

    def cpu(kind: str) -> float | None:
        return float(summary[kind]["cpu_us_per_request_median"]) if kind in summary else None

    # CPU per request, inverted so that > 1 means prefork is cheaper
    ratios["CPU bare/prefork"] = per_round("bare", "prefork", "cpu_us_per_request")
    ratios["CPU bare/prefork-no-timeout"] = per_round("bare", "prefork-no-timeout", "cpu_us_per_request")
    # and as the ratio of the medians in the table above (mixes rounds)
    ratios["prefork/bare, of medians"] = harness.ratio(rps("prefork"), rps("bare"))
    ratios["CPU bare/prefork, of medians"] = harness.ratio(cpu("bare"), cpu("prefork"))
    if args.side_by_side and args.bare:
        print(f"\nside by side: prefork and the bare loop at once, each with wrk -t1 -c{CONNECTIONS // 2}")
        pairs = []
        for r in range(args.side_by_side):
            order = ("prefork", "bare") if r % 2 == 0 else ("bare", "prefork")  # who starts first
            load = functools.partial(side_by_side, order, args)
            pair = tally.measure("side by side", f"side by side {r + 1}", load)
            if pair is not None and pair["bare"]:
                pair["ratio"] = float(pair["prefork"]) / float(pair["bare"])
                pairs.append(pair)
                rps_pair = f"prefork {pair['prefork']:>9.1f}  bare {pair['bare']:>9.1f} req/s"
                print(f"round {r + 1}: {rps_pair}  {pair['ratio']:.3f}", flush=True)
        runs["side-by-side"] = pairs
        ratios["prefork/bare, side by side"] = statistics.median(p["ratio"] for p in pairs) if pairs else None
    harness.print_ratios(ratios, 30)

    def verdicts(targets: tuple[tuple[str, str, float], ...]) -> list[dict[str, Any]]:
        return [harness.ratio_target(name, ratios[f"prefork/{k}"], least) for name, k, least in targets]

    issue2, issue4 = verdicts(ISSUE2_TARGETS), verdicts(ISSUE4_TARGETS)
    harness.print_verdicts(issue2, prefix="issue 2: ")
    for v in issue4:
        met = "met" if v["ok"] else "not met"
        print(f"info issue 4: {v['target']} ({harness.fmt_ratio(v['ratio'])}): {met}")

    report = {
        "machine": m,
        "wrk": wrk,
        "settings": {"duration": args.duration, "runs": args.runs, "workers": args.workers},
        "backlog": args.backlog,
        "runs": runs,
        "summary": summary,
        "ratios": ratios,
        "issue2": issue2,
        "issue4": issue4,
    }
    harness.write_json(args.json, report)
    return harness.exit_status(tally.failed, args.check, issue2)


if __name__ == "__main__":
    sys.exit(main())
