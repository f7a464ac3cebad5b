"""The load generator of ``prefork bench``: one client process driving requests at a server.

:func:`run_load` runs one :class:`~prefork.bench.load.LoadSpec` in the calling process: a
single-threaded ``selectors`` loop keeping up to ``concurrency`` requests in flight, each a
small state machine (connect, send, read the reply) on a non-blocking socket, the request and
the reply as :mod:`prefork.bench.protocols` frames them. The bench's parent process runs
several of these as ``python -m prefork.bench.client`` child processes
(:class:`~prefork.bench.client_process.ClientProcess`), so the client is not the bottleneck it
measures, and merges their results (:class:`~prefork.bench.load.LoadResult`).

- **Closed loop** (``rate`` None): a new request starts as soon as one finishes, so exactly
  ``concurrency`` are in flight; latency is measured from the start of the connect.
- **Open loop** (``rate`` R requests per second): request *i* is due at ``start + i / R``
  whether or not earlier ones finished; when ``concurrency`` are already in flight it waits,
  and its latency is measured from when it was *due*, not when it could be sent, so the
  queueing a slow server causes is not hidden (no "coordinated omission"). Several client
  processes deal the requests of one schedule out in turn (``phase`` of ``stride``,
  :mod:`prefork.bench.schedule`), so together they send one every 1/R seconds.
- **Steps** (``steps``, the step-load mode): open loop at a rate that changes, step after
  step; within a step of R requests per second, request *i* is due at ``step start + i / R``.

Every run is bounded: by ``duration`` seconds, and by ``requests`` when given; each request
by ``timeout`` seconds, each reply by :data:`MAX_REPLY` bytes (a longer one is a bad reply).
Stream protocols open a connection per request unless ``keepalive`` (not for ``raw``).
Errors are counted by kind (:data:`~prefork.bench.protocols.ERROR_KINDS`).
"""

from __future__ import annotations

import errno
import math
import resource
import selectors
import socket
import time
from collections.abc import Callable

from prefork.bench.load import HIST_HIGHEST_US, HIST_LOWEST_US, LoadResult, LoadSpec
from prefork.bench.protocols import error_kind, half_closes, head_ends, judge_reply, request_bytes
from prefork.bench.schedule import Schedule

#: Seconds between two progress reports of a client process.
PROGRESS_INTERVAL = 0.25
#: Bytes of one reply at most: a longer one is counted as a bad reply and its connection
#: closed, so a server that streams without end cannot grow the client without bound.
MAX_REPLY = 1 << 20
_RECV_SIZE = 65536

# -- one request -----------------------------------------------------------------------------

_CONNECTING, _SENDING, _READING = 1, 2, 3


class _Request:
    """One request in flight on ``sock``: its state, due time and deadline (monotonic seconds)."""

    __slots__ = ("deadline", "due", "headless", "inbox", "measured", "outbox", "sock", "state")

    def __init__(self, sock: socket.socket, due: float, deadline: float, measured: bool) -> None:
        self.sock = sock
        self.due = due
        self.deadline = deadline
        self.measured = measured
        self.state = _CONNECTING
        self.outbox = b""
        self.inbox = bytearray()
        self.headless = True  # the end of the reply's head (protocols.head_ends) not yet read


