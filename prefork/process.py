"""The master process around the pool: what it sets up to serve, and puts back after.

Its title (``prefork: master [NAME]``), the umask, the pid file, and the listening sockets
(non-blocking, so that workers accept without blocking, with the pool's scoreboard on each
server). :class:`MasterProcess` does it when the pool starts and undoes it when it stops, so
that a server stopped by ``shutdown()`` can serve again, or handle a request with
``handle_request()``. A stop by signal (TERM, INT, QUIT) ends the server: its listening
sockets are closed (:meth:`MasterProcess.close_listeners`), so that connections are refused.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import setproctitle

from prefork import connections, logs, sockets
from prefork.accesslog import AccessLog
from prefork.contract import PoolServer
from prefork.edge import setup_edge
from prefork.errors import PreforkError
from prefork.pidfile import Pidfile
from prefork.scoreboard import Scoreboard

log = logging.getLogger("prefork")


class MasterProcess:
    """Sets up and puts back the master process's surroundings for ``servers`` (the pool's
    servers, the first one's settings apply: ``umask``, ``pidfile``), titled with ``name``,
    sharing ``scoreboard``. ``takeover_from`` is the pid of the old master of a USR2 upgrade
    (0: none), whose pid file this master takes over. Used by the master, in the master."""

    def __init__(
        self, servers: Sequence[PoolServer], name: str, scoreboard: Scoreboard, *, takeover_from: int = 0
    ) -> None:
        self.servers = list(servers)
        self.name = name
        self.scoreboard = scoreboard
        self.takeover_from = takeover_from
        self.pidfile = Pidfile(servers[0].pidfile) if servers[0].pidfile else None
        self._title = ""
        self._timeouts: list[float | None] = []
        self._restore_streams: Callable[[], None] = lambda: None
        #: The ``access_log`` setting's file while the pool runs.
        self.access: AccessLog | None = None

    def start(self, size: int) -> None:
        """Make sys.stdout and sys.stderr ignore a broken pipe (see
        :func:`~prefork.logs.guard_std_streams`), set the umask, title the process, write the
        pid file, make the listening sockets non-blocking, give each server the scoreboard,
        its deferred accept and its connections' class, and log where the pool of ``size``
        workers listens (the line tests and tools read: ``Listening at ADDR, ... with N
        CLASS workers (master pid P)``); apply the ``log_format`` and open the ``access_log``
        (given to each server as ``access``). Raises
        :class:`~prefork.errors.PreforkError` when the access log or the pid file cannot be
        opened or written, or the pid file names another running master (see
        :meth:`Pidfile.create <prefork.pidfile.Pidfile.create>`)."""
        self._restore_streams = logs.guard_std_streams()  # a broken stderr pipe fails no request
        self._title = setproctitle.getproctitle()
        self._timeouts = [server.socket.gettimeout() for server in self.servers]
        first = self.servers[0]
        if first.umask is not None:
            os.umask(first.umask)
        logs.apply_format(first.log_format)
        if first.access_log is not None:
            try:
                self.access = AccessLog.open(
                    first.access_log, first.log_format, user=first.user, group=first.group
                )
            except OSError as exc:
                raise PreforkError(
                    f"cannot open access log {first.access_log}: {exc.strerror or exc}"
                ) from None
        # Titled first: once the pid file names this process, another master sees it running.
        setproctitle.setproctitle(f"prefork: master [{self.name}]")
        if self.pidfile is not None:
            try:
                self.pidfile.create(takeover_from=self.takeover_from)
            except OSError as exc:
                reason = exc.strerror or exc
                raise PreforkError(f"cannot write pid file {self.pidfile.path}: {reason}") from None
        for server in self.servers:
            server.socket.setblocking(False)  # workers accept without blocking
            server.scoreboard = self.scoreboard
            server.access = self.access
            deferred = connections.defer_accept(server)
            server.request_socket = connections.request_socket_class(server, deferred)
        setup_edge(self.servers)  # TLS (with the read rules above), PROXY: a bad certificate stops here
        log.info(
            "Listening at %s with %d %s worker%s (master pid %d)",
            ", ".join(sockets.describe(s) for s in self.servers),
            size,
            self.servers[0].worker_class,
            "" if size == 1 else "s",
            os.getpid(),
        )

    def close_listeners(self, reuseport: sockets.ReuseportSockets | None) -> None:
        """Close the master's copies of the listening sockets (and the ``reuseport`` copies
        it keeps for its workers) at a stop by signal, before the workers are told to stop.
        The workers keep accepting on theirs and drain what is queued; once the last copy is
        closed, the kernel refuses new connections at once instead of queueing them until
        the stop ends. Only our own copies are closed: after a USR2 upgrade the new master,
        and under systemd socket activation the service manager, hold the socket open, and
        connections then wait in its queue for them."""
        for server in self.servers:
            server.socket.close()
        if reuseport is not None:
            reuseport.close()

    def stop(self, *, restore_sockets: bool = True) -> None:
        """Put back the title, sys.stdout and sys.stderr, the sockets' timeouts (unless
        ``restore_sockets`` is False: after a USR2 upgrade the new master shares their
        O_NONBLOCK flag), remove the pid file (if it still holds our pid) and take the
        scoreboard off the servers. Safe to call after a :meth:`start` that raised."""
        if restore_sockets and self._timeouts:
            for server, timeout in zip(self.servers, self._timeouts, strict=True):
                if server.socket.fileno() != -1:
                    server.socket.settimeout(timeout)  # e.g. for handle_request() after this
        if self._title:
            setproctitle.setproctitle(self._title)
        self._restore_streams()
        if self.pidfile is not None:
            self.pidfile.remove()
        for server in self.servers:
            server.scoreboard = None
            server.access = None
        if self.access is not None:
            self.access.close()
            self.access = None
