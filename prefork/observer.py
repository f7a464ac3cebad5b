"""What the master shows of the pool: the control socket, the exporter process, the figures.

:class:`Observer` is the master's one object for being seen from outside. It keeps the
scoreboard's pool figures current (the pool's size and generation, the listen queue), folds a
reaped worker's counters and application metrics into the totals, serves the control socket
(:mod:`prefork.control`) from the master's own wait, and supervises the exporter: a small
process the master forks (while single-threaded, as a worker) to serve ``--metrics``, so a
slow or stuck scraper, or the work of rendering, never delays supervision. The exporter reads
the same shared memory as the master; when it exits it is forked again, after a delay
doubling from 1 s to 30 s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from prefork import metrics, metricsocket, runtime, stats
from prefork.contract import PoolServer
from prefork.control import Command, ControlServer
from prefork.errors import PreforkError
from prefork.events import MasterEvents
from prefork.figures import WorkerStats
from prefork.logs import flush_std_streams
from prefork.messages import describe_exit
from prefork.metricsregion import MetricsRegion
from prefork.pool import WorkerRecord
from prefork.scoreboard import Scoreboard
from prefork.signals import SIGNALS
from prefork.spawn import freeze_gc, resume_gc

log = logging.getLogger("prefork")

#: Seconds between the exporter's exit and its first restart; doubled up to the maximum.
EXPORTER_RESTART = (1.0, 30.0)


class Observer:
    """The master's control socket, exporter and pool figures for ``server``'s pool named
    ``name``, over ``scoreboard``, waiting with ``events``. Created in the master before it
    forks (the application metrics region is created here, so workers inherit it). Raises
    ValueError or OSError when the ``metrics`` address is bad or cannot be bound.
    """

    def __init__(self, server: PoolServer, name: str, scoreboard: Scoreboard, events: MasterEvents) -> None:
        self.server = server
        self.name = name
        self.scoreboard = scoreboard
        self.events = events
        #: The application metrics of :mod:`prefork.metrics`, one area per scoreboard slot.
        self.app_metrics = MetricsRegion(scoreboard.capacity)
        self.control: ControlServer | None = None
        self.metrics_socket: socket.socket | None = None
        self.exporter_pid = 0
        #: Connections in the listen queue at the last tick (None: unknown).
        self.queued: int | None = None
        self._exporter_delay = EXPORTER_RESTART[0]
        self._exporter_at = 0.0  # monotonic time of the next exporter fork (0: none due)
        self._exporter_forked_at = 0.0
        self.info: dict[str, Any] = {
            "name": name,
            "worker_class": server.worker_class,
            "control_socket": None,
            "metrics_address": None,
        }

    # -- in the master -----------------------------------------------------------------------

    def start(
        self,
        act: Callable[[Command], dict[str, Any]],
        listeners: Callable[[], Iterable[socket.socket]],
        close_master_fds: Callable[[], None],
        takeover: bool = False,
    ) -> None:
        """Bind the metrics address (the exporter is forked by :meth:`tick`), open the control
        socket (answering ``status`` here, the other commands with ``act(command)``).
        ``listeners()`` gives the sockets whose listen queue is sampled (the servers' and,
        with ``accept = reuseport``, each worker's copy as they are made), closed in the
        exporter with the rest of the master's descriptors (``close_master_fds()``);
        ``takeover``: this is the new master of a USR2 upgrade (see
        :func:`~prefork.metricsocket.bind_metrics`). Raises
        :class:`~prefork.errors.PreforkError` when an address set explicitly (``metrics``,
        ``control_socket``) cannot be used; the default control socket failing is only
        logged."""
        self.listeners: Callable[[], list[socket.socket]] = lambda: list(
            {id(sock): sock for sock in listeners()}.values()
        )
        self.act = act
        self.close_master_fds = close_master_fds
        if self.server.metrics:
            try:
                self.metrics_socket = metricsocket.bind_metrics(self.server.metrics, takeover=takeover)
            except (ValueError, OSError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                raise PreforkError(f"cannot serve metrics at {self.server.metrics}: {reason}") from None
            self.info["metrics_address"] = metricsocket.metrics_url(self.metrics_socket)
            log.info("Metrics at %s (/metrics, /status)", self.info["metrics_address"])
            self._exporter_at = time.monotonic()
        path = self.server.control_socket
        if path != "off":
            try:
                path = path or runtime.default_socket_path(self.name, os.getpid())
                hooks = (self.events.add, self.events.change, self.events.remove)
                explicit = bool(self.server.control_socket)  # the default path has our pid in it
                self.control = ControlServer(path, self.answer, *hooks, takeover=takeover and explicit)
            except PreforkError as exc:
                if self.server.control_socket:
                    raise
                log.warning("No control socket: %s", exc)
            else:
                self.info["control_socket"] = path
                log.info("Control socket at %s (prefork status, prefork ctl)", path)

    def answer(self, command: Command) -> dict[str, Any]:
        """The reply to a control ``command``: the snapshot for ``status``, else what the
        master's ``act`` says."""
        if command.name == "status":
            return {"status": self.snapshot()}
        return self.act(command)

    def snapshot(self) -> dict[str, Any]:
        """The pool's snapshot (:func:`prefork.stats.snapshot`). Runs in the master or the
        exporter."""
        return stats.snapshot(self.scoreboard, self.info)

    def tick(self, size: int, generation: int, stopping: bool = False) -> None:
        """Once per turn of the master's loop: record the pool's ``size`` and ``generation``
        and the listen queue, time out control clients, reap the exporter and (unless
        ``stopping``) fork it again."""
        now = time.monotonic()
        self.scoreboard.set_pool(os.getpid(), generation, size, self._started_at())
        length, limit = stats.listen_queue(self.listeners())
        self.queued = length
        self.scoreboard.set_listen_queue(length, limit)
        if self.control is not None:
            self.control.expire(now)
        if self.exporter_pid:
            self._reap_exporter(now, stopping)
        if (
            self.metrics_socket is not None
            and not (self.exporter_pid or stopping)
            and now >= self._exporter_at
        ):
            self._fork_exporter()

    def deadline(self) -> float:
        """The monotonic time by which :meth:`tick` has something to do (inf: nothing)."""
        soonest = self.control.next_deadline() if self.control is not None else float("inf")
        if self.metrics_socket is not None and not self.exporter_pid:
            soonest = min(soonest, self._exporter_at)
        return soonest

    def retire(self, record: WorkerRecord, status: int) -> WorkerStats:
        """Account for a reaped worker (its ``record``, its wait ``status``): fold the counters
        and application metrics of its slot into the totals, free the slot, count its exit
        (a boot failure, or a restart by cause, :func:`prefork.stats.exit_cause`); return
        what the slot held."""
        held = self.scoreboard.retire(record.slot, self.app_metrics.fold)
        if record.failed_to_boot():
            self.scoreboard.count_boot_failure()
        elif cause := stats.exit_cause(record, os.waitstatus_to_exitcode(status), held):
            self.scoreboard.count_restart(cause)
        return held

    def _started_at(self) -> float:
        started: float = self.info.setdefault("started_at", time.time())
        return started

    def _reap_exporter(self, now: float, stopping: bool) -> None:
        try:
            pid, status = os.waitpid(self.exporter_pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.exporter_pid, 0
        if pid:
            self.exporter_pid = 0
            if stopping:  # e.g. a TERM sent to the whole process group
                return
            if now - self._exporter_forked_at > EXPORTER_RESTART[1]:  # it had served a while
                self._exporter_delay = EXPORTER_RESTART[0]
            how = describe_exit(os.waitstatus_to_exitcode(status))
            log.warning(
                "The metrics exporter (pid %d) %s; restarting it in %g s", pid, how, self._exporter_delay
            )
            self._exporter_at = now + self._exporter_delay
            self._exporter_delay = min(self._exporter_delay * 2, EXPORTER_RESTART[1])

    def _fork_exporter(self) -> None:
        flush_std_streams()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # unblocked by the exporter
        if self.server.gc_freeze:  # as before a worker's fork: often the first one
            freeze_gc()
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            log.error("Cannot fork the metrics exporter: %s", exc.strerror or exc)
            self._exporter_at = time.monotonic() + self._exporter_delay
            return
        if pid == 0:
            self._run_exporter()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        resume_gc()
        self.exporter_pid, self._exporter_forked_at = pid, time.monotonic()
        log.debug("Metrics exporter started (pid %d)", pid)

    def _run_exporter(self) -> None:
        """The exporter process: never returns."""
        status = 1
        try:
            import setproctitle

            setproctitle.setproctitle(f"prefork: metrics [{self.name}]")
            assert self.metrics_socket is not None
            for listener in self.listeners():
                listener.close()  # a new master can bind the address once this one is gone
            if self.control is not None:
                self.control.close_in_child()
            if self.server.access is not None:
                self.server.access.close()  # its copy: the exporter writes no access log
            self.close_master_fds()
            region, scoreboard = self.app_metrics, self.scoreboard
            from prefork import exporter

            def families() -> list[Any]:
                return region.collect({s.slot: s.number for s in scoreboard.slots()})

            exporter.serve_exporter(
                self.metrics_socket,
                lambda: stats.add_process_info(self.snapshot()),
                families,
                self.events.master_r,
                sample=self.snapshot,  # the status page's history: no process info
            )
            status = 0
        except BaseException:
            log.exception("The metrics exporter failed")
        finally:
            flush_std_streams()
            os._exit(status)

    def prepare_worker(self, slot: int) -> None:
        """In a worker just forked for ``slot``: close the control socket and the metrics
        socket, and send the application's metrics to the slot's area
        (:func:`prefork.metrics.attach`)."""
        if self.control is not None:
            self.control.close_in_child()
        if self.metrics_socket is not None:
            self.metrics_socket.close()
        metrics.attach(self.app_metrics, slot)

    def reopen_logs(self) -> None:
        """Forward USR1 to the exporter, which reopens its log files. Runs in the master."""
        if self.exporter_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.exporter_pid, signal.SIGUSR1)

    def stop_exporter(self) -> None:
        """Stop the exporter (SIGTERM, then SIGKILL after 1 s) and close the metrics socket:
        at once when a new master of a USR2 upgrade took over (else scrapes would alternate
        between the two masters' exporters until this one's pool has stopped), or at
        :meth:`close`. Runs in the master."""
        if self.exporter_pid:
            _stop_child(self.exporter_pid)
            self.exporter_pid = 0
        if self.metrics_socket is not None:
            metricsocket.close_metrics(self.metrics_socket)
            self.metrics_socket = None

    def close(self) -> None:
        """Stop the exporter, close the sockets and the application metrics region. Runs in
        the master, once the pool is stopped."""
        self.stop_exporter()
        if self.control is not None:
            self.control.close()
            self.control = None
        self.app_metrics.close()


def _stop_child(pid: int) -> None:
    """SIGTERM child ``pid``, wait up to 1 s, then SIGKILL it and reap it."""
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
