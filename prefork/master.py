"""The master: the loop, signals, spawning, reaping and retiring workers, readiness, stopping.

The master never runs handler code. Its loop (:meth:`Master.run`) is: ``service_actions()``
(reap, fork what is missing, retire what is in excess, kill what is late) -> wait on one
selector (the signal wake-up fd, the workers' notification pipe and, on Linux, a pidfd per
worker) -> dispatch the signals the handlers recorded. Signal handlers only record the signal;
``signal.set_wakeup_fd`` wakes the loop. Stop, reload (HUP) and resizing (TTIN/TTOU) only change
the state the loop converges to: the wanted number of workers, the generation, the stop mode.

Each method here changes who is in the pool or reacts to an event. The bookkeeping is
elsewhere: the records of the workers and the questions on them in :mod:`prefork.pool`, the
request timeout and memory checks in :mod:`prefork.watchdog`, the USR2 re-exec in
:mod:`prefork.upgrade`, the per-worker reuseport sockets in :mod:`prefork.sockets`, the
worker->master messages in :mod:`prefork.messages`.

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
import threading
import time
from collections.abc import Callable, Mapping
from types import FrameType, MappingProxyType

import setproctitle

from prefork import sockets, systemd, upgrade
from prefork.config import usable_cpus
from prefork.contract import PoolServer, pool_servers
from prefork.errors import PreforkError, WorkerBootError
from prefork.logs import flush_std_streams, reopen_log_files
from prefork.messages import BOOT_ERROR, READY, WORKER_EXIT_ERROR, decode_messages, describe_exit, drain
from prefork.pidfile import Pidfile
from prefork.pool import BootBackoff, Pool, WorkerRecord
from prefork.scoreboard import Scoreboard, WorkerState
from prefork.watchdog import Watchdog
from prefork.workers import WORKER_CLASSES, Worker

log = logging.getLogger("prefork")

#: Seconds workers get to exit on a fast stop (INT, QUIT) before SIGKILL.
FAST_STOP_TIMEOUT = 1.0
#: Seconds between SIGABRT (request timeout; faulthandler dumps the stack) and SIGKILL.
ABORT_GRACE = 0.5
#: Fewest scoreboard slots; there are at least 4 per worker (a reload doubles the pool).
SCOREBOARD_MIN_SLOTS = 1024


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

_Handler = Callable[[int, FrameType | None], object] | int | None


class SignalQueue:
    """The master's signal handlers: each only appends the signal to :attr:`pending`;
    ``signal.set_wakeup_fd`` (the write end ``wakeup_fd``) wakes the loop. Installed only in
    the main thread; :meth:`restore` puts back what was there before."""

    def __init__(self, wakeup_fd: int) -> None:
        self.wakeup_fd = wakeup_fd
        #: Signals received and not yet acted on, oldest first.
        self.pending: collections.deque[int] = collections.deque()
        self._old_handlers: dict[signal.Signals, _Handler] = {}
        self._old_wakeup_fd: int | None = None

    def install(self) -> None:
        """Install the handlers of :data:`SIGNALS` and the wake-up fd (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._old_wakeup_fd = signal.set_wakeup_fd(self.wakeup_fd, warn_on_full_buffer=False)
        for sig in SIGNALS:
            self._old_handlers[sig] = signal.signal(sig, self.record)

    def restore(self) -> None:
        """Put back the handlers and wake-up fd that were there before :meth:`install`."""
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._old_handlers.clear()
        if self._old_wakeup_fd is not None:
            signal.set_wakeup_fd(self._old_wakeup_fd)
            self._old_wakeup_fd = None

    def record(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler: record the signal; the wake-up fd wakes the loop."""
        self.pending.append(signum)


class Master:
    """Supervises the pool of one prefork server. Created and run in the master process.

    ``server`` is the prefork server (bound and activated); ``poll_interval`` (seconds) bounds
    each wait of the loop, as in ``BaseServer.serve_forever``. Signal handlers are installed
    only when :meth:`run` is called in the main thread; elsewhere the pool is stopped with
    :meth:`request_shutdown` (``server.shutdown()``). Raises
    :class:`~prefork.errors.PreforkError` when the ``scoreboard_file`` cannot be created.
    """

    def __init__(self, server: PoolServer, poll_interval: float = 0.5) -> None:
        self.server = server
        self.poll_interval = poll_interval
        self.worker_class: type[Worker] = WORKER_CLASSES[server.worker_class]
        #: The pool size the loop converges to (the ``workers`` setting, moved by TTIN/TTOU).
        self.size = server.workers or usable_cpus()
        self.name = server.proc_name or type(server).__name__
        self.generation = 0
        #: The master's records of its workers.
        self.pool = Pool()
        self.boot_backoff = BootBackoff()
        self.stop_mode: StopMode | None = None
        self.halt_reason: str | None = None
        self.announced_generation = -1  # the generation whose readiness was announced
        self.upgrade_pid = 0  # the new master started by USR2, while it is our child
        self.upgrade_from = 0  # the old master to stop once our pool is ready (after USR2)
        self.pidfile = Pidfile(server.pidfile) if server.pidfile else None
        #: Per-worker state and counters in shared memory; workers inherit it.
        try:
            self.scoreboard = Scoreboard(max(SCOREBOARD_MIN_SLOTS, 4 * self.size), server.scoreboard_file)
        except OSError as exc:
            raise PreforkError(
                f"cannot create scoreboard file {server.scoreboard_file}: {exc.strerror or exc}"
            ) from None
        self.watchdog = Watchdog(server.request_timeout, server.max_worker_memory, self.scoreboard.read)
        #: accept="reuseport" in effect: worker K > 0 accepts on its own SO_REUSEPORT sockets.
        self.reuseport: sockets.ReuseportSockets | None = None
        self._notify_buffer = b""
        self._wake_r, self._wake_w = socket.socketpair()
        self.signals = SignalQueue(self._wake_w.fileno())
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
        self.signals.install()
        title = setproctitle.getproctitle()
        servers = pool_servers(self.server)
        timeouts = [server.socket.gettimeout() for server in servers]
        self.upgrade_from = upgrade.old_master()
        try:
            self.start_serving(servers)
            while self.stop_mode is None:
                self.server.service_actions()
                self.wait(self.timeout())
                self.dispatch_signals()
            self.stop_pool()
        finally:
            if not self.upgrade_pid:  # else the new master shares the sockets' O_NONBLOCK flag
                for server, timeout in zip(servers, timeouts, strict=True):
                    server.socket.settimeout(timeout)  # e.g. for handle_request() after this
            setproctitle.setproctitle(title)
            self.signals.restore()
            if self.pidfile is not None:
                self.pidfile.remove()
            for server in servers:
                server.scoreboard = None
            self.close()
        if self.halt_reason is not None:
            raise WorkerBootError(self.halt_reason)

    def start_serving(self, servers: list[PoolServer]) -> None:
        """Set the umask, write the pid file, make the listening sockets non-blocking, set
        up reuseport sockets, title the process and log where it listens. Raises
        :class:`~prefork.errors.PreforkError` when the pid file cannot be written."""
        if self.server.umask is not None:
            os.umask(self.server.umask)
        if self.pidfile is not None:
            try:
                self.pidfile.create()
            except OSError as exc:
                raise PreforkError(
                    f"cannot write pid file {self.pidfile.path}: {exc.strerror or exc}"
                ) from None
        for server in servers:
            server.socket.setblocking(False)  # workers accept without blocking
            server.scoreboard = self.scoreboard
        if self.server.accept == "reuseport":
            self.reuseport = sockets.ReuseportSockets.create(servers)
        setproctitle.setproctitle(f"prefork: master [{self.name}]")
        log.info(
            "Listening at %s with %d %s workers (master pid %d)",
            ", ".join(sockets.describe(s) for s in servers),
            self.size,
            self.server.worker_class,
            os.getpid(),
        )

    def maintain(self) -> None:
        """Reap exited workers, fork missing ones, retire excess ones, stop those the
        watchdog names, SIGKILL late ones. Called by the server's ``service_actions()``.
        Runs in the master."""
        self.reap()
        if self.stop_mode is None:
            self.spawn_missing()
            self.retire_excess()
            self.announce_ready()
        self.abort_timed_out()
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
        deadlines = self.pool.stop_deadlines() + self.watchdog.deadlines(self.pool)
        if self.boot_backoff.failures and self.stop_mode is None:
            deadlines.append(self.boot_backoff.next_attempt())
        soonest = min(deadlines, default=math.inf) - time.monotonic()
        return max(0.0, min(soonest, self.poll_interval))

    # -- signals -----------------------------------------------------------------------------

    def dispatch_signals(self) -> None:
        """Act on the recorded signals, in order, with their ``handle_<name>`` methods."""
        pending = self.signals.pending
        while pending:
            getattr(self, "handle_" + SIGNALS[signal.Signals(pending.popleft())])()

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
        if self.size >= self.scoreboard.capacity // 4:
            log.warning("Received SIGTTIN, but the pool is at its maximum of %d workers.", self.size)
            return
        self.size += 1
        log.info("Received SIGTTIN, increasing the pool to %d workers.", self.size)

    def handle_ttou(self) -> None:
        """TTOU: one worker fewer (the highest-numbered retires), never below 1."""
        if self.size > 1:
            self.size -= 1
            if self.reuseport is not None:
                self.reuseport.close_from(self.size)  # the retiring worker's copy stays open
            log.info("Received SIGTTOU, decreasing the pool to %d worker(s).", self.size)
        else:
            log.info("Received SIGTTOU, but the pool is at its minimum of 1 worker.")

    def handle_chld(self) -> None:
        """CHLD: only wakes the loop; ``service_actions()`` reaps and restarts."""

    def handle_usr1(self) -> None:
        """USR1: reopen log files, here and (forwarded) in every worker."""
        log.info("Received SIGUSR1, reopening log files.")
        reopen_log_files()
        for record in self.pool:
            _kill(record.pid, signal.SIGUSR1)

    def handle_usr2(self) -> None:
        """USR2: zero-downtime upgrade; a new master, started with our listening sockets,
        boots its pool, then stops this master (TERM). See :mod:`prefork.upgrade`."""
        if self.upgrade_pid:
            log.warning(
                "Received SIGUSR2, but an upgrade (new master pid %d) is in progress.", self.upgrade_pid
            )
        elif os.getpid() == 1:
            log.warning("Received SIGUSR2, but a master running as PID 1 cannot be replaced; ignored.")
        else:
            self.upgrade_pid = upgrade.start_new_master([s.fileno() for s in pool_servers(self.server)])
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

    # -- who is in the pool ------------------------------------------------------------------

    def spawn_missing(self) -> None:
        """Fork a worker for each number 0..size-1 that has none of this generation (unless
        waiting out the boot backoff)."""
        if self.boot_backoff.waiting(time.monotonic()):
            return
        for number in self.pool.missing(self.size, self.generation):
            self.spawn(number)

    def spawn(self, number: int) -> WorkerRecord:
        """Fork worker ``number`` of the current generation; return the master's record of it.

        The worker object is built in the child, after the fork; the child runs it and
        leaves with ``os._exit``: it never returns here.
        """
        slot = self.scoreboard.assign(number, self.generation)
        if slot is None:  # cannot happen while TTIN keeps the pool within capacity / 4
            raise RuntimeError("no free scoreboard slot")
        max_requests = self.server.max_requests
        if max_requests:
            import random  # here: importing it costs a reseed in every forked worker

            max_requests += random.randint(0, self.server.max_requests_jitter)
        flush_std_streams()  # else the child inherits unwritten output
        own = self.reuseport.for_worker(number) if self.reuseport is not None else None
        record = WorkerRecord(number, self.generation, slot, spawned_at=time.monotonic())
        pid = os.fork()
        if pid == 0:  # the worker
            status = WORKER_EXIT_ERROR
            try:
                self.close_in_worker(own)
                worker = self.worker_class(
                    self.server,
                    number,
                    record.generation,
                    self.name,
                    self._notify_w,
                    self._master_r,
                    self.scoreboard,
                    slot,
                    max_requests,
                )
                status = worker.run()
            except SystemExit as exc:
                status = exc.code if isinstance(exc.code, int) else WORKER_EXIT_ERROR
            except BaseException:
                log.exception("Worker %d (pid %d) crashed", number, os.getpid())
            finally:
                flush_std_streams()
                os._exit(status)
        record.pid = pid
        self.scoreboard.set_pid(slot, pid)
        if hasattr(os, "pidfd_open"):
            try:
                record.pidfd = os.pidfd_open(pid)
                self._selector.register(record.pidfd, selectors.EVENT_READ, None)
            except OSError:  # kernel < 5.3: SIGCHLD and poll_interval wake the loop instead
                record.pidfd = -1
        self.pool.add(record)
        log.debug("Booting worker %d (pid %d, generation %d)", number, pid, self.generation)
        return record

    def close_in_worker(self, own: list[socket.socket] | None = None) -> None:
        """In a freshly forked worker, drop what belongs to the master. With ``own`` (the
        worker's reuseport sockets, one per server), each server's ``socket`` becomes its
        own one, and the copies of the other sockets are closed."""
        if own is not None:
            for server, sock in zip(pool_servers(self.server), own, strict=True):
                if server.socket is not sock:
                    server.socket.close()
                    server.socket = sock
        if self.reuseport is not None:
            self.reuseport.close_others(own)
        signal.set_wakeup_fd(-1)
        self._selector.close()
        for record in self.pool:
            if record.pidfd >= 0:
                os.close(record.pidfd)
        self._wake_r.close()
        self._wake_w.close()
        os.close(self._notify_r)
        os.close(self._master_w)

    def retire_excess(self) -> None:
        """Gracefully stop workers of an old generation once their replacement is ready
        (the rolling reload of HUP), and workers numbered beyond the pool size (TTOU)."""
        for record in self.pool.to_retire(self.size, self.generation):
            self.stop_worker(record, signal.SIGTERM, self.server.graceful_timeout)

    def stop_worker(self, record: WorkerRecord, sig: signal.Signals, timeout: float) -> None:
        """Send ``sig`` to a worker; SIGKILL it if it still runs ``timeout`` seconds later."""
        log.debug("Stopping worker %d (pid %d) with %s", record.number, record.pid, sig.name)
        _kill(record.pid, sig)
        record.stop(time.monotonic() + timeout)

    def kill_late(self) -> None:
        """SIGKILL stopping workers whose deadline has passed."""
        for record in self.pool.late(time.monotonic()):
            log.warning("Worker %d (pid %d) did not stop in time; killing it", record.number, record.pid)
            _kill(record.pid, signal.SIGKILL)
            record.killed = True

    def abort_timed_out(self) -> None:
        """SIGABRT each worker the watchdog finds over ``request_timeout`` (busy on one
        request, or booting); faulthandler dumps its stack, and it gets SIGKILL
        ``ABORT_GRACE`` seconds later if still alive. Idle workers are never killed."""
        for record, reason in self.watchdog.timed_out(self.pool, time.monotonic()):
            if not record.booted:
                record.boot_error = f"worker {reason} (request_timeout)"
            log.error(
                "Worker %d (pid %d) %s; aborting it (SIGABRT dumps its stack)",
                record.number,
                record.pid,
                reason,
            )
            record.aborted = True
            self.stop_worker(record, signal.SIGABRT, ABORT_GRACE)

    def recycle_large(self) -> None:
        """Gracefully replace the workers the watchdog finds over ``max_worker_memory``
        (checked about once a second): each finishes its request."""
        for record, reason in self.watchdog.too_large(self.pool, time.monotonic()):
            log.warning("Worker %d (pid %d) %s; recycling it", record.number, record.pid, reason)
            self.stop_worker(record, signal.SIGTERM, self.server.graceful_timeout)

    # -- events ------------------------------------------------------------------------------

    def reap(self) -> None:
        """Collect our exited workers (and a new master of USR2 that exited), by pid, and
        account for boot failures."""
        if self.upgrade_pid:
            self.reap_new_master()
        for record in self.pool:
            try:
                pid, status = os.waitpid(record.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else (e.g. SIGCHLD set to SIG_IGN)
                pid, status = record.pid, 0
            if pid:
                # What the worker wrote before it exited (READY, BOOT_ERROR) is in the pipe now.
                self.read_notifications()
                stats = self.scoreboard.read(record.slot)
                self.forget(record)
                self.exited(record, os.waitstatus_to_exitcode(status), stats.state, stats.requests)

    def exited(self, record: WorkerRecord, code: int, state: WorkerState, requests: int) -> None:
        """Log a reaped worker's exit (``code`` from ``waitstatus_to_exitcode``; its
        scoreboard ``state`` and ``requests`` at the end) and count a boot failure."""
        number, pid, how = record.number, record.pid, describe_exit(code)
        if record.failed_to_boot():
            self.boot_failed(record, how)
        elif record.aborted:
            log.warning("Worker %d (pid %d) %s after the request timeout; replacing it", number, pid, how)
        elif record.stopping:
            log.debug("Worker %d (pid %d) stopped (%s)", number, pid, how)
        elif code == 0 and state is WorkerState.STOPPING:
            log.info("Worker %d (pid %d) recycled after %d requests", number, pid, requests)
        else:
            log.warning("Worker %d (pid %d) %s; replacing it", number, pid, how)

    def reap_new_master(self) -> None:
        """Collect the new master of a USR2 upgrade if it exited before taking over."""
        try:
            pid, status = os.waitpid(self.upgrade_pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.upgrade_pid, 0
        if pid:
            how = describe_exit(os.waitstatus_to_exitcode(status))
            log.error("The new master (pid %d) %s before taking over; still serving.", pid, how)
            self.upgrade_pid = 0

    def forget(self, record: WorkerRecord) -> None:
        """Drop a reaped worker's record, its pidfd and its scoreboard slot."""
        self.pool.remove(record)
        self.scoreboard.release(record.slot)
        if record.pidfd >= 0:
            self._selector.unregister(record.pidfd)
            os.close(record.pidfd)
            record.pidfd = -1

    def read_notifications(self) -> None:
        """Read the workers' messages: READY marks a worker booted, BOOT_ERROR its cause."""
        try:
            while chunk := os.read(self._notify_r, 65536):
                self._notify_buffer += chunk
        except BlockingIOError:
            pass
        messages, self._notify_buffer = decode_messages(self._notify_buffer)
        for kind, pid, text in messages:
            record = self.pool.get(pid)
            if record is None:
                continue
            if kind == READY:
                record.booted = True
                self.boot_backoff.succeeded()
            elif kind == BOOT_ERROR:
                record.boot_error = text

    def boot_failed(self, record: WorkerRecord, how: str) -> None:
        """Count a worker that exited before it was ready; after too many in a row, give up
        the reload (old workers serve on) or stop the pool."""
        cause = record.boot_error or f"worker {how}"
        backoff = self.boot_backoff
        backoff.failed(record, time.monotonic())
        serving = self.pool.serving()
        if backoff.exhausted and serving:  # a reload (HUP) failed
            self.generation = max(r.generation for r in serving)
            backoff.succeeded()
            log.error(
                "Reload failed: new workers failed to boot %d times in a row (%s); the %d workers "
                "already serving go on.",
                backoff.limit,
                cause,
                len(serving),
            )
            systemd.notify("READY=1", f"STATUS=Reload failed: {cause}")
        elif backoff.exhausted:
            self.halt_reason = f"Workers failed to boot {backoff.failures} times in a row: {cause}"
            log.error("%s; stopping.", self.halt_reason)
            self.stop(StopMode.FAST)
        else:
            delay = backoff.next_attempt() - time.monotonic()
            log.warning("Worker %d failed to boot (%s); retrying in %.1f s", record.number, cause, delay)

    def announce_ready(self) -> None:
        """Once every worker of the current generation is ready: tell the service manager
        (READY=1), and after a USR2 upgrade, stop the old master (TERM)."""
        if self.announced_generation == self.generation:
            return
        if len(self.pool.ready_numbers(self.generation, serving=True)) < self.size:
            return
        self.announced_generation = self.generation
        status = f"STATUS=Serving with {self.size} workers"
        if self.generation:
            log.info("Reload complete: %d new workers are serving.", self.size)
        if self.upgrade_from:
            log.info("Upgrade: the pool is ready; stopping the old master (pid %d).", self.upgrade_from)
            systemd.notify(f"MAINPID={os.getpid()}", "READY=1", status)
            _kill(self.upgrade_from, signal.SIGTERM)
            self.upgrade_from = 0
        else:
            systemd.notify("READY=1", status)

    # -- stopping ----------------------------------------------------------------------------

    def stop_pool(self) -> None:
        """Stop every worker per the stop mode, wait for them, SIGKILL the late ones."""
        fast = self.stop_mode is StopMode.FAST
        self.stop_all(fast)
        while self.pool:
            self.dispatch_signals()
            if self.stop_mode is StopMode.FAST and not fast:
                fast = True
                self.stop_all(True)
            self.maintain()
            if self.pool:
                self.wait(self.timeout())

    def stop_all(self, fast: bool) -> None:
        """Signal every worker to stop: QUIT (fast) or TERM (graceful, once per worker)."""
        for record in self.pool:
            if fast:
                self.stop_worker(record, signal.SIGQUIT, FAST_STOP_TIMEOUT)
            elif not record.stopping:
                self.stop_worker(record, signal.SIGTERM, self.server.graceful_timeout)

    def close(self) -> None:
        """Release the master's descriptors and the scoreboard (the pool must be stopped)."""
        self.scoreboard.close()
        if self.reuseport is not None:
            self.reuseport.close()
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
