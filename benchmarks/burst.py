"""A burst: a dynamic pool (1..8 workers) follows a step from 10 to 250 requests a second.

Run it (about 3 minutes with the defaults)::

    python benchmarks/burst.py [--low 10] [--high 250] [--before 20] [--during 30] [--after 70]
                               [--sleep 0.02] [--plot PATH] [--json PATH] [--check]

The handler (``Handler`` below) reads a line, sleeps ``--sleep`` s (20 ms) and answers one
line: at 250 requests a second it keeps 5 workers busy on average, so the pool needs 6 or more.
It is served by ``python -m prefork benchmarks/burst.py:Handler --min-workers 1 --max-workers 8``
(the dynamic pool: it starts with the usable CPUs' count of workers, and settles at its resting
size under the low load before the step), and then by ``--workers 8`` (a fixed pool of 8), each on a
free 127.0.0.1 port in its own process group, stopped as ``apps.harness.Server.stop`` does.

The load is open-loop: request i is due at a fixed time on the schedule (``--low`` requests a
second for ``--before`` s, ``--high`` for ``--during`` s, ``--low`` again for ``--after`` s;
the fixed pool gets only the first two), each on a new connection, sent by asyncio whether or
not earlier ones were answered, and its latency runs from the time it was due to the end of the
answer (no coordinated omission). Percentiles come from HdrHistogram (``hdrh``, microseconds,
3 significant digits); a request not answered in 10 s, or answered wrongly, is an error.
The number of workers (IDLE, BUSY or STARTING in the scoreboard file) is sampled every 0.1 s.

It prints: when the pool first had 6 or more workers after the step (seconds after it); when
it was back, after the step down, to the size it had before the step; the p99 of the ramp
(the first 5 s of the step) apart, the p99 from 5 s after the step to its end for the dynamic
pool and the fixed pool of 8, and their ratio; a table of workers and p99 per 5 s; with
``--plot``, a PNG of both (matplotlib). The targets (issue "Memory and pool size"): 6 or
more workers within 3 s of the step, back within 60 s after it, and the steady p99 within
1.5x that of the fixed pool. ``--check`` exits 1 when one is missed.
"""

from __future__ import annotations

import asyncio
import os
import socketserver
import sys
import tempfile
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from apps import harness
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

from prefork.figures import WorkerState
from prefork.scoreboard import Scoreboard

#: Seconds a request may take before it counts as an error.
REQUEST_TIMEOUT = 10.0
#: Seconds after the step that are the ramp; the steady p99 is measured after them.
RAMP = 5.0
#: Seconds between two samples of the pool's size.
SAMPLE_EVERY = 0.1
SLEEP = float(os.environ.get("BURST_SLEEP", "0.02"))


class Handler(socketserver.StreamRequestHandler):
    """Sleep ``BURST_SLEEP`` (0.02) s per line, then answer it."""

    def handle(self) -> None:
        for line in self.rfile:
            time.sleep(SLEEP)
            self.wfile.write(line)


def schedule(phases: list[tuple[float, float]]) -> list[float]:
    """The times (seconds from the start) requests are due: ``phases`` of (rate, seconds)."""
    due, start = [], 0.0
    for rate, seconds in phases:
        count = int(rate * seconds)
        due += [start + i / rate for i in range(count)]
        start += seconds
    return due


async def _one(port: int, due: float, t0: float, out: list[tuple[float, float, bool]]) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, t0 + due - loop.time()))
    ok = False
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(b"ping\n")
                ok = await reader.readline() == b"ping\n"
            finally:
                writer.close()
    except (OSError, TimeoutError):
        pass
    out.append((due, loop.time() - (t0 + due), ok))


async def _drive(port: int, due: list[float], t0: float) -> list[tuple[float, float, bool]]:
    """Send the requests ``due`` (seconds after ``t0``, a ``time.monotonic()`` value: the
    default event loop's clock); each one's (due, latency, ok)."""
    out: list[tuple[float, float, bool]] = []
    pending: set[asyncio.Future[None]] = set()
    for when in due:  # created a little ahead of time, not all at once
        while when > asyncio.get_running_loop().time() - t0 + 2.0 and pending:
            _, pending = await asyncio.wait(pending, timeout=0.5)
        pending.add(asyncio.ensure_future(_one(port, when, t0, out)))
    if pending:
        await asyncio.wait(pending)
    return out


