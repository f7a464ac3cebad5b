"""Running one pool size: the server under test, the client processes, and what they measured.

Everything here runs in the bench's parent process. :class:`ServerUnderTest` starts
``python -m prefork TARGET --workers N`` in its own process group and stops it (SIGTERM to
the master, SIGKILL to the group if it does not exit in time); :func:`measure` drives the
load from client processes (:class:`~prefork.bench.client_process.ClientProcess`), and samples the
workers' CPU and memory (psutil) and request counts (the scoreboard) around the measured
window. Nothing is killed by name: only the processes started here, by pid or process group.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from prefork.bench.client_process import ClientProcess
from prefork.bench.load import LoadResult, LoadSpec
from prefork.sockets import Address, parse_address

#: The master's "Listening at ADDR, ADDR with N ..." log line.
LISTENING = re.compile(r"Listening at (\S+?(?: \((?:http|datagram)\))?)(?:,| with)")
#: Seconds to wait for the server to listen and its workers to be ready.
START_TIMEOUT = 30.0
#: Seconds the server has to stop after SIGTERM before its process group is SIGKILLed.
STOP_TIMEOUT = 10.0
#: Seconds client processes get, beyond warmup + duration + request timeout, to report.
CLIENT_GRACE = 15.0


class BenchError(Exception):
    """The bench cannot go on (the server did not start, a client failed); one line saying why.

    ``usage`` is true when the cause is in what the user gave (the server exited with status 2).
    """

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class WorkerSample:
    """One worker process at one moment: CPU seconds (user + system), RSS bytes, and the
    requests it served (from the scoreboard; None without one)."""

    pid: int
    cpu: float
    rss: int
    requests: int | None


@dataclass
class WorkerLoad:
    """One worker's load over the measured window: ``requests`` served (None without a
    scoreboard), ``cpu`` seconds used (user + system), ``rss`` bytes at the end."""

    pid: int
    requests: int | None
    cpu: float
    rss: int


@dataclass
class PoolRun:
    """What was measured for one pool size: the merged client result, ``window`` (seconds over
    which worker CPU was sampled), ``duration`` (seconds asked for), ``count_limited`` (a
    ``--requests`` limit was given), each worker's figures, the client processes, how busy
    the machine's CPUs were (percent of all of them), and the load's concurrency and
    keepalive. ``workers`` is None for a server at ``--address`` of unknown pool size."""

    workers: int | None
    protocol: str
    address: str
    load: LoadResult
    window: float
    duration: float
    count_limited: bool
    per_worker: list[WorkerLoad] = field(default_factory=list)
    clients: int = 0
    machine_cpu: float = 0.0
    concurrency: int = 0
    keepalive: bool = False


def scoreboard_requests(path: str | None) -> dict[int, int] | None:
    """Requests served so far by each worker pid, from the scoreboard file at ``path`` (None
    if there is none, or it cannot be read). Raises nothing."""
    if path is None or not os.path.exists(path):
        return None
    try:
        from prefork.scoreboard import Scoreboard

        board = Scoreboard.open(path)
    except (OSError, ValueError, ImportError):
        return None
    try:
        return {s.pid: s.requests for s in board.slots() if s.pid > 0}
    finally:
        board.close()


def sample_workers(pids: list[int], scoreboard: str | None) -> dict[int, WorkerSample]:
    """CPU, RSS and requests of each live worker in ``pids``, now, by pid; a worker gone
    is left out. ``scoreboard``: the server's scoreboard file, or None. Raises nothing."""
    counts = scoreboard_requests(scoreboard)
    found: dict[int, WorkerSample] = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                times = proc.cpu_times()
                rss = proc.memory_info().rss
        except psutil.Error:
            continue
        requests = None if counts is None else counts.get(pid)
        found[pid] = WorkerSample(pid, times.user + times.system, rss, requests)
    return found


def window_loads(before: dict[int, WorkerSample], after: dict[int, WorkerSample]) -> list[WorkerLoad]:
    """Each worker's load between the samples ``before`` and ``after`` (by pid, ascending);
    a worker born within the window counts from zero. Raises nothing."""
    loads = []
    for pid, end in sorted(after.items()):
        start = before.get(pid)
        requests = end.requests
        if requests is not None and start is not None and start.requests is not None:
            requests -= start.requests
        cpu = end.cpu - (start.cpu if start is not None else 0.0)
        loads.append(WorkerLoad(pid, requests, cpu, end.rss))
    return loads


