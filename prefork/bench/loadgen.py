"""The load generator of ``prefork bench``: client processes driving requests at a server.

One :class:`LoadSpec` describes the load of one client process. :func:`run_load` runs it in
the calling process: a single-threaded ``selectors`` loop keeping up to ``concurrency``
requests in flight, each a small state machine (connect, send, read the reply) on a
non-blocking socket. The bench's parent process starts several of these as
``python -m prefork.bench.client`` child processes (:class:`ClientProcess`), so the client is
not the bottleneck it measures, and merges their results (:class:`LoadResult`).

- **Closed loop** (``rate`` None): a new request starts as soon as one finishes, so exactly
  ``concurrency`` are in flight; latency is measured from the start of the connect.
- **Open loop** (``rate`` R requests per second): request *i* is due at ``start + i / R``
  whether or not earlier ones finished; when ``concurrency`` are already in flight it waits,
  and its latency is measured from when it was *due*, not when it could be sent, so the
  queueing a slow server causes is not hidden (no "coordinated omission").

Latency goes into an HDR histogram (``hdrhistogram``, microseconds, 3 significant digits),
never a list of samples. Every run is bounded: by ``duration`` seconds, and by ``requests``
when given; each request by ``timeout`` seconds.

Protocols: ``line`` (send PAYLOAD and a newline, half-close unless ``keepalive``, read one
line), ``http`` (HTTP/1.1 GET of the
path PAYLOAD), ``raw`` (send PAYLOAD, half-close, read until EOF), ``udp`` (one datagram, one
datagram back; also Unix datagram sockets). Stream protocols open a connection per request
unless ``keepalive`` (not for ``raw``).

Errors are counted by kind: ``refused``, ``reset``, ``timeout``, ``bad reply`` (EOF before a
whole reply, an HTTP status >= 400, a reply without the ``expect`` bytes), and ``other: ERRNO``.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import resource
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

PROTOCOLS = ("line", "http", "raw", "udp")
#: Error kinds, in the order reports list them.
ERROR_KINDS = ("refused", "reset", "timeout", "bad reply")
#: Latencies are recorded in microseconds, from 1 us to 1 hour, to 3 significant digits.
HIST_LOWEST_US = 1
HIST_HIGHEST_US = 3_600_000_000
HIST_DIGITS = 3
#: Seconds between two progress reports of a client process.
PROGRESS_INTERVAL = 0.25
_RECV_SIZE = 65536


def new_histogram() -> Any:
    """An empty latency histogram (microseconds)."""
    return HdrHistogram(HIST_LOWEST_US, HIST_HIGHEST_US, HIST_DIGITS)


@dataclass(frozen=True)
class LoadSpec:
    """The load one client process drives (all times in seconds).

    ``address`` is ``(host, port)`` for ``family`` AF_INET/AF_INET6, a path for AF_UNIX.
    ``concurrency``: requests in flight at most. ``rate``: requests per second to start (open
    loop), or None (closed loop). ``warmup``: seconds of load before measuring, not counted.
    ``duration``: seconds measured. ``requests``: stop after starting this many measured
    requests (None: no count limit). ``timeout``: per request, from when it was due.
    ``expect``: bytes a good reply contains (None: any whole reply). ``host``: HTTP Host header.
    """

    family: int
    address: tuple[str, int] | str
    protocol: str
    payload: bytes
    concurrency: int
    duration: float
    rate: float | None = None
    warmup: float = 0.0
    requests: int | None = None
    keepalive: bool = False
    timeout: float = 5.0
    expect: bytes | None = None
    host: str = "localhost"

    def to_json(self) -> str:
        """One line of JSON (bytes as latin-1 text), read back by :meth:`from_json`."""
        data = dataclasses.asdict(self)
        data["payload"] = self.payload.decode("latin-1")
        data["expect"] = None if self.expect is None else self.expect.decode("latin-1")
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> LoadSpec:
        """The spec :meth:`to_json` wrote."""
        data = json.loads(text)
        data["payload"] = data["payload"].encode("latin-1")
        if data["expect"] is not None:
            data["expect"] = data["expect"].encode("latin-1")
        if isinstance(data["address"], list):
            data["address"] = tuple(data["address"])
        return cls(**data)


@dataclass
class LoadResult:
    """What one client process measured (or several, merged with :meth:`merge`).

    ``ok``: good replies to measured requests (started after the warmup); ``ok_in_window``:
    good replies that arrived within the ``duration`` measured (to any request); ``elapsed``:
    seconds from the start of measuring to the last measured reply; ``errors``: counts by
    kind; ``unsent``: open-loop requests that came due but could not start before the end;
    ``cpu``: CPU seconds (user + system) each client process used while measuring; ``wall``:
    seconds each measured; ``histogram``: latencies of good replies (microseconds).
    """

    ok: int = 0
    ok_in_window: int = 0
    elapsed: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    unsent: int = 0
    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    histogram: Any = field(default_factory=new_histogram)

    def count_error(self, kind: str) -> None:
        """Count one error of ``kind``."""
        self.errors[kind] = self.errors.get(kind, 0) + 1

    @property
    def error_total(self) -> int:
        """All errors, of every kind."""
        return sum(self.errors.values())

    def merge(self, other: LoadResult) -> None:
        """Add ``other`` (another client process's result, over the same window) to this one."""
        self.ok += other.ok
        self.ok_in_window += other.ok_in_window
        self.elapsed = max(self.elapsed, other.elapsed)
        for kind, count in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + count
        self.unsent += other.unsent
        self.cpu += other.cpu
        self.wall += other.wall
        self.histogram.add(other.histogram)

    def to_json(self) -> str:
        """One line of JSON, the histogram HdrHistogram-encoded, read back by :meth:`from_json`."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "histogram"}
        data["histogram"] = self.histogram.encode().decode("ascii")
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> LoadResult:
        """The result :meth:`to_json` wrote."""
        data = json.loads(text)
        encoded = data.pop("histogram")
        result = cls(**data)
        result.histogram.decode_and_add(encoded.encode("ascii"))
        return result


# -- one request -----------------------------------------------------------------------------

_CONNECTING, _SENDING, _READING = 1, 2, 3


class _Request:
    """One request in flight on ``sock``: its state, due time and deadline (monotonic seconds)."""

    __slots__ = ("deadline", "due", "inbox", "measured", "outbox", "sock", "state")

    def __init__(self, sock: socket.socket, due: float, deadline: float, measured: bool) -> None:
        self.sock = sock
        self.due = due
        self.deadline = deadline
        self.measured = measured
        self.state = _CONNECTING
        self.outbox = b""
        self.inbox = bytearray()


def _error_kind(err: int) -> str:
    if err in (errno.ECONNREFUSED, errno.ENOENT, errno.EAGAIN):  # EAGAIN: a full Unix backlog
        return "refused"
    if err in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ENOTCONN):  # ENOTCONN: reset already
        return "reset"
    if err == errno.ETIMEDOUT:
        return "timeout"
    return "other: " + errno.errorcode.get(err, str(err))


def _http_reply(data: bytearray, eof: bool) -> tuple[bool, bool, bool]:
    """(complete, good, reusable) for the HTTP response read so far."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return eof, False, False
    head = bytes(data[:end]).decode("latin-1").split("\r\n")
    parts = head[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return True, False, False
    status = int(parts[1])
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    body = len(data) - end - 4
    if "content-length" in headers:
        complete = body >= int(headers["content-length"] or 0)
    elif "chunked" in headers.get("transfer-encoding", ""):
        complete = data.endswith(b"0\r\n\r\n")
    else:
        complete = eof  # the body runs until the server closes
    connection = headers.get("connection", "")
    reusable = ("close" not in connection and (parts[0] != "HTTP/1.0" or "keep-alive" in connection)) and (
        "content-length" in headers or "chunked" in headers.get("transfer-encoding", "")
    )
    return complete or eof, complete and status < 400, reusable


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
        self.next_due = 0.0  # open loop: when the next request is due
        self.datagram = spec.protocol == "udp"
        # A request per connection: say so with a half-close once it is sent, as `nc -N` does,
        # so a server reading until EOF (socketserver's line handlers) ends at once.
        self.half_close = spec.protocol == "raw" or (spec.protocol == "line" and not spec.keepalive)
        if spec.protocol == "http":
            host = spec.host
            path = spec.payload.decode("latin-1") or "/"
            close = "" if spec.keepalive else "Connection: close\r\n"
            self.message = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: prefork-bench\r\n{close}\r\n"
            self.request_bytes = self.message.encode("latin-1")
        elif spec.protocol == "line":
            self.request_bytes = spec.payload.rstrip(b"\n") + b"\n"
        else:
            self.request_bytes = spec.payload

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> LoadResult:
        spec = self.spec
        begin = time.monotonic()
        warm_end = begin + spec.warmup
        cpu_start = 0.0
        last_progress = begin
        if spec.warmup <= 0:
            self._start_measuring(begin)
            cpu_start = _cpu_seconds()
        self.next_due = begin
        while True:
            now = time.monotonic()
            if not self.measuring and now >= warm_end:
                self._start_measuring(now)
                cpu_start = _cpu_seconds()
                self.next_due = now
            issuing = self._may_issue(now)
            if issuing:
                self._issue(now)
            elif not self.inflight:
                break
            wake = min((r.deadline for r in self.inflight.values()), default=now + 1.0)
            if issuing:
                wake = min(wake, self.measure_end if self.measuring else warm_end)
                if spec.rate is not None and len(self.inflight) < spec.concurrency:
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
        if spec.rate is not None and self.measuring:
            due_total = int(spec.duration * spec.rate)
            if spec.requests is not None:
                due_total = min(due_total, spec.requests)
            self.result.unsent = max(0, due_total - self.started)
        for sock in self.idle:
            sock.close()
        self.idle.clear()
        self.selector.close()
        if self.progress is not None:
            self.progress(self.completed)
        return self.result

    def _start_measuring(self, now: float) -> None:
        self.measuring = True
        self.measure_start = now
        self.measure_end = now + self.spec.duration

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
            if spec.rate is None:
                due = now
            elif self.next_due <= now:
                due = self.next_due
                self.next_due += 1.0 / spec.rate
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
            self._fail(request, _error_kind(err), registered=False)

    def _send(self, request: _Request) -> None:
        request.state = _SENDING
        request.outbox = self.request_bytes
        request.inbox.clear()
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
            self._fail(request, _error_kind(exc.errno or 0), registered)
            return
        if self.half_close:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                self._fail(request, _error_kind(exc.errno or 0), registered)
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
                self._fail(request, _error_kind(err))
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
            self._fail(request, _error_kind(exc.errno or 0))
            return
        eof = not data and not self.datagram
        request.inbox += data
        complete, good, reusable = self._judge(request.inbox, eof)
        if not complete:
            return
        if not good:
            self._fail(request, "bad reply")
            return
        self._finish(request, reusable and not eof)

    def _judge(self, inbox: bytearray, eof: bool) -> tuple[bool, bool, bool]:
        """(complete, good, reusable) for the reply read so far."""
        protocol = self.spec.protocol
        expect = self.spec.expect
        if protocol == "http":
            complete, good, reusable = _http_reply(inbox, eof)
            reusable = reusable and self.spec.keepalive
        elif protocol == "line":
            complete = b"\n" in inbox or eof
            good = inbox.endswith(b"\n") and inbox.count(b"\n") == 1
            reusable = self.spec.keepalive
        elif protocol == "udp":
            complete, good, reusable = True, True, True
        else:  # raw: the reply runs until EOF
            complete = eof
            good = bool(inbox)
            reusable = False
        if complete and good and expect is not None:
            good = expect in inbox
        return complete, good, reusable

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
        self._close(request.sock, registered)

    def _close(self, sock: socket.socket, registered: bool) -> None:
        if registered and sock.fileno() in self.selector.get_map():
            self.selector.unregister(sock)
        sock.close()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_load(spec: LoadSpec, progress: Callable[[int], None] | None = None) -> LoadResult:
    """Drive ``spec``'s load from this process, single-threaded; return what it measured.

    Takes ``spec.warmup + spec.duration`` seconds, plus at most ``spec.timeout`` for the
    requests still in flight at the end. ``progress(completed)`` is called about every
    :data:`PROGRESS_INTERVAL` seconds with the number of measured requests finished so far.
    Connection errors are counted, never raised.
    """
    return _Generator(spec, progress).run()


# -- client processes ------------------------------------------------------------------------

#: Lines a client process writes on its stdout (its protocol with the parent).
READY, PROGRESS, RESULT = "ready", "progress", "result"


class ClientProcess:
    """A ``python -m prefork.bench.client`` child running one :class:`LoadSpec`.

    Created by the bench's parent process. It writes ``ready``, waits for a line on its
    stdin (:meth:`go`), runs the load, writes ``progress N`` lines and a final ``result
    JSON`` line, and exits. :meth:`kill` ends it (by its pid) if it is still running.
    """

    def __init__(self, spec: LoadSpec) -> None:
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prefork.bench.client"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            bufsize=0,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin: IO[bytes] = self.proc.stdin
        self.stdout: IO[bytes] = self.proc.stdout
        self._buffer = bytearray()
        self.stdin.write(spec.to_json().encode() + b"\n")
        self.completed = 0
        self.result: LoadResult | None = None
        self.ready = False

    def go(self) -> None:
        """Tell the (ready) client to start."""
        self.stdin.write(b"go\n")

    def read_available(self) -> bool:
        """Read what the client wrote (call when its stdout is readable) and apply each
        whole line; False at EOF."""
        data = os.read(self.stdout.fileno(), _RECV_SIZE)
        self._buffer += data
        *lines, rest = self._buffer.split(b"\n")
        self._buffer = bytearray(rest)
        for line in lines:
            kind, _, text = line.decode().partition(" ")
            if kind == READY:
                self.ready = True
            elif kind == PROGRESS:
                self.completed = int(text)
            elif kind == RESULT:
                self.result = LoadResult.from_json(text)
        return bool(data)

    def kill(self) -> None:
        """SIGKILL the client if it still runs, and reap it. Safe to call twice."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.stdin, self.stdout):
            try:
                stream.close()
            except OSError:  # a broken pipe
                pass
