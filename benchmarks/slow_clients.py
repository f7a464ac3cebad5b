"""Slow and idle clients: normal requests' latency while 200 connections idle or trickle.

Run it (from anywhere; about 5 minutes with the defaults, 2 with ``--quick``)::

    python benchmarks/slow_clients.py [--duration 20] [--attack 60] [--classes sync,thread]
                                      [--json PATH] [--check] [--quick]

``Handler`` below (GET anything -> 200 ``Hello, world!\\n`` with Content-Length, HTTP/1.0, the
response in one write, no logging) is served by ``python -m prefork
benchmarks/slow_clients.py:Handler --bind 127.0.0.1:PORT -w 4 -k sync`` and, in turn, by the
same with ``-k thread --threads 64``: every other setting at its default (``socket_timeout``
10 s, ``read_min_rate`` 500 bytes/s, ``read_deadline`` 20 s, ``defer_accept`` auto, i.e.
``TCP_DEFER_ACCEPT`` for ``socket_timeout`` seconds, which the kernel rounds up to 15). Each
server runs in its own process group on a free 127.0.0.1 port and is stopped as
``apps.harness.Server.stop`` does (SIGTERM, then SIGKILL to the group, then a psutil check
that nothing is left).

**Normal load**, all along: 8 client threads, each a GET / on a fresh connection
(``Connection: close``) read to EOF, paced to 160 requests/s in all (one every 50 ms per
thread, the threads spread over those 50 ms; a thread that falls behind skips to its next
slot, without catching up, so that after a stall they do not all send at once). A
request's latency runs from its connect to the end of the answer (``time.perf_counter``); a
request not answered within 15 s is a timeout and counts with its full 15 s; any answer other
than the 200 hello (a reset, an EOF, another status) is an error, with the time it took.
Percentiles come from an HdrHistogram (``hdrhistogram``, microseconds, 3 significant
digits). These clients wait for each answer (closed loop): a stall of the server delays only
the 8 requests in flight, not the ones that would have been sent meanwhile (coordinated
omission). ``p99 corr`` is the p99 corrected for that (HdrHistogram's
``record_corrected_value`` with each thread's 50 ms interval), for information; the targets
use the plain p99, as measured.

**Phases**, one server per worker class, the normal load running throughout (2 s of warm-up
not counted):

1. **baseline**: ``--duration`` s (20) without attack;
2. **idle**: 200 connections opened at once and left silent for ``--attack`` s (60), each one
   the server closes (or resets) counted as cut, with how long it lived, and replaced at once
   by a new one (an attacker reconnects); then all closed, and 2 s not counted;
3. **trickle**: 200 connections each sending ``GET / HTTP/1.1\\r\\nHost: x\\r\\nX-Pad: yyy...``
   a byte a second (the first at once), never finishing, for ``--attack`` s, replaced at once
   when cut;
4. **recovery**: once the tricklers are all closed, the time until a request sent then is
   served normally again: the start of the first of 10 requests in a row (by start time,
   started after the close) that were all answered within 2x the baseline p99, bounded by
   60 s (``--attack`` s when shorter).

A request belongs to the phase in which it started. The 200 attack connections are driven by
one thread with a selector (not 200 threads), so that the client side, which shares the
machine's cores with the server, stays cheap; the soft ``RLIMIT_NOFILE`` is raised to the hard
one when it is below what they need.

It prints, per worker class: requests, req/s, p50, p99, max, corrected p99 and errors of each
phase, its p99 over the baseline's, and the CPU the server used and the rest of the machine
used (other programs, interrupts: busy time less the server's and this script's), in % of all
the cores, which says whether something else disturbed the phase; for each attack, connections
opened, cut by the server (and answered before the cut), the median seconds a cut one lived,
those still open at the end; the recovery time; then PASS/FAIL for the targets (issue text:
"with 200 idle clients held open for 60 s, sync and thread (``--threads 64``) serve normal
requests with p99 within 2x of the unattacked p99; with 200 trickling clients (a byte a second,
60 s), the thread worker keeps p99 within 2x, and the sync pool's recovery time after the
attack stops is given"): idle p99 <= 2x baseline p99 with no error, sync and thread; trickle
p99 <= 2x baseline p99 with no error, thread. The sync pool under the trickle attack has no
target: its 4 workers each give a trickler ``socket_timeout`` (10 s) before cutting it, and the
normal requests wait in the accept queue behind the 200 (FIFO), so they time out; its recovery
time is the figure. The header says the machine's load average at start: other work on the
machine moves every figure, the baseline included.

Exit status: 0 when everything was measured (whatever the figures, unless ``--check``: then 1
when a target is missed), 1 when a server failed to start or died, the attack failed, or a
process outlived its group's SIGKILL.
"""

