"""The master: the loop, signals, spawning, reaping and retiring workers, readiness, stopping.

The master never runs handler code. Its loop (:meth:`Master.run`) is: ``service_actions()``
(reap, fork what is missing, retire what is in excess, kill what is late) -> wait on one
selector (the signal wake-up fd, the workers' notification pipe and, on Linux, a pidfd per
worker) -> dispatch the signals the handlers recorded. Signal handlers only record the signal;
``signal.set_wakeup_fd`` wakes the loop. Stop, reload (HUP) and resizing (TTIN/TTOU) only change
the state the loop converges to: the wanted number of workers, the generation, the stop mode.

Each method here changes who is in the pool or reacts to an event. The bookkeeping is in
:mod:`prefork.pool` (records), :mod:`prefork.watchdog` (timeouts, memory),
:mod:`prefork.upgrade` (USR2), :mod:`prefork.events` (the wait) and :mod:`prefork.process`.

Only our own children are reaped, each by pid (never ``waitpid(-1)``), so other children of
the process are left to their owners.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import time

from prefork import sockets, systemd, upgrade
from prefork.commands import MasterCommands, StopMode, _kill
from prefork.config import pool_bounds, usable_cpus
from prefork.contract import PoolServer, pool_servers
from prefork.errors import WorkerBootError
from prefork.events import MasterEvents, Message
from prefork.figures import WorkerState
from prefork.messages import BOOT_ERROR, READY, describe_exit
from prefork.observer import Observer
from prefork.pool import BootBackoff, BootVerdict, Pool, WorkerRecord, judge_boot_failure
from prefork.process import MasterProcess
from prefork.scaling import PoolLoad, PoolScaler
from prefork.scoreboard import Scoreboard
from prefork.signals import SignalQueue
from prefork.spawn import Spawner
from prefork.watchdog import Watchdog

log = logging.getLogger("prefork")

#: Seconds workers get to exit on a fast stop (INT, QUIT) before SIGKILL.
FAST_STOP_TIMEOUT = 1.0
#: Seconds between SIGABRT (request timeout; faulthandler dumps the stack) and SIGKILL.
ABORT_GRACE = 0.5


class Master(MasterCommands):
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
        #: The pool size the loop converges to (the ``workers`` setting, moved by TTIN/TTOU;
        #: a dynamic pool's, by its scaler within its bounds).
        self.size, low, high = pool_bounds(
            server.workers or usable_cpus(), server.min_workers, server.max_workers
        )
        #: The rules of a dynamic pool (``max_workers`` set); None for a fixed pool.
        self.scaler = (
            PoolScaler(low, high, queue_only=server.worker_class == "thread") if server.max_workers else None
        )
        self.name = server.proc_name or type(server).__name__
        self.generation = 0
        #: The master's records of its workers.
        self.pool = Pool()
        self.boot_backoff = BootBackoff()
        self.stop_mode: StopMode | None = None
        self.halt_reason: str | None = None
        self.announced_generation = -1  # the generation whose readiness was announced
        self.stop_at = 0.0  # monotonic time at which a TERM's shutdown_delay ends
        self.degraded = False  # replacements keep failing to boot while others serve (said once)
        self.signalled_stop = False  # TERM, INT, QUIT: the listening sockets close at the stop
        #: USR2: the new master we started, the old master that started us.
        self.upgrade = upgrade.Upgrade()
        #: Per-worker state and counters in shared memory; workers inherit it.
        self.scoreboard = Scoreboard.for_pool(max(self.size, high), server.scoreboard_file)
        if self.scaler is not None:
            self.scoreboard.set_bounds(low, high)
        self.watchdog = Watchdog(server.request_timeout, server.max_worker_memory, self.scoreboard.read)
        #: What the loop waits for: signals, wake-ups, worker messages and exits.
        self.events = MasterEvents()
        self.signals = SignalQueue(self.events.wakeup_fd)
        self.spawner = Spawner(server, self.name, self.scoreboard, self.events, self.pool)
        self.sd_watchdog = systemd.Watchdog()  # pinged from the loop when WATCHDOG_USEC is set
        #: The control socket, the metrics exporter, the pool's figures.
        self.observer = Observer(server, self.name, self.scoreboard, self.events)
        self.spawner.in_child = self.observer.prepare_worker

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        """Fork the pool and supervise it until a stop, then stop the pool. Runs in the master.
        Raises :class:`~prefork.errors.WorkerBootError` when workers failed to boot
        ``MAX_BOOT_FAILURES`` times in a row (the pool is stopped first), and
        :class:`~prefork.errors.PreforkError` when the pid file cannot be written."""
        servers = pool_servers(self.server)
        process = MasterProcess(servers, self.name, self.scoreboard, takeover_from=self.upgrade.old_pid)
        started = False
        self.signals.install()
        try:
            process.start(self.size)
            started = True
            if self.server.accept == "reuseport":
                self.spawner.reuseport = sockets.ReuseportSockets.create(servers)
            reuseport = self.spawner.reuseport

            def listeners() -> list[socket.socket]:  # and each worker's copy, made as it is forked
                return [server.socket for server in servers] + (reuseport.copies() if reuseport else [])

            close_fds = lambda: self.spawner.close_in_worker(None)  # noqa: E731
            self.observer.start(self.command, listeners, close_fds, takeover=bool(self.upgrade.old_pid))
            while self.stop_mode is None:
                self.server.service_actions()
                self.wait(self.timeout())
                self.dispatch_signals()
            if self.signalled_stop:  # once the workers' copies close, connections are refused
                process.close_listeners(self.spawner.reuseport)
            if self.upgrade.new_pid:  # the new master's exporter serves the metrics now
                self.observer.stop_exporter()
            self.stop_pool()
        finally:
            self.observer.close()
            process.stop(restore_sockets=not self.upgrade.new_pid)
            self.signals.restore()
            self.close()
            if started:
                log.info("Master (pid %d): the pool is stopped.", os.getpid())
        if self.halt_reason is not None:
            raise WorkerBootError(self.halt_reason)

    def maintain(self) -> None:
        """Reap exited workers, fork missing ones, retire excess ones, stop those the
        watchdog names, SIGKILL late ones. Called by the server's ``service_actions()``.
        Runs in the master."""
        self.observer.tick(self.size, self.generation, stopping=self.stop_mode is not None)
        self.reap()
        if self.stop_at and self.stop_mode is None and time.monotonic() >= self.stop_at:
            log.info("shutdown_delay over: stopping gracefully (up to %g s).", self.server.graceful_timeout)
            self.stop(StopMode.GRACEFUL)
        if self.stop_mode is None:
            self.scale()
            self.spawn_missing()
            self.retire_excess()
            self.announce_ready()
        self.enforce_limits()
        self.kill_late()

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a signal, a worker message or a worker's exit;
        first ping systemd's watchdog if due."""
        self.sd_watchdog.ping(time.monotonic())
        self.handle_messages(self.events.wait(timeout))

    def timeout(self) -> float:
        """Seconds until the loop has something to do at the latest (<= poll_interval)."""
        deadlines = [*self.pool.stop_deadlines(), *self.watchdog.deadlines(self.pool)]
        deadlines += [self.sd_watchdog.next_at, self.observer.deadline()]
        deadlines += [self.scaler.next_check] if self.scaler is not None else []
        if self.stop_mode is None:
            deadlines += [b.next_attempt() for b in (self.boot_backoff, self.spawner.backoff) if b.failures]
            deadlines += [self.stop_at] if self.stop_at else []
        soonest = min(deadlines, default=math.inf) - time.monotonic()
        return max(0.0, min(soonest, self.poll_interval))

    # -- who is in the pool ------------------------------------------------------------------

    def spawn_missing(self) -> None:
        """Fork a worker for each number 0..size-1 that has none of this generation (unless
        waiting out the boot backoff). When fork() fails (a pid limit, no memory), the pool
        serves on with the workers it has and forking is tried again after a delay doubling
        from 0.1 s to 5 s; the first failure and the recovery are logged."""
        now = time.monotonic()
        if self.boot_backoff.waiting(now) or self.spawner.backoff.waiting(now):
            return
        for number in self.pool.missing(self.size, self.generation):
            record = self.spawner.spawn(number, self.generation, serving=len(self.pool.serving()))
            if record is None:  # fork() failed: logged, retried later
                return
            self.pool.add(record)

    def scale(self) -> None:
        """A dynamic pool: when its check is due, grow or shrink it as :mod:`prefork.scaling`
        says (logged at INFO); a worker that retires finishes its request."""
        now = time.monotonic()
        if self.scaler is None or now < self.scaler.next_check:
            return
        states = self.scoreboard.state
        idle = sum(1 for r in self.pool.serving() if states(r.slot) is WorkerState.IDLE)
        # Booting, or not forked yet (a boot or fork() backoff): capacity coming, not a shortage.
        starting = sum(1 for r in self.pool if not r.booted and not r.stopping)
        starting += len(self.pool.missing(self.size, self.generation))
        load = PoolLoad(idle, starting, self.observer.queued)
        size, why = self.scaler.decide(now, self.size, load)
        if why:
            self.resize(size, f"Dynamic pool ({why})")

    def retire_excess(self) -> None:
        """Gracefully stop workers of an old generation once their replacement is ready
        (the rolling reload of HUP), and workers numbered beyond the pool size (TTOU)."""
        for record in self.pool.to_retire(self.size, self.generation):
            cause = "reload" if record.generation != self.generation else "resize"
            self.stop_worker(record, signal.SIGTERM, self.server.graceful_timeout, cause)

    def stop_worker(
        self, record: WorkerRecord, sig: signal.Signals, timeout: float, cause: str | None = None
    ) -> None:
        """Send ``sig`` to a worker; SIGKILL it if it still runs ``timeout`` seconds later.
        ``cause``: why (see :func:`prefork.stats.exit_cause`; None: the pool stops)."""
        log.debug("Stopping worker %d (pid %d) with %s", record.number, record.pid, sig.name)
        _kill(record.pid, sig)
        record.stop(time.monotonic() + timeout, cause)

    def kill_late(self) -> None:
        """SIGKILL stopping workers whose deadline has passed."""
        for record in self.pool.late(time.monotonic()):
            log.warning("Worker %d (pid %d) did not stop in time; killing it", record.number, record.pid)
            _kill(record.pid, signal.SIGKILL)
            record.killed = True

    def enforce_limits(self) -> None:
        """Stop the workers the watchdog names. Over ``request_timeout`` (busy on one
        request, or booting): SIGABRT, so faulthandler dumps its stack, and SIGKILL
        ``ABORT_GRACE`` seconds later if still alive. Over ``max_worker_memory``: a graceful
        stop (it finishes its request). Idle workers are never killed."""
        now = time.monotonic()
        for record, reason in self.watchdog.timed_out(self.pool, now):
            if not record.booted:
                record.boot_error = f"worker {reason} (request_timeout)"
            number, pid = record.number, record.pid
            log.error("Worker %d (pid %d) %s; aborting it (SIGABRT dumps its stack)", number, pid, reason)
            record.aborted = True
            self.stop_worker(record, signal.SIGABRT, ABORT_GRACE)
        for record, reason in self.watchdog.too_large(self.pool, now):
            log.warning("Worker %d (pid %d) %s; recycling it", record.number, record.pid, reason)
            self.stop_worker(record, signal.SIGTERM, self.server.graceful_timeout, "memory")

    # -- events ------------------------------------------------------------------------------

    def reap(self) -> None:
        """Collect our exited workers (and a new master of USR2 that exited), by pid: log how
        each ended and account for boot failures."""
        self.upgrade.reap()
        for record in self.pool:
            try:
                pid, status = os.waitpid(record.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else (e.g. SIGCHLD set to SIG_IGN)
                pid, status = record.pid, 0
            if pid:
                # What the worker wrote before it exited (READY, BOOT_ERROR) is in the pipe now.
                self.handle_messages(self.events.read_messages())
                self.pool.remove(record)  # its record, its scoreboard slot (counts folded), its pidfd
                stats = self.observer.retire(record, status)
                self.events.unwatch(record.pidfd)
                record.pidfd = -1
                code = os.waitstatus_to_exitcode(status)
                if record.failed_to_boot():
                    self.boot_failed(record, describe_exit(code))
                else:
                    log_exit(record, code, stats.state, stats.requests)

    def handle_messages(self, messages: list[Message]) -> None:
        """Act on the workers' messages: READY marks a worker booted, BOOT_ERROR its cause."""
        for kind, pid, text in messages:
            record = self.pool.get(pid)
            if record is None:
                continue
            if kind == READY:
                record.booted, self.degraded = True, False
                self.boot_backoff.succeeded()
            elif kind == BOOT_ERROR:
                record.boot_error = text

    def boot_failed(self, record: WorkerRecord, how: str) -> None:
        """Count a worker that exited before it was ready; after too many in a row, give up
        the reload (old workers serve on) or stop the pool."""
        if self.halt_reason is not None:  # another worker of the round that failed: said once
            return
        cause, backoff, serving = record.boot_error or f"worker {how}", self.boot_backoff, self.pool.serving()
        backoff.failed(record, time.monotonic())
        verdict = judge_boot_failure(record, serving, backoff)
        if verdict is BootVerdict.RELOAD_FAILED:
            self.generation = max(r.generation for r in serving)
            backoff.succeeded()
            what = "Reload failed: new workers failed to boot %d times in a row (%s); %d workers serve on."
            log.error(what, backoff.limit, cause, len(serving))
            systemd.notify("READY=1", f"STATUS=Reload failed: {cause}")
        elif verdict is BootVerdict.HALT:
            self.halt_reason = f"Workers failed to boot {backoff.failures} times in a row: {cause}"
            log.error("%s; stopping.", self.halt_reason)
            self.stop(StopMode.FAST)
        elif verdict is BootVerdict.RETRY or not self.degraded:
            self.degraded = verdict is BootVerdict.DEGRADED
            delay = backoff.next_attempt() - time.monotonic()
            degraded = f"; the pool is degraded: {len(serving)} workers serve on" if self.degraded else ""
            log.warning(
                "Worker %d failed to boot (%s)%s; retrying in %.1f s", record.number, cause, degraded, delay
            )

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
        if not self.upgrade.take_over(status):
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
        self.scoreboard.set_pool_stopping()  # a worker TERMed then serves what is queued
        for record in self.pool:
            if fast:
                self.stop_worker(record, signal.SIGQUIT, FAST_STOP_TIMEOUT)
            elif not record.stopping:
                self.stop_worker(record, signal.SIGTERM, self.server.graceful_timeout)

    def close(self) -> None:
        """Release the master's descriptors and the scoreboard (the pool must be stopped)."""
        self.scoreboard.close()
        if self.spawner.reuseport is not None:
            self.spawner.reuseport.close()
        self.events.close()


def log_exit(record: WorkerRecord, code: int, state: WorkerState, requests: int) -> None:
    """Log a reaped worker's exit (not a boot failure): ``code`` from
    ``waitstatus_to_exitcode``, its scoreboard ``state`` and ``requests`` at the end."""
    number, pid, how = record.number, record.pid, describe_exit(code)
    if record.aborted:
        log.warning("Worker %d (pid %d) %s after the request timeout; replacing it", number, pid, how)
    elif record.stopping:
        log.debug("Worker %d (pid %d) stopped (%s)", number, pid, how)
    elif code == 0 and state is WorkerState.STOPPING:
        log.info("Worker %d (pid %d) recycled after %d requests", number, pid, requests)
    else:
        state_was = f" (its slot said {state.name})" if code == 0 else ""  # exited 0 unasked
        log.warning("Worker %d (pid %d) %s%s; replacing it", number, pid, how, state_was)
