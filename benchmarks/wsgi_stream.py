"""Streaming memory: does a worker's memory stay flat while it streams 100 MiB from a generator?

Run it (gunicorn, the peer: ``pip install ".[bench]"``)::

    python benchmarks/wsgi_stream.py [--mib 100] [--slow-seconds 20] [--runs 1] [--only A,B]
                                     [--json PATH] [--check]

One WSGI app (``benchmarks/apps/stream_app.py:app``) answers ``GET /?bytes=N`` with N bytes
(``--mib``, 100 MiB) yielded by a generator in 64 KiB chunks, each a new object, and no
Content-Length. It is served, one worker each, in its own process group on a free 127.0.0.1 port,
by:

1. ``prefork-thread``: ``python -m prefork benchmarks/apps/stream_app.py:app -k thread --threads 4
   -w 1``;
2. ``prefork-sync``: the same with ``-k sync``;
3. ``gunicorn-gthread`` (the peer; skipped with a message when gunicorn is missing): ``gunicorn -k
   gthread --threads 4 -w 1 stream_app:app``.

Each is read by two clients on loopback, a fresh server for each:

- ``fast``: ``http.client`` reads the whole response at full speed into a 1 MiB buffer (at most
  ``--fast-timeout`` s, 60) and checks that every byte arrived;
- ``slow``: a raw socket sends the request, then reads it with ``recv(16384)`` and a 10 ms sleep
  after each (at most 1.6 MB/s) for ``--slow-seconds`` (20) and closes it unfinished: the
  server's writes block on a full socket while its generator could run ahead. Then the worker
  must answer GET /pid again within 5 s.

The worker (the process that answered GET /pid, which must be a child of the master) serves a
1 MiB stream first (a warm-up: imports, buffers, a thread); then its RSS (psutil) is read
("before") and sampled every 5 ms during the read and until the answer after it ("peak"). A
worker that holds the chunks it cannot send yet grows by up to the whole stream. Prints each
run, a table (MiB read, seconds, MiB/s, RSS before, peak and growth, MiB) and PASS/FAIL for the
target of each prefork row: RSS growth (the largest over ``--runs``) < 5 MiB.

Exit status: 0 when everything was measured (``--check``: 1 when a target fails), 1 when a server
failed, a fast read came short, the worker did not answer after a slow read, or a process outlived
its group's SIGKILL.
"""

from __future__ import annotations

import argparse
import http.client
import socket
import sys
import threading
import time
from typing import Any

import psutil
from apps import harness

CONTENDERS = ("prefork-thread", "prefork-sync", "gunicorn-gthread")
READERS = ("fast", "slow")
THREADS = 4
WARMUP_BYTES = 2**20
BUFFER = 2**20  # bytes the fast reader asks for at a time
SLOW_RECV = 16384  # bytes of each of the slow reader's recv()
SLOW_SLEEP = 0.01  # seconds the slow reader sleeps after each recv()
SAMPLE_EVERY = 0.005  # seconds between two RSS samples
GROWTH_LIMIT_MIB = 5.0
MIB = 2**20


def worker_pid(port: int, timeout: float = 5.0) -> int | None:
    """The pid GET /pid answers (that of the worker serving it), or None when it does not."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request("GET", "/pid")
            resp = conn.getresponse()
            body = resp.read()
            return int(body) if resp.status == 200 and body.isdigit() else None
        finally:
            conn.close()
    except OSError:
        return None


class PeakRSS:
    """A thread sampling a process's RSS every ``SAMPLE_EVERY`` s from :meth:`start` to :meth:`stop`;
    ``peak``, in bytes, the largest it saw (and the RSS at start and at stop)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = self.rss()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def _sample(self) -> None:
        while not self._done.wait(SAMPLE_EVERY):
            try:
                self.peak = max(self.peak, self.rss())
            except psutil.Error:
                return

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        try:
            self.peak = max(self.peak, self.rss())
        except psutil.Error:
            pass


