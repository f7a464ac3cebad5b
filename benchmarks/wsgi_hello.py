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
import json
import os
import statistics
import sys
from typing import Any

from apps.harness import (
    APPS_DIR,
    Server,
    Skip,
    fmt_ratio,
    free_port,
    gunicorn_command,
    have_wrk,
    http_ok,
    machine,
    machine_line,
    ratio,
    run_wrk,
    wrk_line,
)

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
            APPS_DIR, "wsgi_hello.py:" + ("Handler" if kind == "prefork-sync" else "KeepAliveHandler")
        )
        cmd = [sys.executable, "-m", "prefork", target, "--bind", f"127.0.0.1:{port}", "-w", n]
        cmd += ["--backlog", str(args.backlog), "--log-level", "warning"]
        return cmd + (["-k", "sync"] if kind == "prefork-sync" else ["-k", "thread", "--threads", t])
    gunicorn = gunicorn_command()
    if gunicorn is None:
        raise Skip(f"{kind}: gunicorn is not installed (pip install '.[bench]')")
    cmd = [*gunicorn, "-b", f"127.0.0.1:{port}", "-w", n, "--backlog", str(args.backlog)]
    cmd += ["--chdir", APPS_DIR, "--log-level", "warning"]
    cmd += ["-k", "sync"] if kind == "gunicorn-sync" else ["-k", "gthread", "--threads", t]
    return [*cmd, "wsgi_hello:app"]


def measure(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """Start one contender, load it in each mode, stop it."""
    port = free_port()
    server = Server(kind, command(kind, port, args))
    out: dict[str, Any] = {}
    try:
        server.wait_ready(lambda: http_ok(port))
        url = f"http://127.0.0.1:{port}/"
        for mode in MODES:
            out[mode] = run_wrk(url, args.duration, args.connections, mode == "keepalive")
    finally:
        out["left"] = server.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5, help="seconds of each wrk run (default 5)")
    ap.add_argument("--runs", type=int, default=1, help="repetitions, median kept (default 1)")
    ap.add_argument("--workers", type=int, default=2, help="workers of every contender (default 2)")
    ap.add_argument("--threads", type=int, default=25, help="threads per worker, thread/gthread (25)")
    ap.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    ap.add_argument("--backlog", type=int, default=1024, help="listen backlog of every contender (1024)")
    ap.add_argument("--only", help="comma-separated contenders to run (default: all)")
    ap.add_argument("--json", metavar="PATH", help="write every figure to PATH as JSON")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target fails")
    args = ap.parse_args()
    if not have_wrk():
        print("wrk not found on PATH: install it (apt-get install -y wrk) and rerun.", file=sys.stderr)
        return 2
    kinds = [k for k in CONTENDERS if not args.only or k in args.only.split(",")]
    m = machine()
    print(machine_line(m))
    for mode in MODES:
        print(
            f"wrk ({mode}): {wrk_line(args.duration, args.connections, mode == 'keepalive')}",
            "(1 s warm-up first)",
        )
    print(f"workers {args.workers}, threads {args.threads}, backlog {args.backlog}, runs {args.runs}\n")

    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    skipped: dict[str, str] = {}
    failed = False
    for r in range(args.runs):
        for kind in kinds:
            if kind in skipped:
                continue
            try:
                fig = measure(kind, args)
            except Skip as exc:
                skipped[kind] = str(exc)
                print(f"SKIPPED {kind}: {exc}", file=sys.stderr)
                continue
            except RuntimeError as exc:
                print(f"run {r + 1} {kind}: FAILED: {exc}", file=sys.stderr)
                failed = True
                continue
            if fig["left"]:
                print(f"run {r + 1} {kind}: processes left after SIGKILL: {fig['left']}", file=sys.stderr)
                failed = True
            runs[kind].append(fig)
            line = "  ".join(f"{mode} {fig[mode]['rps']:>9.1f} req/s" for mode in MODES)
            print(f"run {r + 1} {kind:<17} {line}", flush=True)

    summary: dict[str, dict[str, dict[str, float]]] = {}
    for kind, figs in runs.items():
        if figs:
            summary[kind] = {
                mode: {
                    key: statistics.median(float(f[mode][key]) for f in figs)
                    for key in ("rps", "p50_ms", "p99_ms", "socket_errors", "non_2xx")
                }
                for mode in MODES
            }

    print(f"\n{'contender':<45} {'mode':<10} {'req/s':>9} {'p50':>9} {'p99':>9} {'errors':>7}")
    for mode in MODES:
        for kind, s in summary.items():
            f = s[mode]
            label = LABELS[kind].replace("T threads", f"{args.threads} threads")
            errors = int(f["socket_errors"] + f["non_2xx"])
            print(
                f"{label:<45} {mode:<10} {f['rps']:>9.1f}",
                f"{f['p50_ms']:>7.2f}ms {f['p99_ms']:>7.2f}ms {errors:>7}",
            )

    def rps(kind: str, mode: str) -> float | None:
        return summary[kind][mode]["rps"] if kind in summary else None

    ratios = {f"{a}/{b} ({mode})": ratio(rps(a, mode), rps(b, mode)) for mode in MODES for a, b in PAIRS}
    print()
    for name, value in ratios.items():
        print(f"{name:<45} {fmt_ratio(value)}")
    verdicts = []
    for name, mode, a, b, minimum in TARGETS:
        value = ratio(rps(a, mode), rps(b, mode))
        verdicts.append({"target": name, "ratio": value, "ok": value is not None and value >= minimum})
    print()
    for v in verdicts:
        print(f"{'PASS' if v['ok'] else 'FAIL'} {v['target']} ({fmt_ratio(v['ratio'])})")
    for kind, why in skipped.items():
        print(f"skipped {kind}: {why.splitlines()[0][:200]}")

    if args.json:
        report = {
            "machine": m,
            "wrk": {mode: wrk_line(args.duration, args.connections, mode == "keepalive") for mode in MODES},
            "settings": vars(args),
            "runs": runs,
            "summary": summary,
            "ratios": ratios,
            "targets": verdicts,
            "skipped": skipped,
        }
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
        print(f"\nfigures written to {args.json}")
    if failed:
        return 1
    if args.check and not all(v["ok"] for v in verdicts):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
