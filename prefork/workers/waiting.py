"""How a worker waits for connections: :class:`ListenerWaiter`.

One object per worker process, created in the worker (by
:meth:`Worker.wait_for_listeners <prefork.workers.base.Worker.wait_for_listeners>`). It
waits on the worker's listening sockets, its signal wake-up pipe and the master pipe, and
reports what happened as a :class:`Wakeup` (the servers with a connection waiting, whether a
signal or a wake-up arrived, whether the master is gone); the worker acts on it.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import selectors
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from prefork.connections import RejectedConnection

#: Most bytes read from the wake-up pipe in one wait (the pipe holds at most 64 KiB).
_MAX_WAKEUP_BYTES = 65536

if TYPE_CHECKING:
    from prefork.contract import PoolServer

log = logging.getLogger("prefork")

#: accept() errors that mean the process or system is out of a resource: waiting a little
#: beats spinning on them (as trio's serve_listeners does).
ACCEPT_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: Seconds between two warnings of a worker that cannot accept (EMFILE & co.).
ACCEPT_WARNING_INTERVAL = 10.0
#: Seconds a worker pauses after such an error, rather than spin on it.
ACCEPT_PAUSE = 0.1

#: How a worker waits for its listening sockets (see :class:`ListenerWaiter`), by preference.
ACCEPT_WAITS = ("exclusive", "select", "blocking")


#: Most connections a stopping worker takes from the queue to serve before it exits.
DRAIN_LIMIT = 65536


def accept_queued(
    servers: Sequence[PoolServer], limit: int = DRAIN_LIMIT
) -> list[tuple[PoolServer, Any, Any]]:
    """Accept the connections queued on ``servers``' listening sockets (non-blocking ones:
    without waiting), at most ``limit``, and return them with their server and client
    address, to be processed later. Runs in a worker that is stopping."""
    taken: list[tuple[PoolServer, Any, Any]] = []
    for server in servers:
        while len(taken) < limit:
            try:
                request, client_address = server.get_request()
            except RejectedConnection:  # refused at the edge (closed): the next one
                continue
            except OSError:  # nothing left (EAGAIN), or out of resources
                break
            taken.append((server, request, client_address))
    return taken


class AcceptPause:
    """What worker ``number`` does when accept() fails for lack of a resource
    (:data:`ACCEPT_RESOURCE_ERRNOS`): pause :data:`ACCEPT_PAUSE` seconds, and log it at most
    once per :data:`ACCEPT_WARNING_INTERVAL` seconds with the count since the last line (a
    pool out of file descriptors would otherwise log 10 lines a second per worker)."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.count = 0  # errors since the last line
        self.next_line = 0.0  # monotonic time before which nothing is logged

    def after(self, error: OSError) -> None:
        """Count ``error``, log it if the last line is old enough, and pause. Runs in the
        worker."""
        self.count += 1
        now = time.monotonic()
        if now >= self.next_line:
            log.warning(
                "Worker %d cannot accept: %s; pausing %g s after each (%d times since the last line)",
                self.number,
                error,
                ACCEPT_PAUSE,
                self.count,
            )
            self.next_line = now + ACCEPT_WARNING_INTERVAL
            self.count = 0
        time.sleep(ACCEPT_PAUSE)


class Wakeup(NamedTuple):
    """What ended one wait of :meth:`ListenerWaiter.wait`."""

    #: The servers whose listening socket is readable (a connection may be waiting).
    ready: list[PoolServer]
    #: What the wake-up pipe held, now drained: the number of each signal that arrived (as
    #: ``signal.set_wakeup_fd`` writes it) and a 0 for each :meth:`Worker.wake
    #: <prefork.workers.base.Worker.wake>`; empty when nothing came.
    signals: bytes
    #: The master pipe reads end-of-file: the master has died.
    master_gone: bool