from __future__ import annotations

import errno
import functools
import heapq
import itertools
import math
import os
import resource
import selectors
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, NamedTuple

import psutil
from apps import harness
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

WORKERS = 4
THREADS = 64  # per worker, for the thread class
CLASSES = ("sync", "thread")
ATTACKERS = 200
LOAD_THREADS = 8
LOAD_RATE = 160.0  # normal requests per second, all threads together
CLIENT_TIMEOUT = 15.0  # seconds a normal request may take before it counts as a timeout
WARMUP = 2.0
SETTLE = 2.0  # seconds between the idle attack's end and the trickle attack
TRICKLE_EVERY = 1.0  # seconds between two bytes of a trickler
RECONNECT_AFTER_ERROR = 0.1  # seconds before an attack connection that failed to connect is retried
TARGET = 2.0  # p99 under attack at most this many times the baseline's
WINDOW = 10  # requests in a row within TARGET x the baseline p99 that mark the recovery
RECOVERY_LIMIT = 60.0
PHASES = ("baseline", "idle", "trickle", "recovery")
ATTACKS = ("idle", "trickle")

BODY = b"Hello, world!\n"
RESPONSE = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
TRICKLE_HEAD = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: "


class Handler(BaseHTTPRequestHandler):
    """The hello handler the servers run (``benchmarks/slow_clients.py:Handler``): one request
    per connection (HTTP/1.0), the whole response in one write, no logging."""

    def do_GET(self) -> None:
        self.wfile.write(RESPONSE)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def command(cls: str, port: int) -> list[str]:
    """The server's command line: 4 workers of ``cls`` on 127.0.0.1:port, defaults otherwise."""
    target = os.path.abspath(__file__) + ":Handler"
    cmd = [sys.executable, "-m", "prefork", target, "--bind", f"127.0.0.1:{port}", "-w", str(WORKERS)]
    cmd += ["-k", cls] + (["--threads", str(THREADS)] if cls == "thread" else [])
    return [*cmd, "--log-level", "warning"]


