"""The master: pool bookkeeping, signal dispatch, reaping, restarting, stopping, reloading.

The master never runs handler code. Its loop (:meth:`Master.run`) is: ``service_actions()``
(reap, fork what is missing, retire what is in excess, kill what is late) -> wait on one
selector (the signal wake-up fd, the workers' notification pipe and, on Linux, a pidfd per
worker) -> dispatch the signals the handlers recorded. Signal handlers only record the signal;
``signal.set_wakeup_fd`` wakes the loop. Stop, reload (HUP) and resizing (TTIN/TTOU) only change
the state the loop converges to: the wanted number of workers, the generation, the stop mode.

Only our own children are reaped, each by pid (never ``waitpid(-1)``), so other children of
the process are left to their owners.
"""

from __future__ import annotations

import collections
import enum
import logging
import math
import os
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from types import FrameType, MappingProxyType
from typing import TYPE_CHECKING, TextIO

import setproctitle

from prefork import sockets
from prefork.config import usable_cpus
from prefork.errors import WorkerBootError
from prefork.workers import WORKER_CLASSES, WORKER_EXIT_ERROR, Worker
from prefork.workers.base import BOOT_ERROR, READY, decode_messages, drain

if TYPE_CHECKING:
    from prefork.server import PreforkMixIn

log = logging.getLogger("prefork")

#: Consecutive boot failures after which the master stops the pool and gives up.
MAX_BOOT_FAILURES = 5
#: Delay before re-forking after the first boot failure, doubled after each further one.
BOOT_BACKOFF = 0.1
#: Longest delay between boot attempts (seconds).
BOOT_BACKOFF_MAX = 5.0
#: Seconds workers get to exit on a fast stop (INT, QUIT) before SIGKILL.
FAST_STOP_TIMEOUT = 1.0


class StopMode(enum.Enum):
    """How the pool is being stopped."""

    GRACEFUL = "graceful"  # TERM to workers: finish the request in progress, then exit
    FAST = "fast"  # QUIT to workers: exit now


#: The master's signals and the method (``handle_<name>``) that acts on each.
SIGNALS: Mapping[signal.Signals, str] = MappingProxyType(
    {
        signal.SIGTERM: "term",
        signal.SIGINT: "int",
        signal.SIGQUIT: "quit",
        signal.SIGHUP: "hup",
        signal.SIGTTIN: "ttin",
        signal.SIGTTOU: "ttou",
        signal.SIGCHLD: "chld",
        signal.SIGUSR1: "usr1",
        signal.SIGUSR2: "usr2",
    }
)


