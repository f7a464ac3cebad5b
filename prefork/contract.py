"""What the master and the workers need of a server, said once.

The master (:mod:`prefork.master`) and the workers (:mod:`prefork.workers`) never import the
server classes (:mod:`prefork.server`): they are given a server and use only what this
:class:`PoolServer` protocol names, socketserver's own methods and attributes and the
settings of :mod:`prefork.config`. That keeps the imports one way (cli -> server -> master ->
workers -> low-level modules) and lets the pool's rules be tested with any object that has
these members.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import ssl
    from _socket import _RetAddress
    from socketserver import _RequestType

    from prefork.accesslog import AccessLog
    from prefork.config import Network
    from prefork.scoreboard import Scoreboard


#: socket.socket, named apart from PoolServer's ``socket`` attribute.
SocketType = socket.socket


class PoolServer(Protocol):
    """A bound socketserver server served by a pool (:class:`prefork.PreforkMixIn` is one).

    socketserver's part: ``socket``, ``server_address``, ``request_queue_size`` and the
    request path (``get_request`` -> ``verify_request`` -> ``process_request`` ->
    ``finish_request`` -> ``shutdown_request``, ``handle_error``). prefork's part: the
    settings (see :mod:`prefork.config`), ``listeners`` (the other servers the same pool
    accepts on), ``worker`` and ``scoreboard`` (set by the pool), ``post_fork``.
    """

    socket: socket.socket
    server_address: Any
    request_queue_size: int
    # The settings the master and the workers read (prefork.config declares each one).
    workers: int | None
    min_workers: int | None
    max_workers: int | None
    worker_class: str
    threads: int
    accept: str
    graceful_timeout: float
    shutdown_delay: float
    request_timeout: float
    max_requests: int
    max_requests_jitter: int
    max_worker_memory: int
    gc_freeze: bool
    scoreboard_file: str | None
    socket_timeout: float
    read_min_rate: int
    read_deadline: float
    defer_accept: float | None
    allow: tuple[Network, ...]
    deny: tuple[Network, ...]
    control_socket: str | None
    metrics: str | None
    log_format: str
    access_log: str | None
    proc_name: str | None
    pidfile: str | None
    user: int | None
    group: int | None
    umask: int | None
    #: The worker object serving, in a worker process; None in the master.
    worker: Any
    #: The pool's scoreboard while the pool runs, else None.
    scoreboard: Scoreboard | None
    #: The access log while the pool runs (the ``access_log`` setting), else None.
    access: AccessLog | None
    #: The handler logs each request itself (a WSGI server): the worker logs a connection
    #: only when it ended in an error.
    logs_requests: bool
    #: process_request() only hands the request to the worker class (set in each worker).
    hands_over: bool
    #: verify_request() is trivially True: the worker skips it (set in each worker).
    verifies_everyone: bool
    #: The class an accepted connection with a timeout is given (set by the master).
    request_socket: type[SocketType]
    #: The TLS and PROXY settings (prefork.config.edge), and the edge the master sets up (a
    #: prefork.edge.Edge, which imports this module; None when off).
    certfile: str | None
    keyfile: str | None
    ca_certs: str | None
    cert_reqs: str
    ciphers: str | None
    tls_min_version: str
    proxy_protocol: str
    proxy_allow: tuple[Network, ...] | None
    edge: Any

    @property
    def listeners(self) -> Sequence[PoolServer]:
        """The other bound servers whose sockets the same pool accepts on."""

    def fileno(self) -> int:
        """The listening socket's file descriptor."""

    def get_request(self) -> tuple[Any, Any]:
        """Accept one request (socketserver's)."""

    def verify_request(self, request: _RequestType, client_address: _RetAddress) -> bool:
        """Whether to process the request (socketserver's)."""

    def process_request(self, request: _RequestType, client_address: _RetAddress) -> None:
        """Process the request (socketserver's; in a worker, as the worker class does)."""

    def finish_request(self, request: _RequestType, client_address: _RetAddress) -> None:
        """Run the handler on the request (socketserver's)."""

    def shutdown_request(self, request: _RequestType) -> None:
        """Shut down and close the request (socketserver's)."""

    def handle_error(self, request: _RequestType, client_address: _RetAddress) -> None:
        """Handle an exception of the request path (socketserver's)."""

    def service_actions(self) -> None:
        """The master loop's hook (socketserver's)."""

    def verify_request_is_trivial(self) -> bool:
        """Whether verify_request() returns True for every request (no rule, no override)."""

    def process_request_is_plain(self) -> bool:
        """Whether process_request() only hands the request to the worker class."""

    def post_fork(self, worker: Any) -> None:
        """Called in each worker after the fork, before it serves."""

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of the pool's stream sockets (None: no TLS); in the master."""


def pool_servers(server: PoolServer) -> list[PoolServer]:
    """Every server the pool accepts on: ``server`` first, then its ``listeners``."""
    return [server, *server.listeners]