def raise_fd_limit(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE to the hard one when it is below ``needed``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- the normal load ----------------------------------------------------------------------------------


class Sample(NamedTuple):
    """One normal request: when it started (perf_counter), how long it took (s), and how it
    ended: 'ok', 'timeout', 'reset', 'eof', 'status ...' or the error's name."""

    start: float
    latency: float
    outcome: str


def get(port: int) -> str:
    """GET / on a fresh connection, read to EOF, within CLIENT_TIMEOUT s in all; the outcome."""
    deadline = time.perf_counter() + CLIENT_TIMEOUT
    chunks = []
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as sock:
            sock.settimeout(max(0.001, deadline - time.perf_counter()))
            sock.sendall(REQUEST)
            while True:
                sock.settimeout(max(0.001, deadline - time.perf_counter()))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    except TimeoutError:
        return "timeout"
    except ConnectionResetError:
        return "reset"
    except OSError as exc:
        return type(exc).__name__
    answer = b"".join(chunks)
    if not answer:
        return "eof"
    if answer != RESPONSE:
        return f"status {answer.split(b' ', 2)[1:2]!r}"
    return "ok"


class Load:
    """LOAD_THREADS threads sending GET / at LOAD_RATE requests/s in all, each request a
    :class:`Sample` (appended as it ends), until :meth:`stop`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.interval = LOAD_THREADS / LOAD_RATE  # seconds between two starts of one thread
        self.samples: list[Sample] = []
        self.done = threading.Event()
        self.threads = [
            threading.Thread(target=self.client, args=(k,), daemon=True, name=f"load-{k}")
            for k in range(LOAD_THREADS)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def client(self, k: int) -> None:
        next_at = time.perf_counter() + k * self.interval / LOAD_THREADS
        while not self.done.is_set():
            delay = next_at - time.perf_counter()
            if delay > 0 and self.done.wait(delay):
                break
            start = time.perf_counter()
            outcome = get(self.port)
            now = time.perf_counter()
            self.samples.append(Sample(start, now - start, outcome))
            # The next slot on this thread's own grid: after a stall, the threads stay spread
            # over the interval instead of all sending at once.
            next_at += self.interval * max(1, math.ceil((now - next_at) / self.interval))

    def stop(self) -> int:
        """Stop sending; wait (at most CLIENT_TIMEOUT + 5 s) for the requests in flight; the
        number of threads still running (0 normally)."""
        self.done.set()
        deadline = time.monotonic() + CLIENT_TIMEOUT + 5
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return sum(t.is_alive() for t in self.threads)

    def started_between(self, begin: float, end: float) -> list[Sample]:
        return [s for s in list(self.samples) if begin <= s.start < end]


def histogram() -> Any:
    """An empty HdrHistogram of microseconds, 1 us to 1 hour, 3 significant digits."""
    return HdrHistogram(1, 3_600_000_000, 3)


def phase_figures(samples: list[Sample], seconds: float, interval: float) -> harness.Figures:
    """Requests, req/s, p50/p99/max and corrected p99 (ms), errors and their kinds."""
    plain, corrected = histogram(), histogram()
    for s in samples:
        us = max(1, round(s.latency * 1e6))
        plain.record_value(us)
        corrected.record_corrected_value(us, round(interval * 1e6))
    errors = Counter(s.outcome for s in samples if s.outcome != "ok")
    known = bool(samples)
    return {
        "seconds": seconds,
        "requests": len(samples),
        "rps": len(samples) / seconds if seconds > 0 else None,
        "p50_ms": plain.get_value_at_percentile(50) / 1e3 if known else None,
        "p99_ms": plain.get_value_at_percentile(99) / 1e3 if known else None,
        "max_ms": plain.get_max_value() / 1e3 if known else None,
        "p99_corrected_ms": corrected.get_value_at_percentile(99) / 1e3 if known else None,
        "errors": sum(errors.values()),
        "timeouts": errors["timeout"],
        "error_kinds": dict(errors),
    }


def recovery_seconds(samples: Iterable[Sample], stopped: float, threshold_s: float) -> float | None:
    """Seconds from ``stopped`` to the start of the first of WINDOW requests in a row (by start
    time, started at ``stopped`` or later) all answered within ``threshold_s``; None if none."""
    after = sorted((s for s in samples if s.start >= stopped), key=lambda s: s.start)
    good = 0
    for i, s in enumerate(after):
        good = good + 1 if s.outcome == "ok" and s.latency <= threshold_s else 0
        if good == WINDOW:
            return after[i - WINDOW + 1].start - stopped
    return None


# -- the attack ---------------------------------------------------------------------------------------


@dataclass(eq=False)
class Conn:
    """One attack connection."""

    sock: socket.socket
    opened: float  # perf_counter at connect()
    connected: bool = False
    closed: bool = False
    answered: bool = False  # the server sent something
    sent: int = 0


def trickle_byte(n: int) -> bytes:
    """The ``n``-th byte a trickler sends: TRICKLE_HEAD, then 'y' forever."""
    return TRICKLE_HEAD[n : n + 1] or b"y"


class Attack:
    """ATTACKERS connections to 127.0.0.1:port, all from one thread and a selector: 'idle' ones
    send nothing, 'trickle' ones an endless request a byte every TRICKLE_EVERY s. One the
    server closes or resets is cut: how long it lived is kept, and a new one replaces it at
    once. :meth:`stop` closes them all."""

    def __init__(self, port: int, kind: str) -> None:
        self.address = ("127.0.0.1", port)
        self.kind = kind
        self.selector = selectors.DefaultSelector()
        self.conns: set[Conn] = set()
        # (when, tie-breaker, connection to send a byte on, or None: open a connection)
        self.timers: list[tuple[float, int, Conn | None]] = []
        self.seq = itertools.count()
        self.lived: list[float] = []  # seconds each cut connection lived
        self.opened = 0
        self.answered = 0
        self.connect_errors = 0
        self.bytes_sent = 0
        self.open_at_end = 0
        self.started = 0.0
        self.stopped = 0.0  # perf_counter once all are closed
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True, name=f"attack-{kind}")

    def start(self) -> None:
        self.started = time.perf_counter()
        self.thread.start()

    def stop(self) -> None:
        """Close every connection (the thread does, then ends); RuntimeError if it failed."""
        self.done.set()
        self.thread.join(10)
        if self.thread.is_alive():
            raise RuntimeError(f"{self.kind} attack: its thread did not end within 10 s")
        if self.error is not None:
            raise RuntimeError(f"{self.kind} attack failed: {self.error!r}") from self.error

    def run(self) -> None:
        try:
            for _ in range(ATTACKERS):
                self.open()
            while not self.done.is_set():
                now = time.perf_counter()
                while self.timers and self.timers[0][0] <= now:
                    when, _, conn = heapq.heappop(self.timers)
                    if conn is None:
                        self.open()
                    elif not conn.closed:
                        self.trickle(conn, when)
                wait = min(0.1, self.timers[0][0] - now) if self.timers else 0.1
                for key, events in self.selector.select(max(0.0, wait)):
                    conn = key.data
                    if conn.closed:
                        continue
                    if not conn.connected:
                        self.connected(conn)
                    elif events & selectors.EVENT_READ:
                        self.readable(conn)
        except BaseException as exc:  # said by stop(), in the main thread
            self.error = exc
        finally:
            self.open_at_end = len(self.conns)
            for conn in list(self.conns):
                self.drop(conn)
            self.selector.close()
            self.stopped = time.perf_counter()

    def later(self, delay: float, conn: Conn | None) -> None:
        heapq.heappush(self.timers, (time.perf_counter() + delay, next(self.seq), conn))

    def open(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        conn = Conn(sock, time.perf_counter())
        err = sock.connect_ex(self.address)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self.connect_errors += 1
            self.later(RECONNECT_AFTER_ERROR, None)
            return
        self.opened += 1
        self.conns.add(conn)
        self.selector.register(sock, selectors.EVENT_WRITE, conn)

    def connected(self, conn: Conn) -> None:
        """The connect() finished (writable): start reading, and trickling."""
        if conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.connect_errors += 1
            self.drop(conn)
            self.later(RECONNECT_AFTER_ERROR, None)
            return
        conn.connected = True
        self.selector.modify(conn.sock, selectors.EVENT_READ, conn)
        if self.kind == "trickle":
            self.trickle(conn, time.perf_counter())

    def trickle(self, conn: Conn, when: float) -> None:
        """Send the next byte; the one after TRICKLE_EVERY s after ``when``."""
        try:
            conn.sent += conn.sock.send(trickle_byte(conn.sent))
            self.bytes_sent += 1
        except BlockingIOError:
            pass
        except OSError:
            self.cut(conn)
            return
        heapq.heappush(self.timers, (when + TRICKLE_EVERY, next(self.seq), conn))

    def readable(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:  # reset
            data = b""
        if data:  # an answer (an error status): the close follows
            conn.answered = True
        else:
            self.cut(conn)

    def cut(self, conn: Conn) -> None:
        """The server closed or reset ``conn``: count it, replace it."""
        self.lived.append(time.perf_counter() - conn.opened)
        self.answered += conn.answered
        self.drop(conn)
        self.open()

    def drop(self, conn: Conn) -> None:
        conn.closed = True
        self.conns.discard(conn)
        self.selector.unregister(conn.sock)
        conn.sock.close()

    def figures(self) -> harness.Figures:
        return {
            "seconds": self.stopped - self.started,
            "opened": self.opened,
            "cut": len(self.lived),
            "answered_then_cut": self.answered,
            "lived_median_s": statistics.median(self.lived) if self.lived else None,
            "lived_max_s": max(self.lived) if self.lived else None,
            "open_at_end": self.open_at_end,
            "connect_errors": self.connect_errors,
            "bytes_sent": self.bytes_sent,
        }


# -- one worker class ---------------------------------------------------------------------------------


def hold(server: harness.Server, seconds: float) -> None:
    """Sleep ``seconds``; RuntimeError as soon as the server's master has exited."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name}: master exited with status {server.proc.returncode}")
        time.sleep(min(0.25, left))


CpuReading = tuple[float, float, float]


def cpu_reading(pgid: int) -> CpuReading:
    """CPU seconds used so far by the whole machine (busy: not idle nor waiting for I/O), by
    the server's process group, and by this script."""
    t = psutil.cpu_times()
    busy = sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))
    own = os.times()
    return busy, harness.group_cpu_seconds(pgid), own.user + own.system


