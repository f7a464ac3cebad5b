"""The server under test: ``python -m prefork TARGET`` started and stopped for one run of
``prefork bench``, and what its master logs about where it listens.

Everything here runs in the bench's parent process. :class:`ServerUnderTest` starts the
server in its own process group and stops it (SIGTERM to the master, SIGKILL to the group
if it does not exit in time, or at once on a second Ctrl-C). Nothing is killed by name:
only the processes started here, by pid or process group.

**The server never outlives the bench.** The stop always ends with SIGKILL to the server's
process group and the removal of its temporary directory, the stop signals held meanwhile
(:func:`~prefork.bench.lifecycle.held_signals`); and the master gets SIGTERM when the bench
ends without stopping it, even by SIGKILL (:func:`~prefork.bench.lifecycle.die_with_parent`),
and stops its workers as on any SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from prefork.bench.errors import BenchError
from prefork.bench.lifecycle import die_with_parent, held_signals, interrupt_pending
from prefork.sockets import Address, parse_address

#: The master's "Listening at ADDR, ADDR with N ..." log line.
LISTENING = re.compile(r"Listening at (\S+?(?: \((?:http|datagram)\))?)(?:,| with)")
#: Seconds to wait for the server to listen and its workers to be ready.
START_TIMEOUT = 30.0
#: Seconds the server has to stop after SIGTERM before its process group is SIGKILLed.
STOP_TIMEOUT = 10.0


class ServerUnderTest:
    """``python -m prefork TARGET --workers N`` on loopback (or a Unix socket), in its own
    process group, with its stderr in a temporary file and a scoreboard file beside it.
    Started by the bench's parent process.

    ``workers`` None passes no ``--workers`` (the server's default, or what ``extra`` says,
    a dynamic pool's bounds for one). :meth:`start` waits until the master logs where it
    listens and its workers run (as many as the scoreboard says the master wants);
    :meth:`stop` sends SIGTERM to the master and waits ``STOP_TIMEOUT`` seconds, then
    SIGKILLs the process group. Raises BenchError when it does not start, OSError when it
    cannot be run.
    """

    def __init__(self, target: str, workers: int | None, *, unix: bool, udp: bool, extra: list[str]) -> None:
        self.target = target
        self.workers = workers
        self.tmp = tempfile.TemporaryDirectory(prefix="prefork-bench-")
        self.scoreboard = os.path.join(self.tmp.name, "scoreboard")
        bind = f"unix:{self.tmp.name}/bench.sock" if unix else "127.0.0.1:0"
        if udp and not unix:
            bind = "udp://" + bind
        command = [sys.executable, "-m", "prefork", target, "--bind", bind]
        if workers is not None:
            command += ["--workers", str(workers)]
        command += ["--scoreboard-file", self.scoreboard, "--graceful-timeout", "5", "--log-level", "info"]
        if udp:
            command.append("--udp")
        command += extra
        self.log_path = Path(self.tmp.name) / "server.log"
        try:
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                    preexec_fn=die_with_parent(signal.SIGTERM),
                )
        except BaseException:
            self.tmp.cleanup()
            raise
        self.pid = self.proc.pid
        self.listening = ""
        self.stopped = False

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
        while len(self.worker_pids()) < self.wanted():
            self._check_alive(deadline)
        time.sleep(0.05)  # let the last worker reach its accept loop

    def wanted(self) -> int:
        """The workers to wait for: ``workers``, or with None as many as the master wants
        (its scoreboard's header; 1 until it is written). Raises nothing."""
        if self.workers is not None:
            return self.workers
        try:
            from prefork.scoreboard import Scoreboard

            with Scoreboard.open(self.scoreboard) as board:
                return max(1, board.pool().workers_wanted)
        except (OSError, ValueError):
            return 1

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
        """SIGTERM the master, wait; SIGKILL the process group after ``STOP_TIMEOUT`` s, or at
        once when a stop signal (a second Ctrl-C, SIGTERM, SIGHUP) comes meanwhile; remove
        the temporary directory. The stop signals are held until it is done, then delivered.
        Safe to call twice; raises nothing itself."""
        if self.stopped:
            return
        with held_signals():
            try:
                if self.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, signal.SIGTERM)
                    deadline = time.monotonic() + STOP_TIMEOUT
                    while self.proc.poll() is None and not interrupt_pending():
                        if time.monotonic() > deadline:
                            break
                        time.sleep(0.01)
            finally:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)  # workers left behind by a killed master, too
                self.proc.wait()
                self.tmp.cleanup()
                self.stopped = True


@contextlib.contextmanager
def serving(
    target: str, workers: int | None, *, unix: bool, udp: bool, extra: list[str]
) -> Iterator[ServerUnderTest]:
    """Start the server under test for one run (``workers`` workers, None: the server's
    choice; ``extra``: more ``prefork`` flags), yield it, and always stop it. Raises
    BenchError when it does not start, OSError when it cannot be run."""
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
