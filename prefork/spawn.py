"""Forking a worker: the master's side of a worker's birth.

The master decides which workers to fork (:meth:`Master.spawn_missing
<prefork.master.Master.spawn_missing>`); :class:`Spawner` forks one: a scoreboard slot, the
``max_requests`` jitter, the fork itself, the child's entry (it drops the master's
descriptors, then builds and runs the worker object in
:func:`run_forked`, which never returns) and, in the master, the
record of the new process and the pidfd that wakes the loop when it exits.

With the ``gc_freeze`` setting (the default) the master follows CPython's advice for fork
without exec (the ``gc`` module's docs): automatic collection is paused while ``--preload``
imports TARGET (:func:`pause_gc`: no holes freed in pages the workers will share), everything
is frozen right before the first fork (:func:`freeze_gc`: a worker's collections never write
to the objects it shares with the master), and collection resumes after that fork in the
master and in the child.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable
from typing import NoReturn

from prefork.contract import PoolServer
from prefork.events import MasterEvents
from prefork.logs import flush_std_streams
from prefork.messages import WORKER_EXIT_ERROR
from prefork.pool import BootBackoff, WorkerRecord
from prefork.scoreboard import Scoreboard
from prefork.signals import SIGNALS
from prefork.sockets import ReuseportSockets
from prefork.workers import WORKER_CLASSES, Worker

log = logging.getLogger("prefork")

#: The automatic collection thresholds :func:`pause_gc` set aside (None: not paused).
_gc_thresholds: tuple[int, int, int] | None = None
#: The master froze its objects before a fork already (:func:`freeze_gc` freezes once).
_gc_frozen = False


def pause_gc() -> None:
    """Pause automatic garbage collection until the first fork, for the ``gc_freeze``
    setting: called before ``--preload`` imports TARGET. The first threshold is set to 0
    (which stops automatic collections) rather than calling ``gc.disable()``, so that a
    ``gc.disable()`` of the application's own, at import, is kept. Runs in the master."""
    global _gc_thresholds
    thresholds = gc.get_threshold()
    if gc.isenabled() and thresholds[0]:
        _gc_thresholds = thresholds
        gc.set_threshold(0, *thresholds[1:])


def freeze_gc() -> None:
    """Move every object the collector tracks to its permanent generation (``gc.freeze()``),
    once, right before the master's first fork (a worker's or the exporter's): what the
    master holds then (with ``--preload``, the application) is never looked at by a
    collection again, in the master or in any process forked later, replacements and the
    workers of a HUP included. Freezing again before later forks would pin the master's
    own garbage made meanwhile. Runs in the master, for the ``gc_freeze`` setting."""
    global _gc_frozen
    if not _gc_frozen:
        gc.freeze()
        _gc_frozen = True


def resume_gc() -> None:
    """Resume automatic collections if :func:`pause_gc` paused them (unless the thresholds
    were changed since). Runs right after a fork, in the master and in the child."""
    global _gc_thresholds
    if _gc_thresholds is not None:
        if gc.get_threshold()[0] == 0:
            gc.set_threshold(*_gc_thresholds)
        _gc_thresholds = None