def cpu_shares(before: CpuReading, after: CpuReading, seconds: float) -> dict[str, float | None]:
    """Between two readings: the server's CPU and the rest's (other programs, interrupts: the
    machine's busy time less the server's and this script's), in % of all the cores."""
    capacity = seconds * (os.cpu_count() or 1)
    if capacity <= 0:
        return {"server_cpu_pct": None, "other_cpu_pct": None}
    busy, server, own = (b - a for a, b in zip(before, after, strict=True))
    return {
        "server_cpu_pct": 100 * server / capacity,
        "other_cpu_pct": 100 * max(0.0, busy - server - own) / capacity,
    }


def attack(server: harness.Server, port: int, kind: str, seconds: float) -> tuple[Attack, float, float]:
    """Run a ``kind`` attack for ``seconds``; it, and when it began and ended (all closed)."""
    raid = Attack(port, kind)
    raid.start()
    try:
        hold(server, seconds)
    finally:
        raid.stop()
    return raid, raid.started, raid.stopped


def wait_recovery(
    server: harness.Server, load: Load, stopped: float, threshold_s: float, limit: float
) -> None:
    """Hold until the normal requests have recovered (then 1 s more, for those in flight), or
    ``limit`` s after ``stopped``."""
    while time.perf_counter() < stopped + limit:
        if recovery_seconds(load.samples, stopped, threshold_s) is not None:
            hold(server, 1.0)
            return
        hold(server, 0.2)