def _sampler(path: str, samples: list[tuple[float, int]], stop: threading.Event, t0: float) -> None:
    live = (WorkerState.IDLE, WorkerState.BUSY, WorkerState.STARTING)
    with Scoreboard.open(path) as board:
        while not stop.wait(SAMPLE_EVERY):
            count = sum(1 for s in board.slots() if s.state in live)
            samples.append((time.monotonic() - t0, count))


def run(label: str, pool_flags: list[str], phases: list[tuple[float, float]]) -> dict[str, Any]:
    """Serve with ``pool_flags``, drive ``phases``; the requests and the pool's sizes."""
    board = os.path.join(tempfile.mkdtemp(prefix="burst-"), "scoreboard")
    port = harness.free_port()
    target = f"{os.path.abspath(__file__)}:Handler"
    command = [sys.executable, "-m", "prefork", target, "--bind", f"127.0.0.1:{port}", *pool_flags]
    command += ["--scoreboard-file", board, "--control-socket", "off", "--backlog", "1024"]
    server = harness.Server(label, command, env={"BURST_SLEEP": str(SLEEP)})
    try:
        server.wait_ready(lambda: harness.line_ok(port) and os.path.exists(board))
        time.sleep(1.0)  # the pool settles
        samples: list[tuple[float, int]] = []
        stop = threading.Event()
        t0 = time.monotonic() + 0.3
        sampler = threading.Thread(target=_sampler, args=(board, samples, stop, t0), daemon=True)
        sampler.start()
        requests = asyncio.run(_drive(port, schedule(phases), t0))
        stop.set()
        sampler.join(5)
        log = server.text()
    finally:
        left = server.stop()
    if left:
        raise RuntimeError(f"{label}: processes left behind: {left}")
    return {"requests": sorted(requests), "samples": samples, "log": log}


def p99(requests: list[tuple[float, float, bool]], start: float, end: float) -> tuple[float | None, int, int]:
    """(p99 ms, requests, errors) of the requests due in [start, end)."""
    histogram = HdrHistogram(1, int(REQUEST_TIMEOUT * 1e6), 3)
    count = errors = 0
    for due, latency, ok in requests:
        if start <= due < end:
            count += 1
            errors += not ok
            histogram.record_value(max(1, min(int(latency * 1e6), int(REQUEST_TIMEOUT * 1e6))))
    return (histogram.get_value_at_percentile(99) / 1000 if count else None), count, errors


def first_time(samples: list[tuple[float, int]], after: float, test: Any) -> float | None:
    """Seconds after ``after`` of the first sample at or after it that passes ``test``."""
    return next((t - after for t, n in samples if t >= after and test(n)), None)


