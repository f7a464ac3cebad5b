"""Start, stop and restart costs of a prefork pool, against gunicorn serving the same app.

Run it::

    python benchmarks/lifecycle.py [--sizes 1,2,4,8] [--runs 3] [--kills 30] [--json PATH] [--check]

Contenders, each started as its own process group on a free 127.0.0.1 port:

- ``prefork``: ``python -m prefork benchmarks/apps/wsgi_hello.py:app -k sync -w N --scoreboard-file F``
  (prefork's WSGI server and the WSGI hello app; each worker imports the app after the fork);
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

import contextlib
import functools
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from apps import harness

from prefork.figures import WorkerState
from prefork.scoreboard import Scoreboard

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
        self.port = harness.free_port()
        self.scoreboard: str | None = None
        extra: list[str] = []
        if kind != "gunicorn":
            self.scoreboard = os.path.join(tmp, f"scoreboard-{self.port}")
            extra = ["--scoreboard-file", self.scoreboard] + (
                ["--preload"] if kind == "prefork-preload" else []
            )
        server = "gunicorn-sync" if kind == "gunicorn" else "prefork-sync"
        cmd = harness.wsgi_command(server, "wsgi_hello:app", self.port, workers, extra=extra)
        self._board: Scoreboard | None = None
        self.server = harness.Server(kind, cmd)  # its .started is taken just before the exec

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


def replaced(pids: Callable[[], set[int] | None], victim: int, n: int) -> Callable[[], bool]:
    """For :func:`wait`: whether ``pids()`` holds n pids, ``victim`` no longer among them."""

    def check() -> bool:
        now = pids() or set()
        return victim not in now and len(now) >= n

    return check


def start_and_stop(kind: str, n: int, tmp: str) -> harness.Figures:
    """Start a pool of n, time first response and all-ready, then time an idle stop."""
    pool = Pool(kind, n, tmp)
    try:
        first = (
            pool.server.wait_ready(lambda: harness.http_ok(pool.port, 0.5), timeout=30, interval=0.001)
        ) * 1e3
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


def restarts(kind: str, n: int, kills: int, tmp: str) -> harness.Figures:
    """SIGKILL one worker ``kills`` times; time to a replacement child, and to ready (prefork)."""
    pool = Pool(kind, n, tmp)
    exists: list[float] = []
    ready: list[float] = []
    try:
        pool.server.wait_ready(lambda: harness.http_ok(pool.port, 0.5), timeout=30)
        for _ in range(kills):
            if pool.scoreboard is not None:
                wait(lambda: len(pool.idle_pids() or ()) >= n, 10, f"{n} idle workers")
            wait(lambda: len(pool.children()) >= n, 10, f"{n} children")
            time.sleep(0.05)
            victim = min(pool.idle_pids() or pool.children())
            t0 = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            exists.append((wait(replaced(pool.children, victim, n), 10, "a replacement") - t0) * 1e3)
            if pool.scoreboard is not None:
                at = wait(replaced(pool.idle_pids, victim, n), 10, "a ready replacement")
                ready.append((at - t0) * 1e3)
    finally:
        left = pool.close()

    def stats(xs: list[float]) -> dict[str, float] | None:
        return {"median_ms": statistics.median(xs), "max_ms": max(xs), "n": len(xs)} if xs else None

    return {"exists": stats(exists), "ready": stats(ready), "left": left}


def main() -> int:
    ap = harness.bench_parser(__doc__)
    ap.add_argument("--sizes", default="1,2,4,8", help="pool sizes for start and stop (1,2,4,8)")
    harness.add_runs_option(ap, 3, "starts per contender and size")
    ap.add_argument("--workers", type=int, default=2, help="pool size for the restarts (2)")
    ap.add_argument("--kills", type=int, default=30, help="worker SIGKILLs per contender (30)")
    harness.add_only_option(ap)
    harness.add_report_options(ap, check="a prefork target is missed")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = harness.chosen(CONTENDERS, args.only)
    m = harness.machine()
    print(harness.machine_line(m))
    print(f"sizes {sizes}, runs {args.runs}, restarts: {args.kills} kills of a pool of {args.workers}\n")

    tally = harness.Tally()
    starts: dict[str, dict[int, list[harness.Figures]]] = {k: {n: [] for n in sizes} for k in kinds}
    restart: dict[str, harness.Figures] = {}
    with tempfile.TemporaryDirectory(prefix="lifecycle-") as tmp:
        for kind in kinds:  # a start not measured: writes the .pyc files, warms the page cache
            with contextlib.suppress(harness.Skip, RuntimeError):
                start_and_stop(kind, 1, tmp)
        for _ in range(args.runs):
            for n in sizes:
                for kind in kinds:
                    fig = tally.measure(
                        kind, f"{kind} N={n}", functools.partial(start_and_stop, kind, n, tmp)
                    )
                    if fig is not None:
                        starts[kind][n].append(fig)
        for kind in kinds:
            fig = tally.measure(
                kind, f"{kind} restarts", functools.partial(restarts, kind, args.workers, args.kills, tmp)
            )
            if fig is not None:
                restart[kind] = fig

    def med(figs: list[harness.Figures], key: str) -> float | None:
        xs = [f[key] for f in figs if f[key] is not None]
        return statistics.median(xs) if xs else None

    summary: dict[str, dict[int, dict[str, float | None]]] = {
        kind: {
            n: {k: med(figs, k) for k in ("first_response_ms", "all_ready_ms", "stop_ms")}
            for n, figs in by.items()
        }
        for kind, by in starts.items()
        if kind not in tally.skipped
    }
    print(
        f"{'contender':<16} {'N':>2} {'first 200 ms':>13} {'all ready ms':>13} {'target':>7} {'stop ms':>8}"
    )
    verdicts: list[dict[str, Any]] = []
    for n in sizes:
        for kind, by in summary.items():
            s, t = by[n], start_target_ms(n)
            first, ready, stop = (
                harness.fmt_ms(s[k]) for k in ("first_response_ms", "all_ready_ms", "stop_ms")
            )
            print(f"{kind:<16} {n:>2} {first:>13} {ready:>13} {t:>7.0f} {stop:>8}")
            if kind == "prefork":
                ready_target = f"prefork N={n} ready <= {t:.0f} ms"
                stop_target = f"prefork N={n} stop <= {STOP_TARGET_MS:.0f} ms"
                verdicts.append(harness.time_target(ready_target, s["all_ready_ms"], t))
                verdicts.append(harness.time_target(stop_target, s["stop_ms"], STOP_TARGET_MS))
    print(f"\n{'restarts':<16} {'child exists ms (median/max)':>29} {'ready ms (median/max)':>23}")
    for kind, r in restart.items():
        e, rd = r["exists"], r["ready"]
        es = f"{e['median_ms']:.1f} / {e['max_ms']:.1f}" if e else "n/a"
        rs = f"{rd['median_ms']:.1f} / {rd['max_ms']:.1f}" if rd else "n/a"
        print(f"{kind:<16} {es:>29} {rs:>23}")
        if kind == "prefork":
            target = f"prefork restart ready median <= {RESTART_TARGET_MS:.0f} ms"
            verdicts.append(harness.time_target(target, rd["median_ms"] if rd else None, RESTART_TARGET_MS))
    harness.print_verdicts(verdicts)
    harness.print_skipped(tally.skipped)
    report = {
        "machine": m,
        "settings": vars(args),
        "starts": starts,
        "summary": summary,
        "restarts": restart,
    }
    harness.write_json(args.json, {**report, "targets": verdicts, "skipped": tally.skipped})
    return harness.exit_status(tally.failed, args.check, verdicts)


if __name__ == "__main__":
    sys.exit(main())