def measure_class(cls: str, duration: float, attack_s: float) -> harness.Figures:
    """One server of worker class ``cls``, the four phases; its figures."""
    port = harness.free_port()
    server = harness.Server(cls, command(cls, port))
    load: Load | None = None
    fig: harness.Figures = {"class": cls, "command": " ".join(command(cls, port))}
    marks: dict[str, tuple[float, float]] = {}
    cpu: dict[str, tuple[CpuReading, CpuReading]] = {}
    attacks: dict[str, harness.Figures] = {}
    threshold_s = None
    try:
        server.wait_ready(lambda: harness.http_ok(port), timeout=30)
        load = Load(port)
        load.start()
        hold(server, WARMUP)
        reading = cpu_reading(server.pid)
        begin = time.perf_counter()
        hold(server, duration)
        marks["baseline"] = (begin, time.perf_counter())
        cpu["baseline"] = (reading, reading := cpu_reading(server.pid))
        baseline = phase_figures(load.started_between(*marks["baseline"]), duration, load.interval)
        if baseline["p99_ms"] is None:
            raise RuntimeError(f"{cls}: no normal request during the baseline")
        threshold_s = TARGET * baseline["p99_ms"] / 1e3
        for kind in ATTACKS:
            reading = cpu_reading(server.pid)
            raid, begin, end = attack(server, port, kind, attack_s)
            marks[kind] = (begin, end)
            cpu[kind] = (reading, reading := cpu_reading(server.pid))
            attacks[kind] = raid.figures()
            if kind != ATTACKS[-1]:
                hold(server, SETTLE)
        stopped = marks[ATTACKS[-1]][1]
        limit = min(RECOVERY_LIMIT, attack_s)
        wait_recovery(server, load, stopped, threshold_s, limit)
        marks["recovery"] = (stopped, time.perf_counter())
        cpu["recovery"] = (reading, cpu_reading(server.pid))
    finally:
        fig["load_threads_stuck"] = load.stop() if load else 0
        fig["left"] = server.stop()
        fig["needed_sigkill"] = server.needed_sigkill
    if fig["load_threads_stuck"]:
        raise RuntimeError(f"{cls}: {fig['load_threads_stuck']} load threads still running after the stop")
    assert load is not None and threshold_s is not None
    fig["phases"] = {
        phase: {
            **phase_figures(load.started_between(a, b), b - a, load.interval),
            **cpu_shares(*cpu[phase], b - a),
        }
        for phase, (a, b) in marks.items()
    }
    base_p99 = fig["phases"]["baseline"]["p99_ms"]
    for phase in fig["phases"].values():
        phase["p99_over_baseline"] = harness.ratio(phase["p99_ms"], base_p99)
    fig["attacks"] = attacks
    fig["recovery_threshold_ms"] = threshold_s * 1e3
    fig["recovery_s"] = recovery_seconds(load.samples, marks["recovery"][0], threshold_s)
    fig["recovery_limit_s"] = min(RECOVERY_LIMIT, attack_s)
    fig["load_avg_1m_at_end"] = os.getloadavg()[0]
    return fig


