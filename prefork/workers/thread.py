"""The ``thread`` worker: each worker process serves up to ``threads`` requests at once.

As gunicorn's ``gthread`` worker or Apache's worker MPM: ThreadingMixIn's semantics inside a
preforked worker, with the threads bounded. A keep-alive or slow client holds one thread, not
the whole process; a worker whose threads are all busy stops accepting, so the connections go
to the workers that have a thread free.

Who runs what, in the worker process (the master never starts a thread; they are started in
:meth:`ThreadWorker.serve`, after the fork):

- the **main thread** waits in :meth:`~prefork.workers.base.Worker.wait_for_listeners`, as
  the ``sync`` worker does, but with the listening sockets left out while every thread is busy
  (a thread finishing wakes it with :meth:`~prefork.workers.base.Worker.wake`); it accepts
  (``get_request`` -> ``verify_request``) and hands each request to a thread. It runs the
  signal handlers and owns the scoreboard slot's BUSY/IDLE transitions with the threads.
- each of the ``threads`` **handler threads** (long-lived, started once) takes requests from a
  queue and runs ``finish_request`` (the handler: ``setup``, ``handle``, ``finish``) then
  ``shutdown_request``, with ``handle_error`` on an exception, as
  ``ThreadingMixIn.process_request_thread`` does.

A fixed set of threads fed by a ``queue.SimpleQueue`` is used rather than a
``concurrent.futures.ThreadPoolExecutor``: the same bound, without a Future and its lock per
request (measured cheaper, see ``docs/workers.md``).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from bisect import bisect_left
from typing import TYPE_CHECKING, ClassVar, TypeAlias

from prefork.accesslog import SERVED, outcome_of
from prefork.figures import DURATION_BUCKETS, WorkerState
from prefork.messages import WORKER_EXIT_ERROR, WORKER_EXIT_OK
from prefork.workers.base import Worker

if TYPE_CHECKING:
    from _socket import _RetAddress
    from socketserver import _RequestType

    from prefork.contract import PoolServer

log = logging.getLogger("prefork")

#: What the main thread hands to a handler thread; None tells the thread to exit.
_Work: TypeAlias = "tuple[PoolServer, _RequestType, _RetAddress] | None"


class ThreadWorker(Worker):
    """Serves up to ``server.threads`` requests at once, each in a thread of this worker
    process (as gunicorn's ``gthread`` worker).

    The main thread accepts only while one of the ``threads`` handler threads is free: when all
    are busy it stops watching the listening sockets until one finishes, so an idle worker of
    the pool takes the next connection instead. A handler keeps its thread for as long as it
    runs: an HTTP/1.1 keep-alive connection of ``http.server`` holds one thread for the
    connection's life, bounded when idle by the ``socket_timeout`` setting.

    The scoreboard slot is BUSY while any request is in flight, since the start of the oldest
    one (so ``request_timeout`` aborts a worker with a hung thread); it counts finished
    requests and is IDLE when none is in flight.

    TERM (graceful): stop accepting, let the requests in flight finish (the master SIGKILLs
    after ``graceful_timeout``), then return. After ``max_requests`` the same. The master's
    death: the same, bounded by ``graceful_timeout``. A ``SystemExit`` or
    ``KeyboardInterrupt`` raised in a handler thread is logged and makes the worker stop
    accepting, finish the other requests and exit with an error status, to be replaced.

    Methods: :meth:`serve`, :meth:`process_request` and the base class's ``handle_request``
    (with :meth:`request_started` and :meth:`request_returned`) run in the main thread;
    :meth:`serve_thread` in each handler thread. They may be extended.
    """

    #: Requests are timed when their thread finishes them (:meth:`request_finished`).
    times_requests: ClassVar[bool] = False

    def init_process(self) -> None:
        """Prepare this process to serve (the base class's boot), then create the queue and
        the lock the threads share. Runs in the worker's main thread, after the fork. May be
        extended (call this first)."""
        super().init_process()
        self.threads = int(self.server.threads)
        self._queue: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        self._lock = threading.Lock()
        #: Requests accepted and not finished: id(request) -> time.monotonic() of the accept
        #: (or of its latest request, HTTP keep-alive), oldest first (insertion order); None
        #: while a kept-alive connection waits for its next request.
        self._in_flight: dict[int, float | None] = {}
        self._served = 0  # requests finished, for the scoreboard
        self._resting = 0  # connections in flight waiting for their next request (None there)
        self._waiting = False  # the main thread waits for a thread to free (under _lock)
        self._fatal: BaseException | None = None  # SystemExit, KeyboardInterrupt of a thread

    # -- the main thread ---------------------------------------------------------------------

    def serve(self) -> None:
        """Start the handler threads, accept while one is free until told to stop, then wait
        for the requests in flight. Runs in the worker's main thread.

        Raises SystemExit (status 1, or the int status of a handler's SystemExit) when a
        handler thread raised SystemExit or KeyboardInterrupt.
        """
        pool = [
            threading.Thread(
                target=self.serve_thread, name=f"prefork-worker-{self.number}-thread-{i}", daemon=True
            )
            for i in range(self.threads)
        ]
        for thread in pool:
            thread.start()
        while self.alive:
            for server in self.wait_for_listeners(listen=not self.all_busy()):
                # Even when stopping, as the sync worker (with EPOLLEXCLUSIVE it may be the
                # only worker woken), but never beyond its threads.
                if len(self._in_flight) < self.threads:
                    self.handle_request(server)
        if self.terminated and not self.master_died and self.scoreboard.pool_stopping():
            self.drain()  # queued connections go to the threads: served, not reset
        finished = self.wait_in_flight()
        if finished:
            for _ in pool:
                self._queue.put(None)
            for thread in pool:
                thread.join()
        if self._fatal is not None:
            code = self._fatal.code if isinstance(self._fatal, SystemExit) else None
            raise SystemExit(code if isinstance(code, int) and code else WORKER_EXIT_ERROR)

    def all_busy(self) -> bool:
        """True (and a thread finishing will write to the wake-up pipe) when every thread has
        a request. Runs in the main thread."""
        if len(self._in_flight) < self.threads:  # the count only falls behind our back
            return False
        with self._lock:
            self._waiting = len(self._in_flight) >= self.threads
            return self._waiting

    def wait_in_flight(self) -> bool:
        """Not accepting any more, wait until no request is in flight; once the master has
        died, for ``graceful_timeout`` seconds at most. Returns True when none is left. Runs
        in the main thread (signals are still handled: INT and QUIT exit at once)."""
        deadline = None
        while True:
            with self._lock:
                if not self._in_flight:
                    return True
                self._waiting = True
            if deadline is None and self.master_died:
                deadline = time.monotonic() + self.server.graceful_timeout
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                log.warning(
                    "Worker %d: %d requests still in flight after graceful_timeout; exiting",
                    self.number,
                    len(self._in_flight),
                )
                return False
            self.wait_for_listeners(timeout, listen=False)

    def request_returned(self, request: _RequestType, processed: bool) -> None:
        """A request handed to a thread (``processed``) stays in flight, and the slot BUSY,
        until its thread has finished it; one never handed off is over now. Runs in the main
        thread."""
        if not processed:
            self.request_finished(request, served=False)

    def process_request(self, server: PoolServer, request: _RequestType, client_address: _RetAddress) -> None:
        """Hand the request to a handler thread and return (``server.process_request`` in
        this worker). Runs in the main thread, which only calls it with a thread free."""
        self._queue.put((server, request, client_address))

    # -- the handler threads -----------------------------------------------------------------

    def serve_thread(self) -> None:
        """Process requests from the queue until told to exit. Runs in each handler thread.

        As ``ThreadingMixIn.process_request_thread``: ``finish_request`` (with TLS, after the
        handshake: :mod:`prefork.edge`), ``handle_error`` on an exception, then
        ``shutdown_request``. An exception of ``handle_error`` or
        ``shutdown_request`` is logged and the thread goes on; ``SystemExit`` or
        ``KeyboardInterrupt`` is logged and stops the worker, which exits with an error.
        """
        get = self._queue.get
        while (work := get()) is not None:
            server, request, client_address = work
            outcome = SERVED
            try:
                try:
                    edge = server.edge  # with TLS, the handshake first, in this thread
                    if edge is None or edge.tls is None:
                        server.finish_request(request, client_address)
                    elif not edge.finish_tls(server, request, client_address):
                        with self._lock:
                            self.scoreboard.count_tls_failure(self.slot)
                except Exception as exc:
                    with self._lock:  # a read-modify-write, from several threads
                        self.scoreboard.count_error(self.slot)
                    outcome = outcome_of(exc)
                    server.handle_error(request, client_address)
                finally:
                    server.shutdown_request(request)
            except Exception:
                log.exception("Worker %d: error handling a request from %s", self.number, client_address)
            except BaseException as exc:
                log.error(
                    "Worker %d (pid %d): %s raised in a handler thread; exiting to be replaced",
                    self.number,
                    self.pid,
                    type(exc).__name__,
                )
                self._fatal = exc
                self.alive = False
                self.request_finished(request, wake=True)
                return
            elapsed = self.request_finished(request)
            if server.access is not None and not (outcome == SERVED and server.logs_requests):
                server.access.record(client_address, self.number, self.pid, elapsed, outcome)
            if self.forked:  # this is a process a handler forked, back from the handler
                os._exit(WORKER_EXIT_OK)

    # -- the scoreboard, from either ----------------------------------------------------------

    def request_started(self, request: _RequestType) -> None:
        """Count ``request`` in flight; the slot becomes BUSY if it was the only one. Runs in
        the main thread."""
        with self._lock:
            if len(self._in_flight) == self._resting:  # none in progress (some may wait)
                self.scoreboard.request_started(self.slot)
            self._in_flight[id(request)] = time.monotonic()

    def request_idle(self, request: _RequestType) -> None:
        """The connection ``request`` waits for its next request (HTTP keep-alive): it keeps
        its thread (the count of threads busy is the same) but no request is in progress, so
        the slot's BUSY time is that of the oldest request still in progress, or IDLE.
        Runs in the handler thread serving the connection."""
        key = id(request)
        with self._lock:
            if self._in_flight.get(key) is not None:
                self._in_flight[key] = None
                self._resting += 1
                self._publish()

    def request_continues(self, request: _RequestType) -> None:
        """The connection ``request`` begins its next request (HTTP keep-alive): its time in
        flight starts again, and the slot says BUSY since the oldest request in progress.
        Runs in the handler thread serving the connection."""
        key = id(request)
        with self._lock:
            in_flight = self._in_flight
            if key not in in_flight:
                return
            if in_flight.pop(key) is None:
                self._resting -= 1
            in_flight[key] = time.monotonic()  # the newest now
            self._publish()

    def _publish(self) -> None:
        """Write the slot from the requests in flight: BUSY since the oldest in progress
        (not waiting for a kept-alive client's next request), else IDLE (STOPPING once not
        ``alive``). Called with the lock held."""
        in_flight = self._in_flight
        if len(in_flight) == self._resting:
            oldest = None
        elif not self._resting:
            oldest = next(iter(in_flight.values()))
        else:
            oldest = next((started for started in in_flight.values() if started is not None), None)
        if oldest is not None:
            self.scoreboard.request_progress(self.slot, self._served, oldest, self.busy_seconds)
        else:
            state = WorkerState.IDLE if self.alive else WorkerState.STOPPING
            self.scoreboard.request_finished(self.slot, self._served, state, self.busy_seconds)

    def request_finished(self, request: _RequestType, *, served: bool = True, wake: bool = False) -> float:
        """``request`` is no longer in flight (``served``: count it, and its duration in the
        slot's histogram). The slot then says IDLE (STOPPING once not ``alive``) if none is
        left, else BUSY since the oldest left; the main thread is woken if it waits for a
        thread (or ``wake``). Returns the request's duration (seconds). Runs in a handler
        thread, or in the main thread for a request never handed off."""
        elapsed = 0.0
        key = id(request)
        with self._lock:
            in_flight = self._in_flight
            if key in in_flight and in_flight[key] is None:
                self._resting -= 1
            started = in_flight.pop(key, None)
            if served:
                self._served += 1
                if started is not None:
                    elapsed = time.monotonic() - started
                    self.busy_seconds += elapsed
                    self._durations[bisect_left(DURATION_BUCKETS, elapsed)] += 1
            self._publish()
            if self._waiting or wake:
                self._waiting = False
                self.wake()
        return elapsed
