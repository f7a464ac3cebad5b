"""Fixtures: real servers on loopback, each bounded in time and leaving no process behind.

- ``serve_cli(target, *flags)`` starts ``python -m prefork`` in its own process group on
  127.0.0.1 port 0 (unless a ``--bind`` is given), waits until it logs where it listens, and
  returns a :class:`CLIServer`; teardown SIGKILLs the group and checks it is gone.
- every test checks that it left no child process of the test process behind (psutil).
- the session's servers keep their default control sockets in a private ``XDG_RUNTIME_DIR``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"Listening at (\S+?(?: \((?:https?|tls|datagram)\))?)(?:,| with)")


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns a true value; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")
        time.sleep(interval)


def live_children(pid: int) -> list[psutil.Process]:
    """Children of ``pid`` that are not zombies."""
    try:
        kids = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    out = []
    for kid in kids:
        try:
            if kid.status() != psutil.STATUS_ZOMBIE:
                out.append(kid)
        except psutil.NoSuchProcess:
            pass
    return out


def address(server: socketserver.TCPServer) -> tuple[str, int]:
    """The server's (host, port), typed for the helpers."""
    host, port = server.server_address[:2]
    return str(host), port


def request_line(address: tuple[str, int] | str, line: bytes, timeout: float = 5.0) -> bytes:
    """Open a stream connection, send ``line``, return the first line of the answer."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.sendall(line)
        return sock.makefile("rb").readline()


def group_processes(pgid: int) -> list[psutil.Process]:
    """Live processes of process group ``pgid``."""
    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return found


class ServerProcess:
    """A server process (``command``) in its own process group, and what it logged on stderr."""

    def __init__(
        self, command: list[str], env: dict[str, str] | None = None, pass_fds: Sequence[int] = ()
    ) -> None:
        self.command = command
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=env,
            pass_fds=pass_fds,
        )
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace"))

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_logged(self, text: str, timeout: float = 10.0) -> None:
        """Wait until ``text`` is in the log (read by a thread: it may lag the process)."""
        wait_for(lambda: text in self.log, timeout)

    def wait_listening(self, timeout: float = 10.0) -> str:
        """Wait until the master logs where it listens; return that address text."""

        def found() -> str | None:
            match = LISTENING.search(self.log)
            if match:
                return match.group(1)
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log}")
            return None

        return str(wait_for(found, timeout))

    @property
    def address(self) -> tuple[str, int]:
        text = self.wait_listening()
        host, _, port = text.split("://")[-1].rpartition(":")
        return host.strip("[]"), int(port)

    def workers(self) -> list[psutil.Process]:
        return live_children(self.pid)

    def worker_pids(self) -> set[int]:
        return {p.pid for p in self.workers()}

    def wait_workers(self, count: int, timeout: float = 10.0) -> set[int]:
        """Wait until exactly ``count`` live workers run and have reported ready (titled)."""

        def ready() -> set[int] | None:
            kids = self.workers()
            try:
                titles = [" ".join(k.cmdline()).strip() for k in kids]
                titled = [t for t in titles if "prefork: worker" in t and not t.endswith("booting")]
            except psutil.NoSuchProcess:
                return None
            return {k.pid for k in kids} if len(kids) == count == len(titled) else None

        return set(wait_for(ready, timeout))

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the process to exit. Its log may lag (read by a thread, and other
        processes, a new master of USR2, may hold it open): wait for a line written just
        before the exit with :meth:`wait_logged`."""
        return self.proc.wait(timeout)

    def destroy(self) -> None:
        """SIGKILL the whole process group, then check nothing of it is left."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        wait_for(lambda: not group_processes(self.pid), timeout=5)


class CLIServer(ServerProcess):
    """``python -m prefork ARGS`` in its own process group."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        super().__init__([sys.executable, "-m", "prefork", *args], env)


@pytest.fixture
def serve_cli() -> Iterator[Callable[..., CLIServer]]:
    """Start ``python -m prefork ARGS`` (bound to 127.0.0.1:0 unless ``--bind`` is given)."""
    started: list[CLIServer] = []

    def start(*args: str, wait: bool = True, env: dict[str, str] | None = None) -> CLIServer:
        argv = list(args)
        if not any(a in ("-b", "--bind") or a.startswith("--bind=") for a in argv):
            argv += ["--bind", "127.0.0.1:0"]
        server = CLIServer(argv, env)
        started.append(server)
        if wait:
            server.wait_listening()
        return server

    yield start
    for server in started:
        server.destroy()


def skip_unless_installed(what: str, found: object) -> None:
    """Skip the test when a real component (``what``: a Debian package) is not ``found``;
    fail it instead under CI (``PREFORK_REQUIRE_COMPONENTS=1``, set by ``.ci/run``, which
    installs them), so a missing install step cannot turn into a skip."""
    if not found:
        missing_component(what)


def missing_component(what: str) -> NoReturn:
    """Skip (or under CI fail) the test: the real component ``what`` is not installed."""
    if os.environ.get("PREFORK_REQUIRE_COMPONENTS") == "1":
        pytest.fail(f"{what} is not installed, and .ci/run requires it")
    pytest.skip(f"{what} is not installed (Debian package {what!r})")


@pytest.fixture(autouse=True, scope="session")
def private_runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every server of the test session puts its default control socket in a directory of its
    own (``XDG_RUNTIME_DIR``, mode 0700), not in the user's: ``prefork status`` in a test sees
    only the test's servers, and a SIGKILLed master's socket file is not left in the user's."""
    runtime = tmp_path_factory.mktemp("runtime")
    runtime.chmod(0o700)
    before = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    yield runtime
    if before is None:
        os.environ.pop("XDG_RUNTIME_DIR", None)
    else:
        os.environ["XDG_RUNTIME_DIR"] = before


@pytest.fixture(autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """Fail a test that leaves a child process of the test process running (or a zombie)."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield

    def leftovers() -> list[psutil.Process]:
        return [p for p in me.children(recursive=True) if p.pid not in before]

    deadline = time.monotonic() + 5
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.02)
    left = leftovers()
    for proc in left:
        try:
            proc.kill()
            os.waitpid(proc.pid, 0)
        except (psutil.NoSuchProcess, ChildProcessError):
            pass
    assert not left, f"test left processes behind: {left}"


@pytest.fixture
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected Unix stream pair, each end with a 2 s timeout, closed after the test."""
    a, b = socket.socketpair()
    a.settimeout(2)
    b.settimeout(2)
    with a, b:
        yield a, b


@pytest.fixture
def unix_path(tmp_path: Path) -> Iterator[str]:
    """A unique, short Unix socket path (sun_path is limited to about 107 bytes)."""
    short = Path("/tmp") / f"prefork-test-{os.getpid()}-{time.monotonic_ns()}.sock"
    yield str(short)
    short.unlink(missing_ok=True)
