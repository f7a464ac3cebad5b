"""The base worker: what every worker class does in its process around serving.

A :class:`Worker` object is the worker process's own state. The master forks first and
builds the worker in the child (its own record of the process is a
:class:`~prefork.pool.WorkerRecord`, apart). :meth:`Worker.run` boots the process
(:meth:`Worker.init_process`), reports to the master (:mod:`prefork.messages`), serves until
told to stop, and returns an exit status; the master's fork code ends the child with
``os._exit(status)``, so a worker never returns into master code. How a worker waits for
connections is :mod:`prefork.workers.waiting`.
"""

from __future__ import annotations

import faulthandler
import functools
import logging
import os
import sys
from bisect import bisect_left
from time import monotonic, sleep
from typing import TYPE_CHECKING, ClassVar, TypeAlias

import setproctitle

from prefork.accesslog import DENIED, SERVED, outcome_of
from prefork.connections import DEFER_STOP_GRACE, RejectedConnection, resume_deferring, stop_deferring
from prefork.contract import pool_servers
from prefork.figures import DURATION_BUCKETS, WorkerState
from prefork.logs import set_worker
from prefork.messages import (
    BOOT_ERROR,
    READY,
    WORKER_BOOT_ERROR,
    WORKER_EXIT_OK,
    send_message,
)
from prefork.scoreboard import Scoreboard, pack_done, pack_started
from prefork.workers.signals import HANDLED_SIGNALS, SignalHandling, default_signals
from prefork.workers.user import boot_error_text, prepare_user_switch, switch_user
from prefork.workers.waiting import ACCEPT_RESOURCE_ERRNOS, AcceptPause, ListenerWaiter, accept_queued

if TYPE_CHECKING:
    from _socket import _RetAddress
    from socketserver import _RequestType

    from prefork.contract import PoolServer

log = logging.getLogger("prefork")

_IDLE, _STOPPING, _BUSY = WorkerState.IDLE, WorkerState.STOPPING, int(WorkerState.BUSY)
_FASTEST = DURATION_BUCKETS[0]  # most requests: their bucket without a search

#: A request already accepted and its client address (see :meth:`Worker.drain`).
Accepted: TypeAlias = "tuple[_RequestType, _RetAddress]"