class ListenerWaiter:
    """Waits for the listening sockets of one worker (``servers``), with its wake-up pipe
    (``wakeup_fd``: signals and :meth:`Worker.wake <prefork.workers.base.Worker.wake>`) and
    the master pipe (``master_fd``). Created and used in the worker.

    ``how`` is one of :data:`ACCEPT_WAITS`:

    - ``exclusive``: one epoll instance per worker, the listening sockets registered with
      ``EPOLLIN | EPOLLEXCLUSIVE`` (Linux >= 4.5), so the kernel wakes one worker waiting in
      epoll_wait per connection instead of all of them; the other fds normally. accept()
      stays non-blocking: a woken worker may still find nothing. Where EPOLLEXCLUSIVE is
      missing (or refused), falls back to ``select``.
    - ``select``: ``selectors.DefaultSelector`` (level-triggered): every idle worker wakes.
    - ``blocking``: no waiting; the only listening socket is made blocking (for the whole pool:
      O_NONBLOCK is shared) and :meth:`wait` returns it at once, so the worker sleeps in
      accept(), where the kernel wakes one waiter per connection (FIFO). TERM must interrupt
      accept() (:meth:`Worker.handle_term <prefork.workers.base.Worker.handle_term>`); the
      master's death goes unnoticed until the next request. Only for one stream listener;
      else falls back to ``exclusive``. :attr:`blocking` says it is in use.

    A wait without the listening sockets (``listen`` False) uses the same epoll or selector
    with the listening sockets unregistered (a selector of the other fds for ``blocking``).
    Raises ValueError for an unknown ``how``.
    """

    def __init__(self, servers: Sequence[PoolServer], how: str, wakeup_fd: int, master_fd: int) -> None:
        if how not in ACCEPT_WAITS:
            raise ValueError(f"accept_wait must be one of {', '.join(ACCEPT_WAITS)}, got {how!r}")
        self.servers = {server.fileno(): server for server in servers}
        self.wakeup_fd = wakeup_fd
        self.master_fd = master_fd
        if how == "blocking" and (len(servers) != 1 or servers[0].socket.type != socket.SOCK_STREAM):
            how = "exclusive"
        exclusive = getattr(select, "EPOLLEXCLUSIVE", 0)
        poller: select.epoll | selectors.BaseSelector | None = None
        if how == "exclusive" and exclusive and hasattr(select, "epoll"):
            self.events = select.EPOLLIN | exclusive  # of the listening sockets
            poller = select.epoll()
            try:
                for fd in self.servers:
                    poller.register(fd, self.events)
            except OSError:  # EINVAL: a kernel older than 4.5
                poller.close()
                poller = None
            else:
                poller.register(wakeup_fd, select.EPOLLIN)
                poller.register(master_fd, select.EPOLLIN)
        if poller is None:
            self.events = selectors.EVENT_READ
            poller = selectors.DefaultSelector()
            poller.register(wakeup_fd, self.events)
            poller.register(master_fd, self.events)
            if how == "blocking":  # the selector only for waits without the listener
                servers[0].socket.setblocking(True)
            else:
                how = "select"
                for fd in self.servers:
                    poller.register(fd, self.events)
        #: The epoll instance or selector.
        self.poller = poller
        #: The mechanism in use, after fallbacks.
        self.how = how
        #: The ``blocking`` wait is in use: the worker sleeps in accept(), not here.
        self.blocking = how == "blocking"
        #: The listening sockets are registered in the poller (unused by ``blocking``).
        self.listening = True

    def wait(self, timeout: float | None, listen: bool = True) -> Wakeup:
        """Wait up to ``timeout`` seconds (None: no limit) for a connection, a signal or
        wake-up, or the master's death, and say which came. With ``listen`` False, leave the
        listening sockets out (``ready`` is then empty). Drains the wake-up pipe; once the
        master pipe has reported EOF it is no longer watched."""
        poller = self.poller
        if listen != self.listening and not self.blocking:
            self.listening = listen
            for fd in self.servers:
                if listen:
                    poller.register(fd, self.events)
                else:
                    poller.unregister(fd)
        if isinstance(poller, select.epoll):  # a concrete type: cheaper than the selector ABC
            fds = [fd for fd, _ in poller.poll(-1 if timeout is None else timeout)]
        else:
            if listen and self.blocking:  # accept() itself waits
                return Wakeup(list(self.servers.values()), self.read_wakeups(), False)
            fds = [key.fd for key, _ in poller.select(timeout)]
        ready = []
        signals = b""
        master_gone = False
        for fd in fds:
            server = self.servers.get(fd)
            if server is not None:
                ready.append(server)
            elif fd == self.master_fd:
                master_gone = True
                poller.unregister(fd)  # at EOF: readable for good
            else:
                signals = self.read_wakeups()
        return Wakeup(ready, signals, master_gone)

    def read_wakeups(self) -> bytes:
        """Drain the wake-up pipe (non-blocking; at most 64 KiB) and return what it held."""
        data = b""
        try:
            while len(data) < _MAX_WAKEUP_BYTES and (chunk := os.read(self.wakeup_fd, 4096)):
                data += chunk
        except OSError:  # empty (BlockingIOError), or closed
            pass
        return data

    def forget_listeners(self) -> None:
        """Stop waiting on the listening sockets for good (before they are closed)."""
        if self.listening and not self.blocking:
            for fd in self.servers:
                self.poller.unregister(fd)
        self.listening = False
        self.servers = {}

    def close(self) -> None:
        """Close the epoll instance or selector."""
        self.poller.close()
