"""What the master does on a signal or a control command: each only changes the state the
master's loop converges to (the pool's size, its generation, the stop mode).

:class:`MasterCommands` is the part of :class:`~prefork.master.Master` that the signal handlers'
records and the control socket's commands reach: :meth:`~MasterCommands.dispatch_signals`
calls ``handle_<signal>`` for each signal recorded, and :meth:`~MasterCommands.command` acts
on a control command (a resize at once, the others queued as the signal they stand for, so a
``prefork ctl reload`` is exactly a HUP). The loop and the pool's supervision are in
:mod:`prefork.master`.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from prefork import systemd, upgrade
from prefork.config.reload import reloading_settings
from prefork.contract import pool_servers
from prefork.edge import setup_edge
from prefork.errors import PreforkError
from prefork.logs import reopen_log_files
from prefork.signals import SIGNALS, SignalQueue

if TYPE_CHECKING:
    from prefork.contract import PoolServer
    from prefork.control import Command
    from prefork.events import MasterEvents
    from prefork.observer import Observer
    from prefork.pool import Pool
    from prefork.scaling import PoolScaler
    from prefork.scoreboard import Scoreboard
    from prefork.spawn import Spawner
    from prefork.watchdog import Watchdog

log = logging.getLogger("prefork")

#: The control socket's commands that act as a signal does (stop: TERM, or INT when fast).
COMMAND_SIGNALS = {
    "reload": signal.SIGHUP,
    "stop": signal.SIGTERM,
    "upgrade": signal.SIGUSR2,
    "reopen": signal.SIGUSR1,
}


class StopMode(enum.Enum):
    """How the pool is being stopped."""

    GRACEFUL = "graceful"  # TERM to workers: finish the request in progress, then exit
    FAST = "fast"  # QUIT to workers: exit now


class MasterCommands:
    """The master's reactions to signals and control commands (a base class of
    :class:`~prefork.master.Master`, which sets the attributes declared here). Runs in the
    master."""

    server: PoolServer
    size: int
    scaler: PoolScaler | None
    generation: int
    pool: Pool
    scoreboard: Scoreboard
    spawner: Spawner
    events: MasterEvents
    signals: SignalQueue
    upgrade: upgrade.Upgrade
    stop_mode: StopMode | None
    stop_at: float
    signalled_stop: bool
    observer: Observer
    watchdog: Watchdog

    def dispatch_signals(self) -> None:
        """Act on the recorded signals, in order, with their ``handle_<name>`` methods."""
        pending = self.signals.pending
        while pending:
            getattr(self, "handle_" + SIGNALS[signal.Signals(pending.popleft())])()

    def handle_term(self) -> None:
        """TERM: graceful stop, after ``shutdown_delay`` seconds of serving on (a second TERM
        ends the delay); workers finish their request within graceful_timeout."""
        self.signalled_stop = True
        delay = self.server.shutdown_delay
        if delay and not self.stop_at:
            self.stop_at = time.monotonic() + delay
            log.info("Received SIGTERM, serving %g s more (shutdown_delay), then stopping gracefully.", delay)
            return
        log.info("Received SIGTERM, stopping gracefully (up to %g s).", self.server.graceful_timeout)
        self.stop(StopMode.GRACEFUL)

    def handle_int(self) -> None:
        """INT: fast stop; workers exit at once."""
        log.info("Received SIGINT, stopping now.")
        self.signalled_stop = True
        self.stop(StopMode.FAST)

    def handle_quit(self) -> None:
        """QUIT: fast stop, as INT."""
        log.info("Received SIGQUIT, stopping now.")
        self.signalled_stop = True
        self.stop(StopMode.FAST)

    def handle_hup(self) -> None:
        """HUP: graceful reload; each new worker starts, then the old one it replaces retires.
        The config file and the TLS certificate files are read again first
        (:mod:`prefork.config.reload`): when they cannot be used, the reload fails and the
        workers serve on as they were."""
        log.info("Received SIGHUP, reloading: new workers start, then the old ones retire.")
        try:
            with reloading_settings(self):  # the config file read again, applied, or rolled back
                setup_edge(pool_servers(self.server))
        except PreforkError as exc:
            log.error("Reload failed: %s; the workers serve on.", exc)
            return
        self.generation += 1
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        systemd.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}", "STATUS=Reloading")

    def handle_ttin(self) -> None:
        """TTIN: one worker more (at most a quarter of the scoreboard's slots); on a dynamic
        pool, ``max_workers`` one more."""
        self.set_size(self.sized() + 1, "Received SIGTTIN")

    def handle_ttou(self) -> None:
        """TTOU: one worker fewer (the highest-numbered retires), never below 1; on a dynamic
        pool, ``max_workers`` one fewer (``min_workers`` too when they meet)."""
        self.set_size(self.sized() - 1, "Received SIGTTOU")

    def sized(self) -> int:
        """What the resize commands move: the size of a fixed pool, the ``max_workers`` of a
        dynamic pool."""
        return self.size if self.scaler is None else self.scaler.high

    def set_size(self, size: int, why: str) -> str:
        """A resize command (TTIN, TTOU, the control socket's): make a fixed pool ``size``
        workers (:meth:`resize`), or a dynamic pool's ``max_workers`` ``size`` (its
        ``min_workers`` lowered to it if over; workers beyond it retire). Logs ``why`` and
        what was done; returns "" when done, else why it stopped at a bound."""
        if self.scaler is None:
            return self.resize(size, why)
        size, error = self.within_limits(size)
        if size != self.scaler.high:
            low = min(self.scaler.low, size)
            change = "raising" if size > self.scaler.high else "lowering"
            log.info("%s, %s the dynamic pool's max_workers to %d (min_workers %d).", why, change, size, low)
            self.scaler.set_bounds(low, size)
            self.scoreboard.set_bounds(low, size)
            if self.size > size:
                self.resize(size, why)
        if error:
            log.info("%s, but %s.", why, error)
        return error

    def within_limits(self, size: int) -> tuple[int, str]:
        """``size`` brought within 1 .. a quarter of the scoreboard's slots, and why it had
        to be ("" when it was within)."""
        limit = self.scoreboard.capacity // 4
        bound = "minimum of 1 worker" if size < 1 else f"maximum of {limit} workers"
        return min(max(size, 1), limit), "" if 1 <= size <= limit else f"the pool is at its {bound}"

    def resize(self, size: int, why: str) -> str:
        """Make the pool ``size`` workers, within 1 .. a quarter of the scoreboard's slots
        (the workers numbered from ``size`` on retire), logging ``why`` and what was done.
        Returns "" when done, else why it stopped at a bound (and did what fits)."""
        size, error = self.within_limits(size)
        if size != self.size:
            if size < self.size and self.spawner.reuseport is not None:
                self.spawner.reuseport.close_from(size)  # the retiring workers' copies stay open
            change = "increasing" if size > self.size else "decreasing"
            log.info("%s, %s the pool to %d worker%s.", why, change, size, "" if size == 1 else "s")
            self.size = size
        if error:
            log.info("%s, but %s.", why, error)
        return error

    def command(self, command: Command) -> dict[str, Any]:
        """Act on a control socket ``command`` (not ``status``): a resize, or what a signal
        does (queued as that signal). Returns the reply's fields. Raises ValueError, having
        done nothing, for a command that would be ignored: anything but ``stop`` while the
        pool stops, an ``upgrade`` while one runs, a size out of 1 .. a quarter of the
        scoreboard's slots."""
        if self.stop_mode is not None and command.name != "stop":
            raise ValueError("the pool is stopping")
        if command.name == "upgrade" and self.upgrade.new_pid:
            raise ValueError(f"an upgrade is in progress (new master pid {self.upgrade.new_pid})")
        if command.name in ("workers", "add", "remove"):
            now = self.sized()
            change = {"workers": command.workers - now, "add": command.workers, "remove": -command.workers}
            size, limit = now + change[command.name], self.scoreboard.capacity // 4
            if not 1 <= size <= limit:
                raise ValueError(f"the pool can have 1 to {limit} workers; it has {now}")
            self.set_size(size, f"Control socket: {command.name}")
            if self.scaler is None:
                return {"workers": self.size}
            return {"workers": self.size, "min_workers": self.scaler.low, "max_workers": self.scaler.high}
        self.signals.pending.append(COMMAND_SIGNALS[command.name] if not command.fast else signal.SIGINT)
        return {}

    def handle_chld(self) -> None:
        """CHLD: only wakes the loop; ``service_actions()`` reaps and restarts."""

    def handle_usr1(self) -> None:
        """USR1: reopen log files, here and (forwarded) in every worker."""
        log.info("Received SIGUSR1, reopening log files.")
        reopen_log_files()
        if self.server.access is not None:
            self.server.access.reopen()
        self.observer.reopen_logs()
        for record in self.pool:
            _kill(record.pid, signal.SIGUSR1)

    def handle_usr2(self) -> None:
        """USR2: zero-downtime upgrade; a new master, started with our listening sockets,
        boots its pool, then stops this master (TERM). See :mod:`prefork.upgrade`."""
        if self.stop_mode is not None:  # its sockets may be closed already
            log.warning("Received SIGUSR2 while stopping; not upgrading.")
        else:
            self.upgrade.start([server.fileno() for server in pool_servers(self.server)])

    def stop(self, mode: StopMode) -> None:
        """Ask for the pool to stop; FAST overrides a GRACEFUL stop in progress."""
        if self.stop_mode is None and not self.upgrade.new_pid:  # else the new master is the service
            systemd.notify("STOPPING=1", "STATUS=Stopping")
        if self.stop_mode is None or mode is StopMode.FAST:
            self.stop_mode = mode

    def request_shutdown(self) -> None:
        """Stop gracefully, as TERM does, keeping the listening sockets open (the server may
        serve again). Thread-safe: called by ``server.shutdown()``."""
        self.stop(StopMode.GRACEFUL)
        self.events.wakeup()


def _kill(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