class Worker(SignalHandling):
    """One worker process of the pool; subclasses implement :meth:`serve`.

    Created in the worker process, right after the fork (never in the master). Arguments:
    ``server``, the prefork server (the master's object, inherited by the fork); ``number``,
    the worker's number K in the pool (0 .. workers-1, shown in its title and reused by its
    replacement); ``generation``, the reload count it was started in; ``name``, the process
    name; ``notify_fd``, the write end of the pipe to the master; ``master_fd``, the read end
    of a pipe only the master writes to, which reads EOF when the master has died;
    ``scoreboard`` and ``slot``, the pool's scoreboard and this worker's slot in it;
    ``max_requests``, the number of requests after which it exits to be replaced (0: never;
    the master adds max_requests_jitter).

    Methods for derived worker classes: :meth:`serve` (must be overridden) and
    :meth:`process_request` (must be overridden); :meth:`init_process` and
    :meth:`init_signals` (may be extended).
    """

    #: How the worker waits for connections: "exclusive" (the default: epoll, the listening
    #: sockets with EPOLLEXCLUSIVE, so one connection wakes one idle worker; measured best, see
    #: docs/performance.md; "select" where the kernel lacks it), "select" (a level-triggered
    #: selector: every idle worker wakes for each connection) or "blocking" (blocking accept()
    #: on the only listening socket; measured, not recommended: it does not notice the
    #: master's death). See :class:`ListenerWaiter` and docs/architecture.md.
    accept_wait: ClassVar[str] = "exclusive"

    #: :meth:`handle_request` times each request into the slot's duration histogram (False
    #: in a worker whose requests end elsewhere: the ``thread`` worker times them itself).
    times_requests: ClassVar[bool] = True

    def __init__(
        self,
        server: PoolServer,
        number: int,
        generation: int,
        name: str,
        notify_fd: int,
        master_fd: int,
        scoreboard: Scoreboard,
        slot: int,
        max_requests: int = 0,
    ) -> None:
        self.server = server
        #: The servers this worker accepts on: ``server``, then its ``listeners``.
        self.servers = pool_servers(server)
        self.number = number
        self.generation = generation
        self.name = name
        self.notify_fd = notify_fd
        self.master_fd = master_fd
        self.scoreboard = scoreboard
        self.slot = slot
        self.max_requests = max_requests
        self.pid = os.getpid()
        #: False once it has been told to stop (TERM) or the master died.
        self.alive = True
        #: True in a process forked by a handler (see :func:`leave_pool`).
        self.forked = False
        #: Told to stop gracefully (TERM): :meth:`drain` the queue before exiting.
        self.terminated = False
        #: True once :meth:`wait_for_listeners` has seen the master's death.
        self.master_died = False
        #: Requests processed so far, and the sum of their durations (seconds).
        self.requests = 0
        self.busy_seconds = 0.0
        self.reopen_logs = False  # USR1 arrived: reopen log files in the loop
        self.wakeup_fd = -1  # read end of this worker's wake-up pipe (signals, :meth:`wake`)
        self._wakeup_w = -1  # its write end
        #: accept() calls that found no connection (another worker took it): the spurious
        #: wake-ups. Counted off the request path (only when accept fails).
        self.empty_accepts = 0
        self._waiter: ListenerWaiter | None = None
        self._accept_pause = AcceptPause(number)
        #: The ``blocking`` accept wait is in use: TERM must interrupt accept().
        self.blocking_accept = False
        # The scoreboard writes of the request path, bound to the slot.
        # Where the request path writes the slot, inline (no call but the packing). Few
        # attributes: over 30, an instance's attribute lookups get slower (CPython 3.11).
        self._memory, self._started_at, self._state_at, self._done_at = scoreboard.request_stores(slot)
        self._timed = self.times_requests  # an instance attribute: quicker to read per request
        self._durations = scoreboard.durations(slot)
        # Neither hook overridden (the sync worker): handle_request() writes the slot itself,
        # two calls fewer per request (docs/performance.md).
        cls = type(self)
        self._plain_slot = cls.request_started is Worker.request_started and (
            cls.request_returned is Worker.request_returned
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.number} pid={self.pid} gen={self.generation}>"

    # -- in the worker process -------------------------------------------------------------

    def run(self) -> int:
        """Boot, serve until stopped, and return the exit status. Runs in the worker.

        A boot failure (an exception from :meth:`init_process`, e.g. from the server's
        ``post_fork`` hook) is reported to the master with its cause, then logged, and gives
        :data:`~prefork.messages.WORKER_BOOT_ERROR`.
        """
        try:
            self.init_process()
        except Exception as exc:
            # The master hears the cause first: logging may fail too (e.g. after the user switch).
            send_message(self.notify_fd, BOOT_ERROR, boot_error_text(exc, self.server.user))
            log.exception("Worker %d (pid %d) failed to boot", self.number, self.pid)
            return WORKER_BOOT_ERROR
        os.register_at_fork(after_in_child=functools.partial(leave_pool, self))
        send_message(self.notify_fd, READY)  # then the title: a worker titled ready has told the master so
        setproctitle.setproctitle(f"prefork: worker {self.number} [{self.name}]")
        self.scoreboard.booted(self.slot, self.pid)
        self.serve()
        self.scoreboard.set_state(self.slot, WorkerState.STOPPING)
        return WORKER_EXIT_OK

    def init_process(self) -> None:
        """Prepare this process to serve. Runs in the worker, right after the fork.

        Sets the signal handlers, makes ``faulthandler`` dump the Python stack to stderr on
        SIGABRT (the request timeout) and fatal signals, sets the process title
        (``prefork: worker K [NAME] booting``; without "booting" once ready) and the server's
        ``worker`` attribute, switches to the ``group`` and ``user`` settings (as gunicorn's;
        first importing what logging a traceback needs, see
        :func:`~prefork.workers.user.prepare_user_switch`), then calls the server's
        ``post_fork`` hook. May be extended (call this first).

        Raises PermissionError when the user or group cannot be switched to.
        """
        set_worker(self.number)  # the JSON log names the worker
        self.init_signals()
        try:
            faulthandler.enable(file=sys.stderr, all_threads=True)
        except (AttributeError, ValueError, OSError):  # stderr closed or not a real file
            faulthandler.enable(file=2, all_threads=True)
        setproctitle.setproctitle(f"prefork: worker {self.number} [{self.name}] booting")
        for server in self.servers:
            server.worker = self
        if self.server.user is not None or self.server.group is not None:
            prepare_user_switch()
            switch_user(self.server.user, self.server.group)
        self.server.post_fork(self)
        for server in self.servers:  # after post_fork(), which may set allow, deny, verify_request
            server.verifies_everyone = server.verify_request_is_trivial()
            server.hands_over = server.process_request_is_plain()

    def wait_for_listeners(self, timeout: float | None = None, *, listen: bool = True) -> list[PoolServer]:
        """Wait until a listening socket of this worker is readable; return the servers whose
        socket is (pass each to :meth:`handle_request`), or [] after ``timeout`` seconds
        (None: no limit), a signal, a :meth:`wake`, or the master's death. Runs in the worker.

        With ``listen`` False the listening sockets are left out of the wait (until a call
        with ``listen`` True), so the connections go to other workers: only the other events
        end it, and it returns []. Signals are acted on here (:meth:`act_on_signals`); the
        master's death logs a warning and sets ``alive`` to False and ``master_died`` to True.
        Callers loop ``while self.alive``. The waiting mechanism is the class attribute
        ``accept_wait`` (see :class:`~prefork.workers.waiting.ListenerWaiter`), set up on the
        first call and kept for the worker's life.
        """
        waiter = self._waiter
        if waiter is None:
            waiter = self._waiter = ListenerWaiter(
                self.servers, self.accept_wait, self.wakeup_fd, self.master_fd
            )
            self.blocking_accept = waiter.blocking
        ready, signals, master_gone = waiter.wait(timeout, listen)
        if signals:
            self.act_on_signals(signals)
        if master_gone:
            log.warning("Worker %d: the master died; exiting (listening sockets closed)", self.number)
            self.alive = False
            self.master_died = True
            self.close_listeners()
            return []
        if self.blocking_accept and not self.alive:
            return []
        return ready

    def close_listeners(self) -> None:
        """Close this worker's copies of the listening sockets (its master is gone: a new
        master can then bind the address once the requests in flight are done). Runs in the
        worker."""
        if self._waiter is not None:
            self._waiter.forget_listeners()
        for server in self.servers:
            server.socket.close()

    def serve(self) -> None:
        """Accept and process requests until ``alive`` is False. Runs in the worker.

        Must be overridden.
        """
        raise NotImplementedError

    def process_request(self, server: PoolServer, request: _RequestType, client_address: _RetAddress) -> None:
        """Process one request of ``server`` (its ``process_request`` in a worker).

        Must be overridden.
        """
        raise NotImplementedError

    def handle_request(
        self, server: PoolServer, *, woken: bool = True, accepted: Accepted | None = None
    ) -> bool:
        """Take one request from ``server`` and process it, as BaseServer._handle_request_noblock.
        Return True when a connection was accepted, False when none was waiting.

        ``get_request`` -> ``verify_request`` (False: ``shutdown_request``, never processed) ->
        ``process_request``; an exception goes to ``handle_error`` and the request is shut down
        (and counted in the slot's ``errors``). accept() finding nothing (another worker took the
        connection) returns quietly, and counts in ``empty_accepts`` when ``woken`` (the wait said
        a connection was there; False: the worker is only trying, see :meth:`SyncWorker.serve`).
        EMFILE, ENFILE, ENOMEM and ENOBUFS are logged and followed by a 0.1 s pause. The worker's
        scoreboard slot is BUSY from accept to the end, then counts the request and its duration
        in the slot's histogram (or, when verify_request refused it, the denied connection); after
        ``max_requests`` the worker stops (``alive`` becomes False). With ``accepted`` (a request
        and its client address, taken by :meth:`drain`), that request is processed without
        ``get_request``. Runs in the worker.
        """
        if accepted is None:
            try:
                request, client_address = server.get_request()
            except OSError as exc:
                self.accept_failed(exc, woken)
                return False
        else:
            request, client_address = accepted
        started = monotonic()
        if self._plain_slot:
            memory = self._memory  # the time, then the state (Scoreboard.request_stores)
            memory[self._started_at] = pack_started(started)
            memory[self._state_at] = _BUSY
        else:
            self.request_started(request)
        processed = False
        try:
            if server.verifies_everyone or server.verify_request(request, client_address):
                self.requests += 1
                try:
                    if server.hands_over:  # what server.process_request() would do, a frame fewer
                        self.process_request(server, request, client_address)
                    else:
                        server.process_request(request, client_address)
                    processed = True
                except Exception as exc:
                    self.scoreboard.count_error(self.slot)
                    outcome = outcome_of(exc)
                    server.handle_error(request, client_address)
                    server.shutdown_request(request)
                except BaseException:
                    server.shutdown_request(request)
                    raise
                if self._timed:
                    elapsed = monotonic() - started
                    self.busy_seconds += elapsed
                    self._durations[0 if elapsed <= _FASTEST else bisect_left(DURATION_BUCKETS, elapsed)] += 1
                    if server.access is not None and not (processed and server.logs_requests):
                        outcome = SERVED if processed else outcome  # set by the except clause
                        server.access.record(client_address, self.number, self.pid, elapsed, outcome)
            else:
                self.scoreboard.count_denied(self.slot)
                server.shutdown_request(request)
                if server.access is not None:
                    elapsed = monotonic() - started
                    server.access.record(client_address, self.number, self.pid, elapsed, DENIED)
        finally:
            if self.max_requests:
                self.check_max_requests()
            if self._plain_slot:
                done = pack_done(_IDLE if self.alive else _STOPPING, 0.0, self.requests, self.busy_seconds)
                self._memory[self._done_at] = done
            else:
                self.request_returned(request, processed)
        return True

    def drain(self) -> None:
        """When the whole pool stops gracefully (TERM, and the master's word in the scoreboard:
        a worker retiring alone leaves the queue to the others), take every connection queued on this worker's
        listening sockets, close its copies of them (once every process has, new connections
        are refused), then process the connections taken: a connection queued before the
        listeners stopped accepting is served, not reset. Runs in the worker."""
        held = []
        if not self.blocking_accept:  # (a blocking socket cannot be drained)
            turned = stop_deferring(self.servers)  # connections held back by TCP_DEFER_ACCEPT
            if turned:
                sleep(DEFER_STOP_GRACE)
            held = accept_queued(self.servers)
            resume_deferring(turned)
        self.close_listeners()
        for server, request, client_address in held:
            self.handle_request(server, accepted=(request, client_address))

    def request_started(self, request: _RequestType) -> None:
        """A request was accepted: the scoreboard slot becomes BUSY. Runs in the worker. May
        be overridden (the ``thread`` worker counts requests in flight)."""
        self._memory[self._started_at] = pack_started(monotonic())
        self._memory[self._state_at] = _BUSY

    def request_idle(self, request: _RequestType) -> None:
        """The connection ``request`` waits for its next request (HTTP keep-alive): no request
        is in progress, so the slot says IDLE and ``request_timeout`` does not run while the
        client is silent. Runs in the worker (the thread serving the connection). May be
        extended."""
        self._memory[self._state_at] = _IDLE if self.alive else _STOPPING

    def request_continues(self, request: _RequestType) -> None:
        """The connection ``request`` begins its next request (HTTP keep-alive): the slot is
        BUSY since now, so ``request_timeout`` bounds each request and not the life of a
        kept-alive connection. Runs in the worker (the thread serving the connection). May be
        extended."""
        self._memory[self._started_at] = pack_started(monotonic())  # the time, then the state
        self._memory[self._state_at] = _BUSY

    def request_returned(self, request: _RequestType, processed: bool) -> None:
        """:meth:`handle_request` is done with ``request``: ``processed`` when
        ``process_request`` returned, False when it raised or ``verify_request`` refused the
        request. Here the request is over: the slot says IDLE (STOPPING once not ``alive``)
        with the count of requests. Runs in the worker. May be overridden (the ``thread``
        worker's requests go on in a handler thread)."""
        state = WorkerState.IDLE if self.alive else WorkerState.STOPPING
        self._memory[self._done_at] = pack_done(state, 0.0, self.requests, self.busy_seconds)

    def accept_failed(self, error: OSError, woken: bool) -> None:
        """``get_request()`` raised ``error``: quietly when no connection was waiting (counted
        in ``empty_accepts`` when ``woken``); for lack of a resource, a pause and a line
        (:class:`~prefork.workers.waiting.AcceptPause`). Runs in the worker."""
        if isinstance(error, RejectedConnection):  # refused at the edge: closed and counted
            return
        if error.errno in ACCEPT_RESOURCE_ERRNOS:
            self._accept_pause.after(error)
        elif woken:
            self.empty_accepts += 1

    def check_max_requests(self) -> None:
        """After ``max_requests`` requests, log it and stop (``alive`` becomes False), to be
        replaced by the master (as gunicorn's max_requests). Runs in the worker."""
        if self.max_requests and self.requests >= self.max_requests and self.alive:
            what = "Worker %d (pid %d) served %d requests (max_requests); exiting to be replaced"
            log.info(what, self.number, self.pid, self.requests)
            self.alive = False