# -- report -------------------------------------------------------------------------------------------


def ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}%"


def seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def print_class(fig: harness.Figures) -> None:
    cls = fig["class"]
    print(f"\n{cls}: {WORKERS} workers" + (f" x {THREADS} threads" if cls == "thread" else ""), end="")
    print(f", load average {fig['load_avg_1m_at_end']:.2f} at its end")
    head = f"  {'phase':<9} {'requests':>8} {'req/s':>6} {'p50 ms':>7} {'p99 ms':>8} {'max ms':>8}"
    print(head + f" {'p99 corr':>9} {'errors':>6} {'p99/base':>8} {'srv cpu':>7} {'other':>6}")
    for name, p in fig["phases"].items():
        row = f"  {name:<9} {p['requests']:>8} {p['rps']:>6.1f} {ms(p['p50_ms']):>7} {ms(p['p99_ms']):>8}"
        row += f" {ms(p['max_ms']):>8} {ms(p['p99_corrected_ms']):>9} {p['errors']:>6}"
        kinds = ", ".join(f"{k} {v}" for k, v in p["error_kinds"].items())
        row += f" {harness.fmt_ratio(p['p99_over_baseline']):>8} {pct(p['server_cpu_pct']):>7}"
        print(row + f" {pct(p['other_cpu_pct']):>6}" + (f"  ({kinds})" if kinds else ""))
    print(
        f"  {'attack':<9} {'opened':>8} {'cut':>6} {'answered':>8} {'lived median s':>14} {'open at end':>11}"
    )
    for name, a in fig["attacks"].items():
        row = f"  {name:<9} {a['opened']:>8} {a['cut']:>6} {a['answered_then_cut']:>8}"
        row += f" {seconds(a['lived_median_s']):>14} {a['open_at_end']:>11}"
        print(row + (f"  (connect errors {a['connect_errors']})" if a["connect_errors"] else ""))
    rec = fig["recovery_s"]
    shown = f"{rec:.2f} s" if rec is not None else f"not within {fig['recovery_limit_s']:g} s"
    print(
        f"  recovery after the trickle attack: {shown} (to the first of {WINDOW} requests in a row "
        f"within {TARGET:g}x the baseline p99, {ms(fig['recovery_threshold_ms'])} ms)"
    )


def p99_target(figs: dict[str, harness.Figures], cls: str, phase: str) -> dict[str, Any]:
    """``cls``'s p99 in ``phase`` at most TARGET x its baseline p99, with no error."""
    target = f"{cls}: {phase}-attack p99 <= {TARGET:g}x the unattacked p99, no error"
    fig = figs.get(cls)
    if fig is None:
        return {"target": target, "ratio": None, "errors": None, "corrected_ratio": None, "ok": False}
    p = fig["phases"][phase]
    value = p["p99_over_baseline"]
    ok = value is not None and value <= TARGET and p["errors"] == 0
    corrected = harness.ratio(p["p99_corrected_ms"], fig["phases"]["baseline"]["p99_corrected_ms"])
    return {"target": target, "ratio": value, "errors": p["errors"], "corrected_ratio": corrected, "ok": ok}