def read_fast(port: int, total: int, timeout: float) -> int:
    """GET /?bytes=total read whole at full speed (http.client: chunked or to EOF); the body's
    bytes. RuntimeError on another status or after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", f"/?bytes={total}")
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"GET /?bytes={total}: status {resp.status}")
        buf, got = bytearray(BUFFER), 0
        while n := resp.readinto(buf):
            got += n
            if time.monotonic() > deadline:
                raise RuntimeError(f"fast read: {got} of {total} bytes after {timeout:g} s")
        return got
    finally:
        conn.close()


def read_slow(port: int, total: int, seconds: float) -> int:
    """GET /?bytes=total on a raw socket read with ``recv(SLOW_RECV)`` and a ``SLOW_SLEEP`` sleep
    after each, for ``seconds`` s or to EOF, then closed; the bytes received (head and framing
    included)."""
    deadline = time.monotonic() + seconds
    got = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        request = f"GET /?bytes={total} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        while time.monotonic() < deadline:
            data = sock.recv(SLOW_RECV)
            if not data:
                break
            got += len(data)
            time.sleep(SLOW_SLEEP)
    return got


def measure(kind: str, reader: str, args: argparse.Namespace) -> harness.Figures:
    """A fresh ``kind`` server, its worker warmed up, then read by ``reader`` while its RSS is sampled."""
    port = harness.free_port()
    cmd = harness.wsgi_command(kind, "stream_app:app", port, 1, THREADS)
    server = harness.Server(kind, cmd)
    total = int(args.mib * MIB)
    out: harness.Figures = {}
    try:
        server.wait_ready(lambda: worker_pid(port, 1.0) is not None)
        pid = worker_pid(port)
        children = {p.pid for p in psutil.Process(server.pid).children()}
        if pid not in children:
            raise RuntimeError(
                f"GET /pid answered {pid}, not a child of the master {server.pid} ({children})"
            )
        read_fast(port, WARMUP_BYTES, args.fast_timeout)
        with PeakRSS(pid) as rss:
            before = rss.peak
            t0 = time.monotonic()
            if reader == "fast":
                got = read_fast(port, total, args.fast_timeout)
            else:
                got = read_slow(port, total, args.slow_seconds)
            seconds = time.monotonic() - t0
            again = worker_pid(port)
        if reader == "fast" and got != total:
            raise RuntimeError(f"fast read: {got} of {total} bytes, then the end of the response")
        if again is None:
            raise RuntimeError(f"no answer to GET /pid after the {reader} read")
        out = {"pid": pid, "bytes": got, "seconds": seconds, "rss_before": before, "rss_peak": rss.peak}
        out["growth_mib"] = (rss.peak - before) / MIB
    finally:
        out["left"] = server.stop()
    return out


def show(fig: harness.Figures) -> str:
    """One run: what was read, how fast, the RSS."""
    mib = fig["bytes"] / MIB
    return (
        f"{mib:7.1f} MiB in {fig['seconds']:5.2f} s ({mib / fig['seconds']:6.1f} MiB/s); worker RSS "
        f"before {fig['rss_before'] / MIB:.1f} MiB, peak {fig['rss_peak'] / MIB:.1f}, "
        f"growth {fig['growth_mib']:.2f} MiB"
    )


def print_table(runs: dict[str, list[harness.Figures]]) -> None:
    """The last run of each contender and reader (the largest growth over the runs beside)."""
    print(
        f"\n{'contender':<17} {'reader':<6} {'MiB read':>9} {'seconds':>8} {'MiB/s':>7} "
        f"{'RSS before':>10} {'peak':>7} {'growth':>7} {'max growth':>10} {'< 5 MiB':>8}"
    )
    for name, figs in runs.items():
        if not figs:
            continue
        kind, reader = name.split()
        f, worst = figs[-1], max(x["growth_mib"] for x in figs)
        mib = f["bytes"] / MIB
        print(
            f"{kind:<17} {reader:<6} {mib:>9.1f} {f['seconds']:>8.2f} {mib / f['seconds']:>7.1f} "
            f"{f['rss_before'] / MIB:>10.1f} {f['rss_peak'] / MIB:>7.1f} {f['growth_mib']:>7.2f} "
            f"{worst:>10.2f} {'yes' if worst < GROWTH_LIMIT_MIB else 'NO':>8}"
        )


def main() -> int:
    ap = harness.bench_parser(__doc__)
    ap.add_argument("--mib", type=float, default=100, help="MiB each response streams (100)")
    ap.add_argument("--slow-seconds", type=float, default=20, help="seconds the slow reader reads (20)")
    ap.add_argument("--fast-timeout", type=float, default=60, help="seconds a fast read may take (60)")
    harness.add_runs_option(ap, 1, "runs of each contender and reader")
    harness.add_only_option(ap)
    harness.add_report_options(ap, check="a target fails")
    args = ap.parse_args()
    names = [f"{kind} {reader}" for kind in harness.chosen(CONTENDERS, args.only) for reader in READERS]
    m = harness.machine()
    print(harness.machine_line(m))
    print(
        f"stream: GET /?bytes={int(args.mib * MIB)} ({args.mib:g} MiB in 64 KiB chunks from a generator, "
        f"no Content-Length), 1 worker, {THREADS} threads (thread, gthread)"
    )
    print(
        f"readers: fast (http.client, whole response, {args.fast_timeout:g} s at most); "
        f"slow (recv({SLOW_RECV}), a {SLOW_SLEEP * 1e3:g} ms sleep, {args.slow_seconds:g} s, then closed); "
        f"runs {args.runs}\n"
    )

    def run(name: str) -> harness.Figures:
        kind, reader = name.split()
        return measure(kind, reader, args)

    runs, tally = harness.interleaved_runs(names, args.runs, run, show, 24)
    print_table(runs)
    verdicts = [
        harness.time_target(
            f"{name}: worker RSS growth < {GROWTH_LIMIT_MIB:g} MiB",
            max(f["growth_mib"] for f in runs[name]) if runs[name] else None,
            GROWTH_LIMIT_MIB,
            "MiB",
        )
        for name in names
        if name.startswith("prefork")
    ]
    harness.print_verdicts(verdicts)
    skipped_kinds = {name.split()[0]: why for name, why in tally.skipped.items()}
    harness.print_skipped(skipped_kinds)
    report: dict[str, Any] = {"machine": m, "settings": vars(args), "runs": runs, "targets": verdicts}
    harness.write_json(args.json, report | {"skipped": tally.skipped})
    return harness.exit_status(tally.failed, args.check, verdicts)


if __name__ == "__main__":
    sys.exit(main())
