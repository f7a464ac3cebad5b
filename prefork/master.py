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
import fcntl
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

from prefork import sockets, systemd
from prefork.config import usable_cpus
from prefork.errors import PreforkError, WorkerBootError
from prefork.logs import reopen_log_files
from prefork.pidfile import Pidfile
from prefork.scoreboard import Scoreboard, WorkerState
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
#: Seconds between SIGABRT (request timeout; faulthandler dumps the stack) and SIGKILL.
ABORT_GRACE = 0.5
#: Seconds between two checks of the workers' memory (max_worker_memory).
MEMORY_CHECK_INTERVAL = 1.0
#: Fewest scoreboard slots; there are at least 4 per worker (a reload doubles the pool).
SCOREBOARD_MIN_SLOTS = 1024
#: Environment variable naming the old master, in a new master started by USR2.
UPGRADE_FROM_ENV = "PREFORK_UPGRADE_FROM"


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
    :meth:`request_shutdown` (``server.shutdown()``). Raises
    :class:`~prefork.errors.PreforkError` when the ``scoreboard_file`` cannot be created.
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
        self.announced_generation = -1  # the generation whose readiness was announced
        self.upgrade_pid = 0  # the new master started by USR2, while it is our child
        self.upgrade_from = 0  # the old master to stop once our pool is ready (after USR2)
        self.next_memory_check = 0.0
        self.pidfile = Pidfile(server.pidfile) if server.pidfile else None
        #: Per-worker state and counters in shared memory; workers inherit it.
        try:
            self.scoreboard = Scoreboard(
                max(SCOREBOARD_MIN_SLOTS, 4 * self.num_workers), server.scoreboard_file
            )
        except OSError as exc:
            raise PreforkError(
                f"cannot create scoreboard file {server.scoreboard_file}: {exc.strerror or exc}"
            ) from None
        #: accept="reuseport" in effect: worker K > 0 accepts on its own SO_REUSEPORT sockets.
        self.reuseport = False
        self._reuseport_sockets: dict[int, list[socket.socket]] = {}  # by worker number
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
        ``MAX_BOOT_FAILURES`` times in a row (the pool is stopped first), and
        :class:`~prefork.errors.PreforkError` when the pid file cannot be written.
        """
        self.install_signals()
        title = setproctitle.getproctitle()
        timeouts = [server.socket.gettimeout() for server in self.servers()]
        upgrade_from = os.environ.pop(UPGRADE_FROM_ENV, "")
        if upgrade_from.isdigit() and int(upgrade_from) == os.getppid():
            self.upgrade_from = int(upgrade_from)
        try:
            if self.server.umask is not None:
                os.umask(self.server.umask)
            if self.pidfile is not None:
                try:
                    self.pidfile.create()
                except OSError as exc:
                    raise PreforkError(
                        f"cannot write pid file {self.pidfile.path}: {exc.strerror or exc}"
                    ) from None
            for server in self.servers():
                server.socket.setblocking(False)  # workers accept without blocking
                server.scoreboard = self.scoreboard
            self.reuseport = self.use_reuseport()
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
            if not self.upgrade_pid:  # else the new master shares the sockets' O_NONBLOCK flag
                for server, timeout in zip(self.servers(), timeouts, strict=True):
                    server.socket.settimeout(timeout)  # e.g. for handle_request() after this
            setproctitle.setproctitle(title)
            self.restore_signals()
            if self.pidfile is not None:
                self.pidfile.remove()
            for server in self.servers():
                server.scoreboard = None
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
            self.announce_ready()
        self.kill_timed_out()
        self.recycle_large()
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
        deadlines += self.request_deadlines()
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
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        systemd.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}", "STATUS=Reloading")

    def handle_ttin(self) -> None:
        """TTIN: one worker more (at most a quarter of the scoreboard's slots)."""
        if self.num_workers >= self.scoreboard.capacity // 4:
            log.warning("Received SIGTTIN, but the pool is at its maximum of %d workers.", self.num_workers)
            return
        self.num_workers += 1
        log.info("Received SIGTTIN, increasing the pool to %d workers.", self.num_workers)

    def handle_ttou(self) -> None:
        """TTOU: one worker fewer (the highest-numbered retires), never below 1."""
        if self.num_workers > 1:
            self.num_workers -= 1
            self.close_reuseport_sockets(self.num_workers)  # the retiring worker's copy stays open
            log.info("Received SIGTTOU, decreasing the pool to %d worker(s).", self.num_workers)
        else:
            log.info("Received SIGTTOU, but the pool is at its minimum of 1 worker.")

    def handle_chld(self) -> None:
        """CHLD: only wakes the loop; ``service_actions()`` reaps and restarts."""

    def handle_usr1(self) -> None:
        """USR1: reopen log files, here and (forwarded) in every worker."""
        log.info("Received SIGUSR1, reopening log files.")
        reopen_log_files()
        for worker in self.workers.values():
            _kill(worker.pid, signal.SIGUSR1)

    def handle_usr2(self) -> None:
        """USR2: zero-downtime upgrade; a new master, started with our listening sockets,
        boots its pool, then stops this master (TERM)."""
        if self.upgrade_pid:
            log.warning(
                "Received SIGUSR2, but an upgrade (new master pid %d) is in progress.", self.upgrade_pid
            )
        elif os.getpid() == 1:
            log.warning("Received SIGUSR2, but a master running as PID 1 cannot be replaced; ignored.")
        else:
            self.upgrade_pid = self.spawn_master()
            log.info("Received SIGUSR2, upgrading: started a new master (pid %d).", self.upgrade_pid)

    def stop(self, mode: StopMode) -> None:
        """Ask for the pool to stop; FAST overrides a GRACEFUL stop in progress."""
        if self.stop_mode is None and not self.upgrade_pid:  # else the new master is the service
            systemd.notify("STOPPING=1", "STATUS=Stopping")
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
        present = {  # a worker aborted while booting is replaced after its boot failure counts
            w.number
            for w in self.workers.values()
            if w.generation == self.generation and (w.stop_deadline is None or (w.aborted and not w.booted))
        }
        for number in range(self.num_workers):
            if number not in present:
                self.spawn(number)

    def spawn(self, number: int) -> Worker:
        """Fork worker ``number`` of the current generation; return its record.

        The child runs the worker and leaves with ``os._exit``: it never returns here.
        """
        slot = self.scoreboard.assign(number, self.generation)
        if slot is None:  # cannot happen while TTIN keeps the pool within capacity / 4
            raise RuntimeError("no free scoreboard slot")
        max_requests = self.server.max_requests
        if max_requests:
            import random  # here: importing it costs a reseed in every forked worker

            max_requests += random.randint(0, self.server.max_requests_jitter)
        worker = self.worker_class(
            self.server,
            number,
            self.generation,
            self.name,
            self._notify_w,
            self._master_r,
            slot=slot,
            max_requests=max_requests,
        )
        for stream in (sys.stdout, sys.stderr):  # else the child inherits unwritten output
            _flush(stream)
        own = self.accept_sockets(number)
        worker.spawned_at = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the worker
            status = WORKER_EXIT_ERROR
            try:
                self.close_in_worker(own)
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
        self.scoreboard.set_pid(slot, pid)
        if hasattr(os, "pidfd_open"):
            try:
                worker.pidfd = os.pidfd_open(pid)
                self._selector.register(worker.pidfd, selectors.EVENT_READ, None)
            except OSError:  # kernel < 5.3: SIGCHLD and poll_interval wake the loop instead
                worker.pidfd = -1
        self.workers[pid] = worker
        log.debug("Booting worker %d (pid %d, generation %d)", number, pid, self.generation)
        return worker

    def close_in_worker(self, own: list[socket.socket] | None = None) -> None:
        """In a freshly forked worker, drop what belongs to the master. With ``own`` (the
        worker's reuseport sockets, one per server), each server's ``socket`` becomes its
        own one, and the copies of the other sockets are closed."""
        if own is not None:
            for server, sock in zip(self.servers(), own, strict=True):
                if server.socket is not sock:
                    server.socket.close()
                    server.socket = sock
        for socks in self._reuseport_sockets.values():
            for sock in socks:
                if own is None or sock not in own:
                    sock.close()
        signal.set_wakeup_fd(-1)
        self._selector.close()
        for worker in self.workers.values():
            if worker.pidfd >= 0:
                os.close(worker.pidfd)
        self._wake_r.close()
        self._wake_w.close()
        os.close(self._notify_r)
        os.close(self._master_w)

    def use_reuseport(self) -> bool:
        """Whether the ``reuseport`` accept strategy applies: asked for, and possible for
        every server (else log why, and accept on the shared sockets). Warns once when
        queued connections of a closing socket would be reset (tcp_migrate_req=0)."""
        if self.server.accept != "reuseport":
            return False
        for server in self.servers():
            why = sockets.reuseport_unsupported(server.socket)
            if why is not None:
                log.info("accept=reuseport: %s is %s; using shared sockets", sockets.describe(server), why)
                return False
        if sockets.tcp_migrate_req() is False:
            log.warning(
                "accept=reuseport with net.ipv4.tcp_migrate_req=0: connections queued on a worker's "
                "socket are reset when the pool shrinks or stops (sysctl -w net.ipv4.tcp_migrate_req=1)"
            )
        return True

    def accept_sockets(self, number: int) -> list[socket.socket] | None:
        """With reuseport, worker ``number``'s listening sockets (one per server): worker 0
        uses the servers' own; the others' are created on first use and kept for the
        worker's replacements (which inherit their queue) until the pool shrinks or stops.
        None means the shared sockets (also when creating them fails, which is logged)."""
        if not self.reuseport:
            return None
        if number == 0:
            return [server.socket for server in self.servers()]
        if number not in self._reuseport_sockets:
            socks: list[socket.socket] = []
            try:
                for server in self.servers():
                    socks.append(sockets.reuseport_socket(server.socket, server.request_queue_size))
            except OSError as exc:
                log.error("Worker %d: cannot create a reuseport socket (%s); sharing worker 0's", number, exc)
                for sock in socks:
                    sock.close()
                return None
            self._reuseport_sockets[number] = socks
        return self._reuseport_sockets[number]

    def close_reuseport_sockets(self, first: int = 0) -> None:
        """Close the reuseport sockets of worker numbers ``first`` and above."""
        for number in [n for n in self._reuseport_sockets if n >= first]:
            for sock in self._reuseport_sockets.pop(number):
                sock.close()

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
        """Collect our exited workers (and a new master of USR2 that exited), by pid, and
        account for boot failures."""
        if self.upgrade_pid:
            try:
                pid, status = os.waitpid(self.upgrade_pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self.upgrade_pid, 0
            if pid:
                how = _describe(os.waitstatus_to_exitcode(status))
                log.error("The new master (pid %d) %s before taking over; still serving.", pid, how)
                self.upgrade_pid = 0
        for worker in list(self.workers.values()):
            try:
                pid, status = os.waitpid(worker.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else (e.g. SIGCHLD set to SIG_IGN)
                pid, status = worker.pid, 0
            if pid == 0:
                continue
            # What the worker wrote before it exited (READY, BOOT_ERROR) is in the pipe now.
            self.read_notifications()
            stats = self.scoreboard.read(worker.slot)
            self.forget(worker)
            code = os.waitstatus_to_exitcode(status)
            if not worker.booted and (worker.stop_deadline is None or worker.aborted):
                self.boot_failed(worker, _describe(code))
            elif worker.aborted:
                how = _describe(code)
                log.warning(
                    "Worker %d (pid %d) %s after the request timeout; replacing it", worker.number, pid, how
                )
            elif worker.stop_deadline is not None:
                log.debug("Worker %d (pid %d) stopped (%s)", worker.number, pid, _describe(code))
            elif code == 0 and stats.state is WorkerState.STOPPING:
                log.info("Worker %d (pid %d) recycled after %d requests", worker.number, pid, stats.requests)
            else:
                log.warning("Worker %d (pid %d) %s; replacing it", worker.number, pid, _describe(code))

    def forget(self, worker: Worker) -> None:
        """Drop a reaped worker's record, its pidfd and its scoreboard slot."""
        del self.workers[worker.pid]
        self.scoreboard.release(worker.slot)
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
        serving = [w for w in self.workers.values() if w.booted and w.stop_deadline is None]
        if self.boot_failures >= MAX_BOOT_FAILURES and serving:  # a reload (HUP) failed
            self.generation = max(w.generation for w in serving)
            self.boot_failures = 0
            log.error(
                "Reload failed: new workers failed to boot %d times in a row (%s); the %d workers "
                "already serving go on.",
                MAX_BOOT_FAILURES,
                cause,
                len(serving),
            )
            systemd.notify("READY=1", f"STATUS=Reload failed: {cause}")
        elif self.boot_failures >= MAX_BOOT_FAILURES:
            self.halt_reason = f"Workers failed to boot {self.boot_failures} times in a row: {cause}"
            log.error("%s; stopping.", self.halt_reason)
            self.stop(StopMode.FAST)
        else:
            delay = self.next_boot_attempt() - time.monotonic()
            log.warning("Worker %d failed to boot (%s); retrying in %.1f s", worker.number, cause, delay)

    def announce_ready(self) -> None:
        """Once every worker of the current generation is ready: tell the service manager
        (READY=1), and after a USR2 upgrade, stop the old master (TERM)."""
        if self.announced_generation == self.generation:
            return
        ready = {
            w.number
            for w in self.workers.values()
            if w.generation == self.generation and w.booted and w.stop_deadline is None
        }
        if len(ready) < self.num_workers:
            return
        self.announced_generation = self.generation
        status = f"STATUS=Serving with {self.num_workers} workers"
        if self.generation:
            log.info("Reload complete: %d new workers are serving.", self.num_workers)
        if self.upgrade_from:
            log.info("Upgrade: the pool is ready; stopping the old master (pid %d).", self.upgrade_from)
            systemd.notify(f"MAINPID={os.getpid()}", "READY=1", status)
            _kill(self.upgrade_from, signal.SIGTERM)
            self.upgrade_from = 0
        else:
            systemd.notify("READY=1", status)

    def kill_timed_out(self) -> None:
        """SIGABRT each worker busy on one request (or booting) for ``request_timeout``
        seconds or more; faulthandler dumps its stack, and it gets SIGKILL ``ABORT_GRACE``
        seconds later if still alive. Idle workers are never killed."""
        limit = self.server.request_timeout
        if not limit:
            return
        now = time.monotonic()
        for worker in list(self.workers.values()):
            if worker.aborted:
                continue
            if not worker.booted:
                if now - worker.spawned_at < limit:
                    continue
                what = f"did not boot within {limit:g} s"
                worker.boot_error = f"worker {what} (request_timeout)"
            else:
                busy = self.scoreboard.read(worker.slot).busy_for(now)
                if busy < limit:
                    continue
                what = f"has been busy on one request for {busy:.1f} s (request_timeout {limit:g} s)"
            log.error(
                "Worker %d (pid %d) %s; aborting it (SIGABRT dumps its stack)",
                worker.number,
                worker.pid,
                what,
            )
            worker.aborted = True
            self.stop_worker(worker, signal.SIGABRT, ABORT_GRACE)

    def request_deadlines(self) -> list[float]:
        """Monotonic times at which a worker will be over ``request_timeout``, and of the
        next memory check (for the loop's wait)."""
        deadlines = [self.next_memory_check] if self.server.max_worker_memory else []
        limit = self.server.request_timeout
        if not limit:
            return deadlines
        for worker in self.workers.values():
            if worker.aborted:
                continue
            if not worker.booted:
                deadlines.append(worker.spawned_at + limit)
                continue
            stats = self.scoreboard.read(worker.slot)
            if stats.state is WorkerState.BUSY and stats.request_started:
                deadlines.append(stats.request_started + limit)
        return deadlines

    def recycle_large(self) -> None:
        """Every ``MEMORY_CHECK_INTERVAL`` seconds, gracefully replace workers whose resident
        memory (RSS, psutil) is over ``max_worker_memory`` bytes: each finishes its request."""
        limit = self.server.max_worker_memory
        now = time.monotonic()
        if not limit or now < self.next_memory_check:
            return
        self.next_memory_check = now + MEMORY_CHECK_INTERVAL
        import psutil  # here: only a pool with max_worker_memory pays for importing it

        for worker in list(self.workers.values()):
            if worker.stop_deadline is not None:
                continue
            try:
                rss = psutil.Process(worker.pid).memory_info().rss
            except psutil.Error:
                continue
            if rss > limit:
                log.warning(
                    "Worker %d (pid %d) uses %.1f MiB, over max_worker_memory (%.1f MiB); recycling it",
                    worker.number,
                    worker.pid,
                    rss / 2**20,
                    limit / 2**20,
                )
                self.stop_worker(worker, signal.SIGTERM, self.server.graceful_timeout)

    def spawn_master(self) -> int:
        """Fork and exec a new master (USR2): the same interpreter and command line
        (``sys.orig_argv``), with the listening sockets as fds 3.. and ``LISTEN_FDS`` /
        ``LISTEN_PID`` set (systemd's socket-activation protocol, so its servers adopt them)
        and ``PREFORK_UPGRADE_FROM`` naming this master. Returns its pid. Runs in the master;
        the child never returns (exec, or ``os._exit(1)`` when exec fails)."""
        fds = [server.socket.fileno() for server in self.servers()]
        for stream in (sys.stdout, sys.stderr):
            _flush(stream)
        pid = os.fork()
        if pid:
            return pid
        try:
            first = systemd.LISTEN_FDS_START
            copies = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, first + len(fds)) for fd in fds]
            for index, fd in enumerate(copies):
                os.dup2(fd, first + index)  # inheritable, unlike the copies
            environment = {
                **os.environ,
                **systemd.listen_fds_environment(len(fds), os.getpid()),
                UPGRADE_FROM_ENV: str(os.getppid()),
            }
            os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)
        except BaseException:
            log.exception("Cannot start the new master")
        finally:
            os._exit(WORKER_EXIT_ERROR)

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
        """Release the master's descriptors and the scoreboard (the pool must be stopped)."""
        self.scoreboard.close()
        self.close_reuseport_sockets()
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