class Master:
    """Supervises the pool of one prefork server. Created and run in the master process.

    ``server`` is the prefork server (bound and activated); ``poll_interval`` (seconds) bounds
    each wait of the loop, as in ``BaseServer.serve_forever``. Signal handlers are installed
    only when :meth:`run` is called in the main thread; elsewhere the pool is stopped with
    :meth:`request_shutdown` (``server.shutdown()``).
    """

    def __init__(self, server: PreforkMixIn, poll_interval: float = 0.5) -> None:
        self.server = server
        self.poll_interval = poll_interval
        self.worker_class: type[Worker] = WORKER_CLASSES[server.worker_class]
        self.num_workers = server.workers or usable_cpus()
        self.name = server.proc_name or type(server).__name__
        self.generation = 0
        self.workers: dict[int, Worker] = {}
        self.signals: collections.deque[int] = collections.deque()
        self.stop_mode: StopMode | None = None
        self.halt_reason: str | None = None
        self.boot_failures = 0
        self.last_boot_failure = -math.inf
        self._notify_buffer = b""
        self._old_handlers: dict[signal.Signals, Callable[[int, FrameType | None], object] | int | None] = {}
        self._old_wakeup_fd: int | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._notify_r, self._notify_w = os.pipe()
        self._master_r, self._master_w = os.pipe()  # workers read EOF when the master is gone
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        os.set_blocking(self._notify_r, False)
        os.set_blocking(self._notify_w, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._selector.register(self._notify_r, selectors.EVENT_READ, None)

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        """Fork the pool and supervise it until a stop, then stop the pool. Runs in the master.

        Raises :class:`~prefork.errors.WorkerBootError` when workers failed to boot
        ``MAX_BOOT_FAILURES`` times in a row (the pool is stopped first).
        """
        self.install_signals()
        title = setproctitle.getproctitle()
        timeouts = [server.socket.gettimeout() for server in self.servers()]
        try:
            for server in self.servers():
                server.socket.setblocking(False)  # workers accept without blocking
            setproctitle.setproctitle(f"prefork: master [{self.name}]")
            log.info(
                "Listening at %s with %d %s workers (master pid %d)",
                ", ".join(sockets.describe(s) for s in self.servers()),
                self.num_workers,
                self.server.worker_class,
                os.getpid(),
            )
            while self.stop_mode is None:
                self.server.service_actions()
                self.wait(self.timeout())
                self.dispatch_signals()
            self.stop_pool()
        finally:
            for server, timeout in zip(self.servers(), timeouts, strict=True):
                server.socket.settimeout(timeout)  # e.g. for handle_request() after this
            setproctitle.setproctitle(title)
            self.restore_signals()
            self.close()
        if self.halt_reason is not None:
            raise WorkerBootError(self.halt_reason)

    def maintain(self) -> None:
        """Reap exited workers, fork missing ones, retire excess ones, SIGKILL late ones.

        Called by the server's ``service_actions()``. Runs in the master.
        """
        self.reap()
        if self.stop_mode is None:
            self.spawn_missing()
            self.retire_excess()
        self.kill_late()

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a signal, a worker message or a worker's exit."""
        for key, _ in self._selector.select(timeout):
            if key.fileobj is self._wake_r:
                drain(self._wake_r.fileno())
            elif key.fileobj == self._notify_r:
                self.read_notifications()

    def timeout(self) -> float:
        """Seconds until the loop has something to do at the latest (<= poll_interval)."""
        deadlines = [w.stop_deadline for w in self.workers.values() if w.stop_deadline is not None]
        if self.boot_failures and self.stop_mode is None:
            deadlines.append(self.next_boot_attempt())
        soonest = min(deadlines, default=math.inf) - time.monotonic()
        return max(0.0, min(soonest, self.poll_interval))

    def servers(self) -> list[PreforkMixIn]:
        """The servers the pool accepts on: the server and its ``listeners``."""
        return [self.server, *self.server.listeners]

    # -- signals -----------------------------------------------------------------------------

    def install_signals(self) -> None:
        """Install handlers that record the signal, and the wake-up fd (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._old_wakeup_fd = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in SIGNALS:
            self._old_handlers[sig] = signal.signal(sig, self.record_signal)

    def restore_signals(self) -> None:
        """Put back the handlers and wake-up fd that were there before :meth:`run`."""
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._old_handlers.clear()
        if self._old_wakeup_fd is not None:
            signal.set_wakeup_fd(self._old_wakeup_fd)
            self._old_wakeup_fd = None

    def record_signal(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler: record the signal; the wake-up fd wakes the loop."""
        self.signals.append(signum)

    def dispatch_signals(self) -> None:
        """Act on the recorded signals, in order, with their ``handle_<name>`` methods."""
        while self.signals:
            getattr(self, "handle_" + SIGNALS[signal.Signals(self.signals.popleft())])()

    def handle_term(self) -> None:
        """TERM: graceful stop; workers finish their request within graceful_timeout."""
        log.info("Received SIGTERM, stopping gracefully (up to %g s).", self.server.graceful_timeout)
        self.stop(StopMode.GRACEFUL)

    def handle_int(self) -> None:
        """INT: fast stop; workers exit at once."""
        log.info("Received SIGINT, stopping now.")
        self.stop(StopMode.FAST)

    def handle_quit(self) -> None:
        """QUIT: fast stop, as INT."""
        log.info("Received SIGQUIT, stopping now.")
        self.stop(StopMode.FAST)

    def handle_hup(self) -> None:
        """HUP: graceful reload; each new worker starts, then the old one it replaces retires."""
        log.info("Received SIGHUP, reloading: new workers start, then the old ones retire.")
        self.generation += 1

    def handle_ttin(self) -> None:
        """TTIN: one worker more."""
        self.num_workers += 1
        log.info("Received SIGTTIN, increasing the pool to %d workers.", self.num_workers)

    def handle_ttou(self) -> None:
        """TTOU: one worker fewer (the highest-numbered retires), never below 1."""
        if self.num_workers > 1:
            self.num_workers -= 1
            log.info("Received SIGTTOU, decreasing the pool to %d worker(s).", self.num_workers)
        else:
            log.info("Received SIGTTOU, but the pool is at its minimum of 1 worker.")

    def handle_chld(self) -> None:
        """CHLD: only wakes the loop; ``service_actions()`` reaps and restarts."""

    def handle_usr1(self) -> None:
        """USR1: reopening log files is not implemented yet; logged and ignored."""
        log.warning("Received SIGUSR1: reopening log files is not implemented yet; ignored.")

    def handle_usr2(self) -> None:
        """USR2: the zero-downtime upgrade is not implemented yet; logged and ignored."""
        log.warning("Received SIGUSR2: the zero-downtime upgrade is not implemented yet; ignored.")

    def stop(self, mode: StopMode) -> None:
        """Ask for the pool to stop; FAST overrides a GRACEFUL stop in progress."""
        if self.stop_mode is None or mode is StopMode.FAST:
            self.stop_mode = mode

    def request_shutdown(self) -> None:
        """Stop gracefully, as TERM does. Thread-safe: called by ``server.shutdown()``."""
        self.stop(StopMode.GRACEFUL)
        self.wakeup()

    def wakeup(self) -> None:
        """Wake the loop from another thread."""
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full (the loop will wake anyway) or closed (the loop is over)
            pass

    # -- workers -----------------------------------------------------------------------------

    def spawn_missing(self) -> None:
        """Fork a worker for each number 0..num_workers-1 that has none of this generation."""
        if self.boot_failures and time.monotonic() < self.next_boot_attempt():
            return
        present = {
            w.number
            for w in self.workers.values()
            if w.generation == self.generation and w.stop_deadline is None
        }
        for number in range(self.num_workers):
            if number not in present:
                self.spawn(number)

    def spawn(self, number: int) -> Worker:
        """Fork worker ``number`` of the current generation; return its record.

        The child runs the worker and leaves with ``os._exit``: it never returns here.
        """
        worker = self.worker_class(
            self.server, number, self.generation, self.name, self._notify_w, self._master_r
        )
        for stream in (sys.stdout, sys.stderr):  # else the child inherits unwritten output
            _flush(stream)
        worker.spawned_at = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the worker
            status = WORKER_EXIT_ERROR
            try:
                self.close_in_worker()
                status = worker.run()
            except SystemExit as exc:
                status = exc.code if isinstance(exc.code, int) else WORKER_EXIT_ERROR
            except BaseException:
                log.exception("Worker %d (pid %d) crashed", number, os.getpid())
            finally:
                for stream in (sys.stdout, sys.stderr):
                    _flush(stream)
                os._exit(status)
        worker.pid = pid
        if hasattr(os, "pidfd_open"):
            try:
                worker.pidfd = os.pidfd_open(pid)
                self._selector.register(worker.pidfd, selectors.EVENT_READ, None)
            except OSError:  # kernel < 5.3: SIGCHLD and poll_interval wake the loop instead
                worker.pidfd = -1
        self.workers[pid] = worker
        log.debug("Booting worker %d (pid %d, generation %d)", number, pid, self.generation)
        return worker

    def close_in_worker(self) -> None:
        """In a freshly forked worker, drop what belongs to the master."""
        signal.set_wakeup_fd(-1)
        self._selector.close()
        for worker in self.workers.values():
            if worker.pidfd >= 0:
                os.close(worker.pidfd)
        self._wake_r.close()
        self._wake_w.close()
        os.close(self._notify_r)
        os.close(self._master_w)

    def retire_excess(self) -> None:
        """Gracefully stop workers of an old generation once their replacement is ready
        (the rolling reload of HUP), and workers numbered beyond the pool size (TTOU)."""
        ready = {w.number for w in self.workers.values() if w.generation == self.generation and w.booted}
        for worker in list(self.workers.values()):
            if worker.stop_deadline is not None:
                continue
            old = worker.generation != self.generation
            if worker.number >= self.num_workers or (old and worker.number in ready):
                self.stop_worker(worker, signal.SIGTERM, self.server.graceful_timeout)

    def stop_worker(self, worker: Worker, sig: signal.Signals, timeout: float) -> None:
        """Send ``sig`` to ``worker``; SIGKILL it if it still runs ``timeout`` seconds later."""
        log.debug("Stopping worker %d (pid %d) with %s", worker.number, worker.pid, sig.name)
        _kill(worker.pid, sig)
        deadline = time.monotonic() + timeout
        if worker.stop_deadline is None or deadline < worker.stop_deadline:
            worker.stop_deadline = deadline

    def kill_late(self) -> None:
        """SIGKILL stopping workers whose deadline has passed."""
        now = time.monotonic()
        for worker in self.workers.values():
            if worker.stop_deadline is not None and worker.stop_deadline <= now:
                log.warning("Worker %d (pid %d) did not stop in time; killing it", worker.number, worker.pid)
                _kill(worker.pid, signal.SIGKILL)
                worker.stop_deadline = math.inf

    def reap(self) -> None:
        """Collect our exited workers, by pid, and account for boot failures."""
        for worker in list(self.workers.values()):
            try:
                pid, status = os.waitpid(worker.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else (e.g. SIGCHLD set to SIG_IGN)
                pid, status = worker.pid, 0
            if pid == 0:
                continue
            # What the worker wrote before it exited (READY, BOOT_ERROR) is in the pipe now.
            self.read_notifications()
            self.forget(worker)
            code = os.waitstatus_to_exitcode(status)
            if worker.stop_deadline is not None:
                log.debug("Worker %d (pid %d) stopped (%s)", worker.number, pid, _describe(code))
            elif not worker.booted:
                self.boot_failed(worker, _describe(code))
            else:
                log.warning("Worker %d (pid %d) %s; replacing it", worker.number, pid, _describe(code))

    def forget(self, worker: Worker) -> None:
        """Drop a reaped worker's record and its pidfd."""
        del self.workers[worker.pid]
        if worker.pidfd >= 0:
            self._selector.unregister(worker.pidfd)
            os.close(worker.pidfd)
            worker.pidfd = -1

    def read_notifications(self) -> None:
        """Read the workers' messages: READY marks a worker booted, BOOT_ERROR its cause."""
        try:
            while chunk := os.read(self._notify_r, 65536):
                self._notify_buffer += chunk
        except BlockingIOError:
            pass
        messages, self._notify_buffer = decode_messages(self._notify_buffer)
        for kind, pid, text in messages:
            worker = self.workers.get(pid)
            if worker is None:
                continue
            if kind == READY:
                worker.booted = True
                self.boot_failures = 0
            elif kind == BOOT_ERROR:
                worker.boot_error = text

    def boot_failed(self, worker: Worker, how: str) -> None:
        """Count a worker that exited before it was ready; halt after too many in a row.

        Workers forked in the same round (before the previous failure was seen) count once.
        """
        cause = worker.boot_error or f"worker {how}"
        if worker.spawned_at > self.last_boot_failure:
            self.boot_failures += 1
        self.last_boot_failure = time.monotonic()
        if self.boot_failures >= MAX_BOOT_FAILURES:
            self.halt_reason = f"Workers failed to boot {self.boot_failures} times in a row: {cause}"
            log.error("%s; stopping.", self.halt_reason)
            self.stop(StopMode.FAST)
        else:
            delay = self.next_boot_attempt() - time.monotonic()
            log.warning("Worker %d failed to boot (%s); retrying in %.1f s", worker.number, cause, delay)

    def next_boot_attempt(self) -> float:
        """The monotonic time before which no worker is forked after boot failures."""
        backoff: float = min(BOOT_BACKOFF * 2.0 ** (self.boot_failures - 1), BOOT_BACKOFF_MAX)
        return self.last_boot_failure + backoff

    # -- stopping ----------------------------------------------------------------------------

    def stop_pool(self) -> None:
        """Stop every worker per the stop mode, wait for them, SIGKILL the late ones."""
        fast = self.stop_mode is StopMode.FAST
        self.stop_all(fast)
        while self.workers:
            self.dispatch_signals()
            if self.stop_mode is StopMode.FAST and not fast:
                fast = True
                self.stop_all(True)
            self.maintain()
            if self.workers:
                self.wait(self.timeout())

    def stop_all(self, fast: bool) -> None:
        """Signal every worker to stop: QUIT (fast) or TERM (graceful, once per worker)."""
        for worker in self.workers.values():
            if fast:
                self.stop_worker(worker, signal.SIGQUIT, FAST_STOP_TIMEOUT)
            elif worker.stop_deadline is None:
                self.stop_worker(worker, signal.SIGTERM, self.server.graceful_timeout)

    def close(self) -> None:
        """Release the master's descriptors (the pool must be stopped)."""
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
        for fd in (self._notify_r, self._notify_w, self._master_r, self._master_w):
            os.close(fd)


def _kill(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _flush(stream: TextIO | None) -> None:
    try:
        if stream is not None:
            stream.flush()
    except (OSError, ValueError):  # closed, or a broken pipe
        pass


def _describe(code: int) -> str:
    """'exited with status N' or 'was killed by SIGNAME' for an exit code from waitstatus."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"