class Spawner:
    """Forks the workers of ``server``'s pool, titled with ``name``, sharing ``scoreboard``
    and reporting through ``events``. ``records`` are the master's records of the live
    workers (their pidfds are closed in each new worker). Used by the master, in the master.
    """

    def __init__(
        self,
        server: PoolServer,
        name: str,
        scoreboard: Scoreboard,
        events: MasterEvents,
        records: Iterable[WorkerRecord],
    ) -> None:
        self.server = server
        #: The worker class of the ``worker_class`` setting.
        self.worker_class: type[Worker] = WORKER_CLASSES[server.worker_class]
        self.name = name
        self.scoreboard = scoreboard
        self.events = events
        self.records = records
        #: fork() failures in a row (no limit: the pool serves on with the workers it has).
        self.backoff = BootBackoff(limit=sys.maxsize)
        #: The per-worker sockets of ``accept = "reuseport"`` (set by the master), or None.
        self.reuseport: ReuseportSockets | None = None
        #: Called in each new worker with its slot, after the master's descriptors are closed
        #: (set by the master: its observer's, which closes the control socket).
        self.in_child: Callable[[int], None] | None = None

    def spawn(self, number: int, generation: int, serving: int = 0) -> WorkerRecord | None:
        """Fork worker ``number`` of ``generation``; return the master's record of it (its
        pid and pidfd set), or None when fork() failed (EAGAIN under a pid limit, ENOMEM):
        that is logged (the first failure of a streak, then every 10th, saying that
        ``serving`` workers serve on), and :attr:`backoff` says when to try again (a delay
        doubling from 0.1 s to 5 s). Raises RuntimeError when the scoreboard has no free slot
        (the master keeps the pool within a quarter of the slots, so it cannot happen).

        The worker object is built in the child, after the fork; the child runs it and
        leaves with ``os._exit``: it never returns here.
        """
        slot = self.scoreboard.assign(number, generation)
        if slot is None:
            raise RuntimeError("no free scoreboard slot")
        max_requests = self.server.max_requests
        if max_requests:
            import random  # here: importing it costs a reseed in every forked worker

            max_requests += random.randint(0, self.server.max_requests_jitter)
        flush_std_streams()  # else the child inherits unwritten output
        reuseport = self.reuseport
        own = reuseport.for_worker(number) if reuseport is not None else None
        record = WorkerRecord(number, generation, slot, spawned_at=time.monotonic())
        record.max_requests = max_requests
        events = self.events
        # Signals wait (blocked) from the fork until the worker's own handlers are installed
        # (Worker.init_signals unblocks them): else a TERM to a booting worker runs the
        # master's handler in it, and is lost until graceful_timeout SIGKILLs the worker.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # every one the master handles
        if self.server.gc_freeze:
            freeze_gc()
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            self.scoreboard.release(slot)
            self.fork_failed(number, exc, serving)
            return None
        if pid:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            resume_gc()
        else:  # the worker: never returns
            run_forked(
                number,
                lambda: self.close_in_worker(own, slot),
                lambda: self.worker_class(
                    self.server,
                    number,
                    generation,
                    self.name,
                    events.notify_w,
                    events.master_r,
                    self.scoreboard,
                    slot,
                    max_requests,
                ),
            )
        record.pid = pid
        record.pidfd = events.watch(pid)
        self.scoreboard.set_pid(slot, pid)
        log.debug("Booting worker %d (pid %d, generation %d)", number, pid, generation)
        if self.backoff.failures:
            log.info("fork() works again after %d failures.", self.backoff.failures)
            self.backoff.succeeded()
        return record

    def fork_failed(self, number: int, error: OSError, serving: int) -> None:
        """Count a failed fork() of worker ``number`` and log it: the first of a streak,
        then every 10th (``serving`` workers go on serving meanwhile)."""
        backoff = self.backoff
        backoff.failed_now(time.monotonic())
        if backoff.failures == 1 or backoff.failures % 10 == 0:
            log.error(
                "Cannot fork worker %d (%s); %d workers serve on, retrying in %.1f s (%d failures so far)",
                number,
                error.strerror or error,
                serving,
                backoff.next_attempt() - time.monotonic(),
                backoff.failures,
            )

    def close_in_worker(self, own: list[socket.socket] | None, slot: int | None = None) -> None:
        """In a freshly forked worker (or the exporter: no ``slot``), drop what belongs to the
        master: its signal wake-up fd, its descriptors (:meth:`MasterEvents.close_in_worker
        <prefork.events.MasterEvents.close_in_worker>`) and the other workers' reuseport
        sockets; with reuseport, the worker accepts on ``own``, its sockets. Then, in a
        worker, :attr:`in_child` with its ``slot``."""
        resume_gc()
        if self.reuseport is not None:
            self.reuseport.use_in_worker(own)
        signal.set_wakeup_fd(-1)
        self.events.close_in_worker(record.pidfd for record in self.records)
        if slot is not None and self.in_child is not None:
            self.in_child(slot)


def run_forked(number: int, prepare: Callable[[], object], build: Callable[[], Worker]) -> NoReturn:
    """The entry point of worker ``number``'s process, called by the master in the child right
    after the fork: ``prepare()`` (drop the master's descriptors), then ``build()`` the worker
    object and :meth:`~Worker.run` it. Never returns: the child leaves with ``os._exit`` and the
    status of :meth:`~Worker.run` (an int ``SystemExit`` code;
    :data:`~prefork.messages.WORKER_EXIT_ERROR` after an exception, which is logged), as
    ``ForkingMixIn.process_request``'s child does, so it never unwinds into master code."""
    status = WORKER_EXIT_ERROR
    try:
        prepare()
        status = build().run()
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else WORKER_EXIT_ERROR
    except BaseException:
        log.exception("Worker %d (pid %d) crashed", number, os.getpid())
    finally:
        flush_std_streams()
        os._exit(status)