class ServerUnderTest:
    """``python -m prefork TARGET --workers N`` on loopback (or a Unix socket), in its own
    process group, with its stderr in a temporary file. Started by the bench's parent process.

    :meth:`start` waits until the master logs where it listens and ``workers`` workers run;
    :meth:`stop` sends SIGTERM to the master and waits ``STOP_TIMEOUT`` seconds, then SIGKILLs
    the process group. Raises BenchError when it does not start.
    """

    def __init__(self, target: str, workers: int, *, unix: bool, udp: bool, extra: list[str]) -> None:
        self.target = target
        self.workers = workers
        self.tmp = tempfile.TemporaryDirectory(prefix="prefork-bench-")
        self.scoreboard = os.path.join(self.tmp.name, "scoreboard")
        bind = f"unix:{self.tmp.name}/bench.sock" if unix else "127.0.0.1:0"
        if udp and not unix:
            bind = "udp://" + bind
        command = [sys.executable, "-m", "prefork", target, "--bind", bind, "--workers", str(workers)]
        command += ["--scoreboard-file", self.scoreboard, "--graceful-timeout", "5", "--log-level", "info"]
        if udp:
            command.append("--udp")
        command += extra
        self.log_path = Path(self.tmp.name) / "server.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.pid = self.proc.pid
        self.listening = ""

    def log_tail(self, lines: int = 5) -> str:
        """The last ``lines`` lines the server wrote ("" if its log cannot be read). Raises nothing."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def start(self) -> None:
        """Wait until the server listens and its workers run (``START_TIMEOUT`` seconds).

        Raises BenchError when the server exits (``usage`` when with status 2) or is not
        ready in time.
        """
        deadline = time.monotonic() + START_TIMEOUT
        while not self.listening:
            match = LISTENING.search(self.log_path.read_text(errors="replace"))
            if match:
                self.listening = match.group(1)
                break
            self._check_alive(deadline)
        while len(self.worker_pids()) < self.workers:
            self._check_alive(deadline)
        time.sleep(0.05)  # let the last worker reach its accept loop

    def _check_alive(self, deadline: float) -> None:
        if self.proc.poll() is not None:
            tail = self.log_tail(1) or "no output"
            status = self.proc.returncode
            raise BenchError(f"the server exited with status {status}: {tail}", usage=status == 2)
        if time.monotonic() > deadline:
            raise BenchError(f"the server was not ready after {START_TIMEOUT:.0f} s: {self.log_tail(1)}")
        time.sleep(0.02)

    def worker_pids(self) -> list[int]:
        """Pids of the master's live, ready children (titled ``prefork: worker``). Raises nothing."""
        try:
            kids = psutil.Process(self.pid).children()
        except psutil.Error:
            return []
        pids = []
        for kid in kids:
            try:
                if kid.status() != psutil.STATUS_ZOMBIE and "prefork: worker" in " ".join(kid.cmdline()):
                    pids.append(kid.pid)
            except psutil.Error:
                pass
        return pids

    def stop(self) -> None:
        """SIGTERM the master, wait; SIGKILL the process group after ``STOP_TIMEOUT`` s; remove
        the temporary directory. Raises nothing."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # workers left behind by a killed master, too
        self.proc.wait()
        self.tmp.cleanup()


@contextlib.contextmanager
def serving(
    target: str, workers: int, *, unix: bool, udp: bool, extra: list[str]
) -> Iterator[ServerUnderTest]:
    """Start the server under test for one pool size (``workers`` workers; ``extra``: more
    ``prefork`` flags), yield it, and always stop it. Raises BenchError when it does not
    start, OSError when it cannot be run."""
    server = ServerUnderTest(target, workers, unix=unix, udp=udp, extra=extra)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def parse_listening(text: str) -> tuple[Address, str]:
    """The address the master logged (``tcp://H:P``, ``http://H:P``, ``udp://H:P``,
    ``unix:PATH``, ``unix:PATH (http)``, ``unix:PATH (datagram)``) and the protocol it
    suggests. Raises ValueError for text that is not an address."""
    datagram = text.startswith("udp://") or text.endswith("(datagram)")
    scheme, sep, rest = text.partition("://")
    if sep and scheme == "http":
        return parse_address(rest), "http"
    if text.endswith(" (http)"):  # an HTTP server on a Unix socket
        return parse_address(text.removesuffix(" (http)")), "http"
    return parse_address(text.removesuffix(" (datagram)"), datagram), "udp" if datagram else "line"


#: Called with (elapsed seconds, measured requests finished so far) while a run goes on.
Progress = Callable[[float, int], None]


@dataclass
class Measured:
    """One pool size's measurement: the merged client ``load``, ``window`` (seconds between the
    two samples of the workers), each worker's figures, and ``machine_cpu``: how busy all the
    machine's CPUs were over the window, in percent (server, clients and anything else)."""

    load: LoadResult
    window: float
    per_worker: list[WorkerLoad]
    machine_cpu: float


