"""The ``sync`` worker: one request at a time, in the worker process itself."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar

from prefork.workers.base import Worker

if TYPE_CHECKING:
    from _socket import _RetAddress
    from socketserver import _RequestType

    from prefork.contract import PoolServer

log = logging.getLogger("prefork")


class SyncWorker(Worker):
    """Serves one request at a time in the worker process, as socketserver's BaseServer does.

    The worker waits with :meth:`~prefork.workers.base.Worker.wait_for_listeners` (one epoll
    instance on its listening sockets, with EPOLLEXCLUSIVE, its signal wake-up pipe and the
    master's pipe);
    it then accepts without blocking, so a worker never sits in ``accept()`` after another
    worker took the connection. Idle, it uses no CPU; a TERM or the master's death wakes it
    at once.
    """

    #: After a request, accept again without waiting, up to this many requests in a row,
    #: while connections are queued (as gunicorn's sync worker: under load, no wait per
    #: request). Then the worker waits once, which also acts on USR1 and the master's death.
    accept_batch: ClassVar[int] = 16

    def serve(self) -> None:
        """Accept and process requests until told to stop. Runs in the worker."""
        more = range(self.accept_batch - 1)
        while self.alive:
            for server in self.wait_for_listeners():
                # Even when stopping: with EPOLLEXCLUSIVE this worker may be the only one
                # woken for the connection; skipping it would leave it waiting in the queue.
                if self.handle_request(server) and not self.blocking_accept:  # accept() blocks
                    for _ in more:
                        if not (self.alive and self.handle_request(server, woken=False)):
                            break
        if self.terminated and not self.master_died and self.scoreboard.pool_stopping():
            self.drain()  # what was queued before the listeners closed is served

    def process_request(self, server: PoolServer, request: _RequestType, client_address: _RetAddress) -> None:
        """``finish_request`` then ``shutdown_request``, in this process (as BaseServer). With
        TLS, the handshake first and the close_notify alert after (:mod:`prefork.edge`): a
        connection whose handshake fails is counted and shut down unprocessed."""
        edge = server.edge
        if edge is None or edge.tls is None:
            server.finish_request(request, client_address)
        elif not edge.finish_tls(server, request, client_address):
            self.scoreboard.count_tls_failure(self.slot)
        server.shutdown_request(request)
