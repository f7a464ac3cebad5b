"""Start, stop and restart costs of a prefork pool, against gunicorn serving the same app.

Run it::

    python benchmarks/lifecycle.py [--sizes 1,2,4,8] [--runs 3] [--kills 30] [--json PATH] [--check]

Contenders, each started as its own process group on a free 127.0.0.1 port:

- ``prefork``: ``python -m prefork benchmarks/apps/wsgi_hello.py:Handler -w N --scoreboard-file F``
  (wsgiref's handler around the WSGI hello app; each worker imports the target after the fork);
- ``prefork-preload``: the same with ``--preload`` (imported once, in the master);
- ``gunicorn``: ``gunicorn -k sync -w N wsgi_hello:app`` (skipped when gunicorn is missing).

Measured, ``--runs`` times per pool size N (median kept):

- **start**: from just before the exec to the first 200 response (GET / polled every 1 ms),
  and, for prefork, to all N workers ready (N slots IDLE in the scoreboard file, polled every
  0.5 ms). Target: all N ready within 100 ms + N x 5 ms.
- **stop**: an idle pool (0.2 s after it is ready), SIGTERM to the master -> the master exits.
  Target: 100 ms.
- **restart** (pool of ``--workers``, ``--kills`` times): SIGKILL one worker -> a replacement
  child exists (``/proc/PID/task/PID/children``, as /work/shared/bench/respawn_time.py) and,
  for prefork, -> it is ready (IDLE in the scoreboard). Median and max. Target: ready, median
  10 ms.

Times include Python's own start-up (about 15-40 ms for ``python -c pass`` on these machines).
Each contender is started once, unmeasured, before the runs, and runs with bytecode caching on
(see ``apps.harness.Server``), as an installed server does.

Exit status: 0 when every measurement completed, 1 when one failed or a process outlived its
group's SIGKILL (or, with ``--check``, a target was missed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from apps.harness import APPS_DIR, Server, Skip, free_port, gunicorn_command, http_ok, machine, machine_line

from prefork.scoreboard import Scoreboard, WorkerState

CONTENDERS = ("prefork", "prefork-preload", "gunicorn")
POLL = 0.0005


def start_target_ms(n: int) -> float:
    return 100.0 + 5.0 * n


STOP_TARGET_MS = 100.0
RESTART_TARGET_MS = 10.0


class Pool:
    """One contender with N workers; ``scoreboard`` is None for gunicorn."""

    def __init__(self, kind: str, workers: int, tmp: str) -> None:
        self.kind = kind
        self.workers = workers
        self.port = free_port()
        self.scoreboard: str | None = None
        bind = ["-b", f"127.0.0.1:{self.port}", "-w", str(workers)]
        if kind == "gunicorn":
            gunicorn = gunicorn_command()
            if gunicorn is None:
                raise Skip("gunicorn is not installed (pip install '.[bench]')")
            cmd = [
                *gunicorn,
                *bind,
                "-k",
                "sync",
                "--chdir",
                APPS_DIR,
                "--log-level",
                "warning",
                "wsgi_hello:app",
            ]
        else:
            self.scoreboard = os.path.join(tmp, f"scoreboard-{self.port}")
            target = os.path.join(APPS_DIR, "wsgi_hello.py:Handler")
            cmd = [sys.executable, "-m", "prefork", target, *bind, "--scoreboard-file", self.scoreboard]
            cmd += ["--log-level", "warning"] + (["--preload"] if kind == "prefork-preload" else [])
        self._board: Scoreboard | None = None
        self.server = Server(kind, cmd)  # its .started is taken just before the exec

    def idle_pids(self) -> set[int] | None:
        """Pids of the workers IDLE in the scoreboard (None while it cannot be read yet)."""
        if self.scoreboard is None:
            return None
        if self._board is None:
            try:
                self._board = Scoreboard.open(self.scoreboard)
            except (OSError, ValueError):
                return None
        return {s.pid for s in self._board.slots() if s.state is WorkerState.IDLE and s.pid}

    def children(self) -> set[int]:
        """The master's child pids (zombies included until reaped), from /proc."""
        try:
            with open(f"/proc/{self.server.pid}/task/{self.server.pid}/children") as fh:
                return {int(p) for p in fh.read().split()}
        except (OSError, ValueError):
            return set()

    def close(self) -> list[int]:
        if self._board is not None:
            with contextlib.suppress(Exception):
                self._board.close()
        return self.server.stop()