def main() -> int:
    ap = harness.bench_parser(__doc__)
    ap.add_argument("--duration", type=float, help="seconds of the unattacked baseline (20; --quick: 8)")
    ap.add_argument("--attack", type=float, help="seconds of each attack (60; --quick: 15)")
    ap.add_argument(
        "--classes", default=",".join(CLASSES), help="worker classes, comma-separated (sync,thread)"
    )
    ap.add_argument("--quick", action="store_true", help="a smoke run: --duration 8 --attack 15")
    harness.add_report_options(ap, check="a target is missed")
    args = ap.parse_args()
    duration = args.duration or (8.0 if args.quick else 20.0)
    attack_s = args.attack or (15.0 if args.quick else 60.0)
    classes = [c for c in args.classes.split(",") if c]
    if not classes or any(c not in CLASSES for c in classes):
        ap.error(f"--classes: a comma-separated list of {', '.join(CLASSES)}")
    raise_fd_limit(2 * ATTACKERS + LOAD_THREADS + 64)

    m = harness.machine()
    print(harness.machine_line(m))
    print(
        f"servers: python -m prefork benchmarks/slow_clients.py:Handler -w {WORKERS} -k sync | "
        f"-k thread --threads {THREADS}, defaults otherwise; classes: {', '.join(classes)}"
    )
    print(
        f"normal load: {LOAD_THREADS} threads, GET / with Connection: close, {LOAD_RATE:g} req/s in all, "
        f"timeout {CLIENT_TIMEOUT:g} s"
    )
    print(
        f"phases: baseline {duration:g} s; {ATTACKERS} idle connections {attack_s:g} s; "
        f"{ATTACKERS} tricklers (a byte every {TRICKLE_EVERY:g} s) {attack_s:g} s; "
        f"recovery (at most {min(RECOVERY_LIMIT, attack_s):g} s)",
        flush=True,
    )

    tally = harness.Tally()
    figs: dict[str, harness.Figures] = {}
    for cls in classes:
        print(f"\nmeasuring {cls} ...", flush=True)
        fig = tally.measure(cls, cls, functools.partial(measure_class, cls, duration, attack_s))
        if fig is not None:
            figs[cls] = fig
            print_class(fig)

    verdicts = [p99_target(figs, cls, "idle") for cls in classes]
    if "thread" in classes:
        verdicts.append(p99_target(figs, "thread", "trickle"))
    print()
    for v in verdicts:
        shown = f"{harness.fmt_ratio(v['ratio'])}, errors {v['errors']}"
        shown += f"; corrected p99 {harness.fmt_ratio(v['corrected_ratio'])}, for information"
        print(f"{'PASS' if v['ok'] else 'FAIL'} {v['target']} ({shown})")
    if "sync" in figs:
        rec = figs["sync"]["recovery_s"]
        print(f"sync recovery time after the trickle attack: {'n/a' if rec is None else f'{rec:.2f} s'}")
    harness.print_skipped(tally.skipped)

    report = {
        "machine": m,
        "settings": {
            **vars(args),
            "duration_s": duration,
            "attack_s": attack_s,
            "workers": WORKERS,
            "threads": THREADS,
            "attackers": ATTACKERS,
            "load_threads": LOAD_THREADS,
            "load_rate": LOAD_RATE,
            "client_timeout_s": CLIENT_TIMEOUT,
            "recovery_window": WINDOW,
            "target_ratio": TARGET,
        },
        "classes": figs,
        "targets": verdicts,
        "skipped": tally.skipped,
    }
    harness.write_json(args.json, report)
    return harness.exit_status(tally.failed or bool(tally.skipped), args.check, verdicts)


if __name__ == "__main__":
    sys.exit(main())