@dataclass(frozen=True)
class _Snapshot:
    at: float
    workers: dict[int, WorkerSample]
    busy: float  # machine-wide CPU seconds not idle, summed over CPUs
    total: float


def _snapshot(worker_pids: Callable[[], list[int]], scoreboard: str | None) -> _Snapshot:
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    total = sum(times)
    return _Snapshot(time.monotonic(), sample_workers(worker_pids(), scoreboard), total - idle, total)


def measure(
    spec: LoadSpec,
    clients: int,
    worker_pids: Callable[[], list[int]],
    scoreboard: str | None,
    progress: Progress | None = None,
) -> Measured:
    """Drive ``spec`` from ``clients`` client processes, each with its share of the
    concurrency, rate and request count; sample the workers (and the machine's CPU) at the
    start and the end of the measured window.

    Bounded: client processes that have not reported ``CLIENT_GRACE`` seconds after the run
    should have ended are killed, and BenchError is raised; so it is when a client process
    exits without a result. ``worker_pids``: called for the pids to sample; ``scoreboard``:
    the server's scoreboard file, or None; ``progress(elapsed s, completed)``: called while
    measuring. Raises OSError when a client process cannot be started.
    """
    shares = [_share(spec, i, clients) for i in range(clients)]
    procs = [ClientProcess(s) for s in shares if s.concurrency > 0]
    selector = selectors.DefaultSelector()
    try:
        for proc in procs:
            selector.register(proc.stdout, selectors.EVENT_READ, proc)
        deadline = time.monotonic() + START_TIMEOUT
        while not all(p.ready for p in procs):
            _pump(selector, deadline, "the client processes did not start")
        for proc in procs:
            proc.go()
        measure_start = time.monotonic() + spec.warmup
        measure_end = measure_start + spec.duration
        deadline = measure_end + spec.timeout + CLIENT_GRACE
        before: _Snapshot | None = None
        after: _Snapshot | None = None
        while selector.get_map():
            now = time.monotonic()
            if before is None and now >= measure_start:
                before = _snapshot(worker_pids, scoreboard)
            if before is not None and after is None and (now >= measure_end or all(p.result for p in procs)):
                after = _snapshot(worker_pids, scoreboard)
            wake = measure_start if before is None else measure_end if after is None else deadline
            _pump(selector, deadline, "the client processes did not finish", max(0.0, min(wake - now, 0.25)))
            if progress is not None and before is not None:
                progress(time.monotonic() - before.at, sum(p.completed for p in procs))
        before = before or _snapshot(worker_pids, scoreboard)  # all clients ended at once
        after = after or _snapshot(worker_pids, scoreboard)
        merged = LoadResult()
        for proc in procs:
            if proc.result is None:
                raise BenchError(f"a client process exited with status {proc.proc.wait()} without a result")
            merged.merge(proc.result)
        total = after.total - before.total
        machine = 100 * (after.busy - before.busy) / total if total > 0 else 0.0
        window = max(1e-9, after.at - before.at)
        return Measured(merged, window, window_loads(before.workers, after.workers), machine)
    finally:
        selector.close()
        for proc in procs:
            proc.kill()


def _pump(selector: selectors.BaseSelector, deadline: float, what: str, timeout: float = 0.25) -> None:
    """Read the client lines ready within ``timeout`` s; unregister clients at EOF."""
    if time.monotonic() > deadline:
        raise BenchError(f"{what} in time")
    for key, _ in selector.select(timeout):
        proc: ClientProcess = key.data
        if not proc.read_available():
            selector.unregister(key.fileobj)


def _share(spec: LoadSpec, index: int, clients: int) -> LoadSpec:
    """Client ``index``'s part of ``spec`` (of ``clients``): concurrency, rate, requests."""

    def part(total: int) -> int:
        return total // clients + (1 if index < total % clients else 0)

    rate = None if spec.rate is None else spec.rate / clients
    requests = None if spec.requests is None else part(spec.requests)
    return dataclasses.replace(spec, concurrency=part(spec.concurrency), rate=rate, requests=requests)