class _Generator:
    """The client loop of :func:`run_load` (one per client process; one thread)."""

    def __init__(self, spec: LoadSpec, progress: Callable[[int], None] | None) -> None:
        self.spec = spec
        self.progress = progress
        self.selector = selectors.DefaultSelector()
        self.inflight: dict[socket.socket, _Request] = {}
        self.idle: list[socket.socket] = []  # keepalive connections, and UDP sockets
        self.result = LoadResult()
        self.completed = 0  # measured requests finished, good or not (for progress)
        self.measuring = False
        self.measure_start = 0.0
        self.measure_end = 0.0
        self.started = 0  # measured requests started
        self.schedule = Schedule(())  # open loop: this client's due times from self.base
        self.base = 0.0
        self.next_due = math.inf  # open loop: when the next request is due
        self.due_measured = 0  # open loop: this client's requests due while measuring
        self.highest_us = max(HIST_LOWEST_US, min(HIST_HIGHEST_US, round(spec.timeout * 1e6)))
        self.datagram = spec.protocol == "udp"
        self.open_loop = spec.rate is not None or bool(spec.steps)
        self.half_close = half_closes(spec.protocol, spec.keepalive)
        self.request_bytes = request_bytes(
            spec.protocol, spec.payload, keepalive=spec.keepalive, host=spec.host
        )

    # -- the loop ----------------------------------------------------------------------------

    def run(self, begin: float | None) -> LoadResult:
        spec = self.spec
        if begin is None:
            begin = time.monotonic()
        else:  # the time every client process was given: their schedules line up
            time.sleep(max(0.0, begin - time.monotonic()))
        warm_end = begin + (0.0 if spec.steps else spec.warmup)
        cpu_start = 0.0
        last_progress = begin
        if warm_end <= begin:
            self._start_measuring(begin)
            cpu_start = _cpu_seconds()
        else:
            self._plan(begin, spec.warmup)
        while True:
            now = time.monotonic()
            if not self.measuring and now >= warm_end:
                self._start_measuring(warm_end)
                cpu_start = _cpu_seconds()
            issuing = self._may_issue(now)
            if issuing:
                self._issue(now)
            elif not self.inflight:
                break
            wake = min((r.deadline for r in self.inflight.values()), default=now + 1.0)
            if issuing:
                wake = min(wake, self.measure_end if self.measuring else warm_end)
                if self.open_loop and len(self.inflight) < spec.concurrency:
                    wake = min(wake, self.next_due)
            if self.progress is not None:
                wake = min(wake, last_progress + PROGRESS_INTERVAL)
            for key, _ in self.selector.select(max(0.0, wake - time.monotonic())):
                self._on_ready(key.fileobj)  # type: ignore[arg-type]
            now = time.monotonic()
            for request in [r for r in self.inflight.values() if r.deadline <= now]:
                self._fail(request, "timeout")
            if self.progress is not None and now - last_progress >= PROGRESS_INTERVAL:
                self.progress(self.completed)
                last_progress = now
        end = time.monotonic()
        self.result.cpu.append(_cpu_seconds() - cpu_start)
        self.result.wall.append(end - self.measure_start)
        if self.open_loop and self.measuring:
            due = self.due_measured if spec.requests is None else min(self.due_measured, spec.requests)
            self.result.unsent = max(0, due - self.started)
        for sock in self.idle:
            sock.close()
        self.idle.clear()
        self.selector.close()
        if self.progress is not None:
            self.progress(self.completed)
        return self.result

    def _start_measuring(self, at: float) -> None:
        self.measuring = True
        self.measure_start = at
        self.measure_end = at + self.spec.duration
        self._plan(at, self.spec.duration)
        self.due_measured = self.schedule.count()

    def _plan(self, start: float, seconds: float) -> None:
        """Open loop: this client's schedule from ``start``: the steps, or ``seconds`` of the
        rate (the warmup's, then the measured run's afresh)."""
        spec = self.spec
        if not self.open_loop:
            return
        steps = spec.steps or ((spec.rate or 0.0, seconds),)
        self.schedule = Schedule(steps, spec.phase, spec.stride)
        self.base = start
        self.next_due = start + self.schedule.next()

    def _may_issue(self, now: float) -> bool:
        if not self.measuring:
            return True
        if now >= self.measure_end:
            return False
        return self.spec.requests is None or self.started < self.spec.requests

    def _issue(self, now: float) -> None:
        spec = self.spec
        # At most one round per call, so connections refused at once cannot spin here forever.
        for _ in range(spec.concurrency - len(self.inflight)):
            if spec.requests is not None and self.measuring and self.started >= spec.requests:
                return
            if not self.open_loop:
                due = now
            elif self.next_due <= now:
                due = self.next_due
                self.next_due = self.base + self.schedule.next()
            else:
                return
            if self.measuring:
                self.started += 1
            self._start(due, now)

    # -- requests ----------------------------------------------------------------------------

    def _start(self, due: float, now: float) -> None:
        spec = self.spec
        deadline = due + spec.timeout
        if self.idle:
            sock = self.idle.pop()
            request = _Request(sock, due, deadline, self.measuring)
            self.inflight[sock] = request
            self._send(request)
            return
        sock = socket.socket(spec.family, socket.SOCK_DGRAM if self.datagram else socket.SOCK_STREAM)
        sock.setblocking(False)
        request = _Request(sock, due, deadline, self.measuring)
        self.inflight[sock] = request
        if self.datagram and spec.family == socket.AF_UNIX:
            sock.bind("")  # Linux autobind: an abstract address the server can answer to
        if spec.family != socket.AF_UNIX and not self.datagram:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(spec.address)
        if err in (0, errno.EINPROGRESS):
            if err == 0:
                self._send(request)
            else:
                self.selector.register(sock, selectors.EVENT_WRITE)
        else:
            self._fail(request, error_kind(err), registered=False)

    def _send(self, request: _Request) -> None:
        request.state = _SENDING
        request.outbox = self.request_bytes
        request.inbox.clear()
        request.headless = True
        self._write(request, registered=request.sock.fileno() in self.selector.get_map())

    def _write(self, request: _Request, registered: bool) -> None:
        sock = request.sock
        try:
            while request.outbox:
                sent = sock.send(request.outbox)
                request.outbox = request.outbox[sent:]
        except BlockingIOError:
            self._watch(sock, selectors.EVENT_WRITE, registered)
            return
        except OSError as exc:
            self._fail(request, error_kind(exc.errno or 0), registered)
            return
        if self.half_close:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                self._fail(request, error_kind(exc.errno or 0), registered)
                return
        request.state = _READING
        self._watch(sock, selectors.EVENT_READ, registered)

    def _watch(self, sock: socket.socket, events: int, registered: bool) -> None:
        if registered:
            self.selector.modify(sock, events)
        else:
            self.selector.register(sock, events)

    def _on_ready(self, sock: socket.socket) -> None:
        request = self.inflight.get(sock)
        if request is None:
            return
        if request.state == _CONNECTING:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._fail(request, error_kind(err))
            else:
                request.state = _SENDING
                request.outbox = self.request_bytes
                self._write(request, registered=True)
        elif request.state == _SENDING:
            self._write(request, registered=True)
        else:
            self._read(request)

    def _read(self, request: _Request) -> None:
        try:
            data = request.sock.recv(_RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(request, error_kind(exc.errno or 0))
            return
        eof = not data and not self.datagram
        inbox = request.inbox
        if len(inbox) + len(data) > MAX_REPLY:
            self._fail(request, "bad reply")
            return
        searched = len(inbox)
        inbox += data
        spec = self.spec
        if request.headless and not eof:
            # Judge the reply only once its head may be whole: until then, search the new
            # bytes alone, not the whole reply again on every read.
            if not head_ends(spec.protocol, inbox, searched):
                return
            request.headless = False
        complete, good, reusable = judge_reply(
            spec.protocol, inbox, eof, keepalive=spec.keepalive, expect=spec.expect
        )
        if not complete:
            return
        if not good:
            self._fail(request, "bad reply")
            return
        self._finish(request, reusable and not eof)

    def _finish(self, request: _Request, reusable: bool) -> None:
        now = time.monotonic()
        del self.inflight[request.sock]
        result = self.result
        if self.measuring and now <= self.measure_end:
            result.ok_in_window += 1  # throughput: every reply within the window, even to warmup
        if request.measured:
            result.ok += 1
            self.completed += 1
            result.elapsed = max(result.elapsed, now - self.measure_start)
            micros = max(HIST_LOWEST_US, min(HIST_HIGHEST_US, round((now - request.due) * 1e6)))
            result.histogram.record_value(micros)
            if self.spec.window:
                result.window(self._window_index(request.due)).record(micros, self.highest_us)
                result.window(self._window_index(now)).served += 1
        if reusable:
            self.selector.unregister(request.sock)
            self.idle.append(request.sock)
        else:
            self._close(request.sock, registered=True)

    def _fail(self, request: _Request, kind: str, registered: bool = True) -> None:
        del self.inflight[request.sock]
        if request.measured:
            self.result.count_error(kind)
            self.completed += 1
            if self.spec.window:
                self.result.window(self._window_index(request.due)).failed += 1
        self._close(request.sock, registered)

    def _window_index(self, when: float) -> int:
        # A due time on a window's edge belongs to the window it starts (the float error of
        # a monotonic time of a large value must not move it to the one before).
        return max(0, int((when - self.measure_start) / (self.spec.window or 1.0) + 1e-6))

    def _close(self, sock: socket.socket, registered: bool) -> None:
        if registered and sock.fileno() in self.selector.get_map():
            self.selector.unregister(sock)
        sock.close()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_load(
    spec: LoadSpec, progress: Callable[[int], None] | None = None, begin: float | None = None
) -> LoadResult:
    """Drive ``spec``'s load from this process, single-threaded; return what it measured.

    ``begin``: the ``time.monotonic()`` time to start at (the parent gives all its client
    processes the same; None: now); the run then takes ``spec.warmup + spec.duration``
    seconds, plus at most ``spec.timeout`` for the
    requests still in flight at the end. ``progress(completed)`` is called about every
    :data:`PROGRESS_INTERVAL` seconds with the number of measured requests finished so far.
    Connection errors are counted, never raised; OSError is raised only when a socket cannot
    be created (EMFILE, ENFILE: too many open files).
    """
    return _Generator(spec, progress).run(begin)