def wait(cond: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``cond`` every POLL s; the monotonic time it became true. RuntimeError after timeout."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(POLL)
    return time.monotonic()


def start_and_stop(kind: str, n: int, tmp: str) -> dict[str, Any]:
    """Start a pool of n, time first response and all-ready, then time an idle stop."""
    pool = Pool(kind, n, tmp)
    try:
        first = (pool.server.wait_ready(lambda: http_ok(pool.port, 0.5), timeout=30, interval=0.001)) * 1e3
        ready_ms = None
        if pool.scoreboard is not None:
            at = wait(lambda: len(pool.idle_pids() or ()) >= n, 30, f"{n} idle workers")
            ready_ms = (at - pool.server.started) * 1e3
        else:
            wait(lambda: len(pool.children()) >= n, 30, f"{n} children")
        time.sleep(0.2)
        t0 = time.monotonic()
        os.kill(pool.server.pid, signal.SIGTERM)
        try:  # polled every POLL s: Popen.wait(timeout) sleeps up to 50 ms between polls
            stop_ms: float | None = (wait(lambda: pool.server.proc.poll() is not None, 30, "exit") - t0) * 1e3
        except RuntimeError:
            stop_ms = None
    finally:
        left = pool.close()
    return {"first_response_ms": first, "all_ready_ms": ready_ms, "stop_ms": stop_ms, "left": left}


def restarts(kind: str, n: int, kills: int, tmp: str) -> dict[str, Any]:
    """SIGKILL one worker ``kills`` times; time to a replacement child, and to ready (prefork)."""
    pool = Pool(kind, n, tmp)
    exists: list[float] = []
    ready: list[float] = []
    try:
        pool.server.wait_ready(lambda: http_ok(pool.port, 0.5), timeout=30)
        for _ in range(kills):
            if pool.scoreboard is not None:
                wait(lambda: len(pool.idle_pids() or ()) >= n, 10, f"{n} idle workers")
            wait(lambda: len(pool.children()) >= n, 10, f"{n} children")
            time.sleep(0.05)
            victim = min(pool.idle_pids() or pool.children())
            t0 = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            at = wait(lambda v=victim: v not in (c := pool.children()) and len(c) >= n, 10, "a replacement")
            exists.append((at - t0) * 1e3)
            if pool.scoreboard is not None:

                def replaced(v: int = victim) -> bool:
                    idle = pool.idle_pids() or set()
                    return v not in idle and len(idle) >= n

                ready.append((wait(replaced, 10, "a ready replacement") - t0) * 1e3)
    finally:
        left = pool.close()

    def stats(xs: list[float]) -> dict[str, float] | None:
        return {"median_ms": statistics.median(xs), "max_ms": max(xs), "n": len(xs)} if xs else None

    return {"exists": stats(exists), "ready": stats(ready), "left": left}


def fmt(ms: float | None) -> str:
    return "n/a" if ms is None else f"{ms:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1,2,4,8", help="pool sizes for start and stop (1,2,4,8)")
    ap.add_argument("--runs", type=int, default=3, help="starts per contender and size, median kept (3)")
    ap.add_argument("--workers", type=int, default=2, help="pool size for the restarts (2)")
    ap.add_argument("--kills", type=int, default=30, help="worker SIGKILLs per contender (30)")
    ap.add_argument("--only", help="comma-separated contenders to run (default: all)")
    ap.add_argument("--json", metavar="PATH", help="write every figure to PATH as JSON")
    ap.add_argument("--check", action="store_true", help="exit 1 when a prefork target is missed")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = [k for k in CONTENDERS if not args.only or k in args.only.split(",")]
    m = machine()
    print(machine_line(m))
    print(f"sizes {sizes}, runs {args.runs}, restarts: {args.kills} kills of a pool of {args.workers}\n")

    failed = False
    skipped: dict[str, str] = {}
    starts: dict[str, dict[int, list[dict[str, Any]]]] = {k: {n: [] for n in sizes} for k in kinds}
    with tempfile.TemporaryDirectory(prefix="lifecycle-") as tmp:
        for kind in kinds:  # a start not measured: writes the .pyc files, warms the page cache
            with contextlib.suppress(Skip, RuntimeError):
                start_and_stop(kind, 1, tmp)
        for _ in range(args.runs):
            for n in sizes:
                for kind in kinds:
                    if kind in skipped:
                        continue
                    try:
                        fig = start_and_stop(kind, n, tmp)
                    except Skip as exc:
                        skipped[kind] = str(exc)
                        continue
                    except RuntimeError as exc:
                        print(f"{kind} N={n}: FAILED: {exc}", file=sys.stderr)
                        failed = True
                        continue
                    failed |= bool(fig["left"])
                    starts[kind][n].append(fig)
        restart: dict[str, dict[str, Any]] = {}
        for kind in kinds:
            if kind in skipped:
                continue
            try:
                restart[kind] = restarts(kind, args.workers, args.kills, tmp)
                failed |= bool(restart[kind]["left"])
            except RuntimeError as exc:
                print(f"{kind} restarts: FAILED: {exc}", file=sys.stderr)
                failed = True

    def med(figs: list[dict[str, Any]], key: str) -> float | None:
        xs = [f[key] for f in figs if f[key] is not None]
        return statistics.median(xs) if xs else None

    summary: dict[str, dict[int, dict[str, float | None]]] = {
        kind: {
            n: {k: med(figs, k) for k in ("first_response_ms", "all_ready_ms", "stop_ms")}
            for n, figs in by.items()
        }
        for kind, by in starts.items()
        if kind not in skipped
    }
    print(
        f"{'contender':<16} {'N':>2} {'first 200 ms':>13} {'all ready ms':>13} {'target':>7} {'stop ms':>8}"
    )
    verdicts: list[dict[str, Any]] = []
    for n in sizes:
        for kind, by in summary.items():
            s = by[n]
            print(
                f"{kind:<16} {n:>2} {fmt(s['first_response_ms']):>13} {fmt(s['all_ready_ms']):>13} "
                f"{start_target_ms(n):>7.0f} {fmt(s['stop_ms']):>8}"
            )
            if kind == "prefork":
                r, t = s["all_ready_ms"], start_target_ms(n)
                verdicts.append(
                    {
                        "target": f"prefork N={n} ready <= {t:.0f} ms",
                        "value": r,
                        "ok": r is not None and r <= t,
                    }
                )
                r = s["stop_ms"]
                verdicts.append(
                    {
                        "target": f"prefork N={n} stop <= {STOP_TARGET_MS:.0f} ms",
                        "value": r,
                        "ok": r is not None and r <= STOP_TARGET_MS,
                    }
                )
    print(f"\n{'restarts':<16} {'child exists ms (median/max)':>29} {'ready ms (median/max)':>23}")
    for kind, r in restart.items():
        e, rd = r["exists"], r["ready"]
        es = f"{e['median_ms']:.1f} / {e['max_ms']:.1f}" if e else "n/a"
        rs = f"{rd['median_ms']:.1f} / {rd['max_ms']:.1f}" if rd else "n/a"
        print(f"{kind:<16} {es:>29} {rs:>23}")
        if kind == "prefork":
            v = rd["median_ms"] if rd else None
            verdicts.append(
                {
                    "target": f"prefork restart ready median <= {RESTART_TARGET_MS:.0f} ms",
                    "value": v,
                    "ok": v is not None and v <= RESTART_TARGET_MS,
                }
            )
    print()
    for v in verdicts:
        print(f"{'PASS' if v['ok'] else 'FAIL'} {v['target']} ({fmt(v['value'])} ms)")
    for kind, why in skipped.items():
        print(f"skipped {kind}: {why.splitlines()[0][:200]}")
    if args.json:
        report = {
            "machine": m,
            "settings": vars(args),
            "starts": starts,
            "summary": summary,
            "restarts": restart,
        }
        with open(args.json, "w") as fh:
            json.dump({**report, "targets": verdicts, "skipped": skipped}, fh, indent=2)
        print(f"\nfigures written to {args.json}")
    if failed:
        return 1
    return 1 if args.check and not all(v["ok"] for v in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
