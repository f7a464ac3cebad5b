"""A small bounded load generator: a connection per request, fixed concurrency, a deadline.

Each of ``concurrency`` threads loops: connect, send ``payload`` (one line), read one line of
answer, close. An answer is good when it is ``PID <payload>`` (as the echo handlers write);
anything else is a failure, counted by kind (``eof``: the connection closed without an answer,
``bad-answer``, or the exception's class name) with its time, so failures can be set against
faults injected at known times. Threads stop at :meth:`Load.stop` or at ``max_seconds`` at
the latest; nothing outlives the ``with`` block by more than one request's ``timeout``.

:class:`LoadProcess` runs the same load in a child process (``python -m tests.faults.load``),
so that the test's own measuring loop does not wait for the load threads' GIL.
"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

Address = tuple[str, int] | str


@dataclass
class LoadResult:
    """What a load run saw: good answers, failures by kind and time, worker pids, latencies."""

    ok: int = 0
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    failure_times: list[tuple[float, str]] = field(default_factory=list)  # (time.monotonic(), kind)
    pids: collections.Counter[int] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    started: float = 0.0
    stopped: float = 0.0

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def rate(self) -> float:
        """Good answers per second."""
        return self.ok / max(1e-9, self.stopped - self.started)


class Load:
    """``concurrency`` client threads sending requests to ``address`` until stopped.

    ``timeout`` bounds each connection's operations (seconds); ``max_seconds`` bounds the run.
    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        address: Address,
        *,
        concurrency: int = 8,
        payload: bytes = b"ping\n",
        timeout: float = 10.0,
        max_seconds: float = 60.0,
    ) -> None:
        self.address = address
        self.concurrency = concurrency
        self.payload = payload
        self.timeout = timeout
        self.max_seconds = max_seconds
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"load-{i}", daemon=True) for i in range(concurrency)
        ]

    def __enter__(self) -> Load:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        self.result.started = time.monotonic()
        self._deadline = self.result.started + self.max_seconds
        for thread in self._threads:
            thread.start()

    def stop(self) -> LoadResult:
        """Stop the threads (each finishes its request in progress) and return the result."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"load threads did not stop: {alive}"
        if not self.result.stopped:
            self.result.stopped = time.monotonic()
        return self.result

    def wait_ok(self, count: int, timeout: float = 10.0) -> None:
        """Wait until ``count`` good answers more than now have arrived."""
        target = self.result.ok + count
        deadline = time.monotonic() + timeout
        while self.result.ok < target:
            assert time.monotonic() < deadline, f"load made no progress: {self.result}"
            time.sleep(0.005)

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            start = time.monotonic()
            kind = self.request()
            with self._lock:
                if isinstance(kind, int):
                    self.result.ok += 1
                    self.result.pids[kind] += 1
                    self.result.latencies.append(time.monotonic() - start)
                else:
                    self.result.failures[kind] += 1
                    self.result.failure_times.append((time.monotonic(), kind))

    def request(self) -> int | str:
        """One request; return the answering worker's pid, or the kind of failure."""
        family = socket.AF_UNIX if isinstance(self.address, str) else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.address)
                sock.sendall(self.payload)
                answer = _read_line(sock)
        except OSError as exc:
            return type(exc).__name__
        if not answer:
            return "eof"
        pid, _, echoed = answer.partition(b" ")
        if echoed != self.payload or not pid.isdigit():
            return "bad-answer"
        return int(pid)


class LoadProcess:
    """A :class:`Load` run in a child process (same arguments); :meth:`stop` returns its result.

    The child stops on SIGTERM (after the requests in progress) or after ``max_seconds``, and
    writes its result as JSON on stdout. Monotonic times are system-wide on Linux, so its
    failure times compare with the parent's ``time.monotonic()``.
    """

    def __init__(
        self,
        address: Address,
        *,
        concurrency: int = 8,
        payload: bytes = b"ping\n",
        timeout: float = 10.0,
        max_seconds: float = 60.0,
    ) -> None:
        self.timeout = timeout
        self.max_seconds = max_seconds
        target = address if isinstance(address, str) else f"{address[0]}:{address[1]}"
        command = [sys.executable, "-m", "tests.faults.load", target, "--concurrency", str(concurrency)]
        command += ["--payload", payload.decode(), "--timeout", str(timeout)]
        command += ["--max-seconds", str(max_seconds)]
        self.proc = subprocess.Popen(
            command, cwd=_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.result: LoadResult | None = None

    def __enter__(self) -> LoadProcess:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.result is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)

    def wait_started(self, timeout: float = 10.0) -> None:
        """Wait until the child has sent its first good request (it writes a line then)."""
        stderr = self.proc.stderr
        assert stderr is not None
        ready: list[bytes] = []
        reader = threading.Thread(target=lambda: ready.append(stderr.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        assert ready and ready[0].startswith(b"started"), f"load process did not start: {ready}"

    def stop(self) -> LoadResult:
        """Stop the child (SIGTERM), wait for it and return its result."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=self.timeout + 10)
        assert self.proc.returncode == 0, f"load process failed ({self.proc.returncode}): {err.decode()}"
        data = json.loads(out)
        self.result = LoadResult(
            ok=data["ok"],
            failures=collections.Counter(data["failures"]),
            failure_times=[(t, k) for t, k in data["failure_times"]],
            pids=collections.Counter({int(p): n for p, n in data["pids"].items()}),
            latencies=data["latencies"],
            started=data["started"],
            stopped=data["stopped"],
        )
        return self.result


_ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    """``python -m tests.faults.load HOST:PORT|PATH [...]``: run a Load until SIGTERM or
    ``--max-seconds``; print ``started`` on stderr after the first good answer, and the
    result as JSON on stdout at the end."""
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--payload", default="ping\n")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    args = parser.parse_args()
    host, sep, port = args.address.rpartition(":")
    address: Address = (host, int(port)) if sep and port.isdigit() else args.address
    load = Load(
        address,
        concurrency=args.concurrency,
        payload=args.payload.encode(),
        timeout=args.timeout,
        max_seconds=args.max_seconds,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    load.start()
    deadline = time.monotonic() + args.max_seconds
    while load.result.ok == 0 and time.monotonic() < deadline and not stop.is_set():
        time.sleep(0.001)
    print("started", file=sys.stderr, flush=True)
    stop.wait(max(0.0, deadline - time.monotonic()))
    result = load.stop()
    json.dump(
        {
            "ok": result.ok,
            "failures": dict(result.failures),
            "failure_times": result.failure_times,
            "pids": {str(p): n for p, n in result.pids.items()},
            "latencies": result.latencies,
            "started": result.started,
            "stopped": result.stopped,
        },
        sys.stdout,
    )


def _read_line(sock: socket.socket, limit: int = 65536) -> bytes:
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


if __name__ == "__main__":
    main()
