"""The ``sync`` worker: one request at a time, in the worker process itself."""

from __future__ import annotations

import logging
import selectors
from typing import TYPE_CHECKING

from prefork.workers.base import Worker

if TYPE_CHECKING:
    from _socket import _RetAddress
    from socketserver import _RequestType

    from prefork.server import PreforkMixIn

log = logging.getLogger("prefork")


class SyncWorker(Worker):
    """Serves one request at a time in the worker process, as socketserver's BaseServer does.

    The worker waits in one ``select`` on the listening sockets (non-blocking, shared with the
    pool), its signal wake-up pipe and the master's pipe; it then accepts without blocking, so
    a worker never sits in ``accept()`` after another worker took the connection. Idle, it uses
    no CPU; a TERM or the master's death wakes it at once.
    """

    def serve(self) -> None:
        """Accept and process requests until told to stop. Runs in the worker."""
        with selectors.DefaultSelector() as selector:
            for server in self.listeners():
                selector.register(server.fileno(), selectors.EVENT_READ, server)
            selector.register(self.wakeup_fd, selectors.EVENT_READ, None)
            selector.register(self.master_fd, selectors.EVENT_READ, None)
            while self.alive:
                for key, _ in selector.select():
                    server = key.data
                    if server is not None:
                        if self.alive:
                            self.handle_request(server)
                    elif key.fd == self.master_fd:
                        log.warning("Worker %d: the master died; exiting", self.number)
                        self.alive = False
                    else:
                        self.drain_wakeups()

    def process_request(
        self, server: PreforkMixIn, request: _RequestType, client_address: _RetAddress
    ) -> None:
        """``finish_request`` then ``shutdown_request``, in this process (as BaseServer)."""
        server.finish_request(request, client_address)
        server.shutdown_request(request)