def main() -> int:
    ap = harness.bench_parser(__doc__)
    ap.add_argument("--low", type=float, default=10.0, help="requests a second before and after (10)")
    ap.add_argument("--high", type=float, default=250.0, help="requests a second during the step (250)")
    ap.add_argument("--before", type=float, default=20.0, help="seconds before the step (20)")
    ap.add_argument("--during", type=float, default=30.0, help="seconds of the step (30)")
    ap.add_argument("--after", type=float, default=70.0, help="seconds after the step (70)")
    ap.add_argument("--plot", metavar="PATH", help="write a PNG of workers and p99 over time")
    harness.add_report_options(ap, "a target is missed")
    args = ap.parse_args()
    step, down = args.before, args.before + args.during
    print(harness.machine_line(harness.machine()))
    print(
        f"load: {args.low:g}/s for {args.before:g} s, {args.high:g}/s for {args.during:g} s, {args.low:g}/s "
        f"for {args.after:g} s; handler sleeps {SLEEP * 1000:g} ms; open loop, a connection per request"
    )
    dynamic = run(
        "dynamic 1..8",
        ["--min-workers", "1", "--max-workers", "8"],
        [(args.low, args.before), (args.high, args.during), (args.low, args.after)],
    )
    fixed = run("fixed 8", ["--workers", "8"], [(args.low, args.before), (args.high, args.during)])

    samples = dynamic["samples"]
    before = max((n for t, n in samples if step - 2 <= t < step), default=1)
    to_six = first_time(samples, step, lambda n: n >= 6)
    peak = max((n for t, n in samples if step <= t < down), default=0)
    back = first_time(samples, down, lambda n: n <= before)
    ramp = p99(dynamic["requests"], step, step + RAMP)
    steady = p99(dynamic["requests"], step + RAMP, down)
    fixed_steady = p99(fixed["requests"], step + RAMP, down)
    ratio = harness.ratio(steady[0], fixed_steady[0])
    print()
    print(
        f"dynamic pool: {before} worker(s) before the step; 6 or more {fmt_s(to_six)} after it, "
        f"at most {peak}; back to {before} {fmt_s(back)} after the step down"
    )
    print(
        f"ramp (first {RAMP:g} s of the step), dynamic: p99 {harness.fmt_ms(ramp[0])} ms "
        f"({ramp[1]} requests, {ramp[2]} errors)"
    )
    print(
        f"steady (step + {RAMP:g} s to its end): dynamic p99 {harness.fmt_ms(steady[0])} ms "
        f"({steady[1]} requests, {steady[2]} errors); fixed 8 p99 {harness.fmt_ms(fixed_steady[0])} ms "
        f"({fixed_steady[1]} requests, {fixed_steady[2]} errors); ratio {harness.fmt_ratio(ratio)}"
    )
    print()
    print(f"{'window':>12} {'rate':>6} {'workers':>8} {'p99 ms':>8} {'fixed 8 p99':>12}")
    end = down + args.after
    for start in range(0, int(end), 5):
        rate = args.high if step <= start < down else args.low
        sizes = [n for t, n in samples if start <= t < start + 5]
        mine, theirs = p99(dynamic["requests"], start, start + 5), p99(fixed["requests"], start, start + 5)
        print(
            f"{start:>5}-{start + 5:<5}s {rate:>6g} {max(sizes, default=0):>8} "
            f"{harness.fmt_ms(mine[0]):>8} {harness.fmt_ms(theirs[0]):>12}"
        )
    grew = "\n".join(line for line in dynamic["log"].splitlines() if "Dynamic pool" in line)
    print("\nthe master's log of the dynamic pool:\n" + grew)
    verdicts = [
        verdict("6 or more workers within 3 s of the step", to_six, 3.0, fmt_s(to_six)),
        verdict("back to the size before the step within 60 s of the step down", back, 60.0, fmt_s(back)),
        verdict("steady p99 within 1.5x the fixed pool of 8", ratio, 1.5, harness.fmt_ratio(ratio)),
        verdict("no failed request (dynamic)", ramp[2] + steady[2], 0, f"{ramp[2] + steady[2]} failed"),
    ]
    print()
    for v in verdicts:
        print(f"{'PASS' if v['ok'] else 'FAIL'} {v['target']} ({v['shown']})")
    if args.plot:
        plot(args.plot, dynamic, fixed, step, down)
    harness.write_json(
        args.json,
        {
            "arguments": vars(args),
            "before": before,
            "to_six_s": to_six,
            "peak": peak,
            "back_s": back,
            "ramp_p99_ms": ramp[0],
            "steady_p99_ms": steady[0],
            "fixed_steady_p99_ms": fixed_steady[0],
            "ratio": ratio,
            "samples": samples,
            "verdicts": verdicts,
        },
    )
    return harness.exit_status(False, args.check, verdicts)


def verdict(target: str, value: float | None, maximum: float, shown: str) -> dict[str, Any]:
    """``{"target", "value", "shown", "ok"}``: ok when ``value`` is known and at most ``maximum``."""
    return {"target": target, "value": value, "shown": shown, "ok": value is not None and value <= maximum}


def fmt_s(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def plot(path: str, dynamic: dict[str, Any], fixed: dict[str, Any], step: float, down: float) -> None:
    """Workers over time, and p99 per second, of both pools, in one PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    for run_, label in ((dynamic, "dynamic 1..8"), (fixed, "fixed 8")):
        times, counts = zip(*run_["samples"], strict=True) if run_["samples"] else ((), ())
        top.step(times, counts, where="post", label=label)
        end = int(max(d for d, _, _ in run_["requests"])) + 1
        seconds = list(range(end))
        bottom.plot(seconds, [p99(run_["requests"], s, s + 1)[0] for s in seconds], label=label)
    for axis in (top, bottom):
        axis.axvspan(step, down, color="0.9")
        axis.legend()
    top.set_ylabel("workers")
    bottom.set_ylabel("p99 per second (ms)")
    bottom.set_yscale("log")
    bottom.set_xlabel("seconds (the step shaded)")
    figure.tight_layout()
    figure.savefig(path)
    print(f"plot written to {path}")


if __name__ == "__main__":
    sys.exit(main())