def leave_pool(worker: Worker) -> None:
    """In a process forked by a handler of ``worker`` (``os.fork()`` in the worker; called by
    ``os.register_at_fork``): this process is not the worker the master forked, and never
    serves. Its signal handlers and wake-up fd go back to the defaults, its copies of the
    listening sockets and of the worker's pipes are closed, its scoreboard writes go to a
    private copy, and ``alive`` is False: when it returns from the handler into the worker's
    loop, it exits instead of accepting. Runs in that process."""
    worker.alive = False
    worker.forked = True
    worker.scoreboard.detach()
    worker._durations = worker.scoreboard.durations(worker.slot)
    worker._memory, worker._started_at, worker._state_at, worker._done_at = worker.scoreboard.request_stores(
        worker.slot
    )
    default_signals((*HANDLED_SIGNALS, *worker.IGNORED_SIGNALS))
    if worker._waiter is not None:  # closed, not emptied: its epoll is the worker's too
        worker._waiter.close()
        worker._waiter = None
    for server in worker.servers:
        server.socket.close()
    for fd in (worker.wakeup_fd, worker._wakeup_w, worker.notify_fd, worker.master_fd):
        os.close(fd)
    worker.wakeup_fd = worker._wakeup_w = worker.notify_fd = worker.master_fd = -1
