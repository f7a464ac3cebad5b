"""PreforkMixIn and the Prefork*Server classes: the socketserver-facing layer.

``PreforkMixIn`` is to a pool of preforked workers what ``socketserver.ForkingMixIn`` is to a
process per request. Mixed in front of any socketserver server class, it keeps the base class's
contract and changes where requests are processed::

    class PreforkTCPServer(PreforkMixIn, socketserver.TCPServer): ...
    class MyRPC(PreforkMixIn, xmlrpc.server.SimpleXMLRPCServer): ...

The request path, in each worker (as ``BaseServer`` documents it)::

    get_request() -> verify_request() -> process_request() -> finish_request()
        -> RequestHandlerClass(request, client_address, server): setup(), handle(), finish()
        -> shutdown_request() -> close_request()

with ``handle_error()`` on an exception. The master (the process that created the server)
binds and activates the socket in the constructor, before any fork; ``serve_forever()`` forks
the pool and supervises it; ``service_actions()`` reaps and restarts workers; the master never
runs handler code. ``handle_request()`` keeps ForkingMixIn's meaning: one request, handled in a
child forked for it.
"""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prefork import config, connections, sockets
from prefork.config.attributes import SettingAttributes
from prefork.master import Master

if TYPE_CHECKING:
    import ssl
    from _socket import _RetAddress
    from socketserver import _RequestType

    from prefork.accesslog import AccessLog
    from prefork.edge import Edge
    from prefork.scoreboard import Scoreboard
    from prefork.workers.base import Worker

    # Every socketserver server class derives from TCPServer, which has socket and fileno().
    _Base = socketserver.TCPServer
else:
    _Base = object

log = logging.getLogger("prefork")


class PreforkMixIn(SettingAttributes, _Base):
    """Mix-in that serves requests from a supervised pool of preforked worker processes.

    Settings are class attributes, as socketserver's are, and keyword-only constructor
    arguments override them for one instance (``PreforkTCPServer(addr, Handler, workers=4)``);
    see :mod:`prefork.config` for each one's meaning:

    - ``workers`` (int or None: the number of usable CPUs), ``worker_class`` (str, ``"sync"``),
      ``graceful_timeout`` (seconds, 30), ``request_queue_size`` (the backlog, 2048; the
      socketserver default of 5 loses connections under any burst), ``proc_name`` (str).

    A setting given as a class attribute may take any form its flag takes (``workers = "2"``,
    ``max_worker_memory = "512M"``): it is converted when used. A bad value raises ValueError
    from the constructor (or from ``serve_forever()`` for a bad class attribute, except those
    the constructor itself uses, ``request_queue_size`` and ``unix_socket_mode``).

    Methods for the caller (in the master): ``serve_forever()``, ``shutdown()``,
    ``handle_request()``, ``server_close()``, and the context-manager protocol.

    Methods that may be overridden: ``post_fork()`` (in each worker, before serving),
    ``handle_error()``, and all of the base class's (``verify_request()``,
    ``finish_request()``, ``server_bind()``, ...). May be extended: ``service_actions()``
    (runs in the master loop), ``server_close()``.

    Attributes: ``worker`` (the :class:`~prefork.workers.Worker` serving, in a worker process;
    None in the master); ``listeners`` (a list of other bound prefork servers whose sockets
    the same pool accepts on, each request going to the server it arrived on).
    """

    #: The class an accepted connection with a timeout is given (:meth:`get_request`); the
    #: master sets each pool server's, with its read rules, before forking.
    request_socket: type[socket.socket] = connections.RequestSocket
    #: The pool's edge (PROXY header, TLS; :mod:`prefork.edge`), set by the master before
    #: forking; None when neither is on.
    edge: Edge | None = None
    #: As ForkingMixIn's: server_close() waits for the children of handle_request().
    block_on_close: bool = True
    #: As ForkingMixIn's: at most this many children of handle_request() at once; forking
    #: another first waits for the oldest to exit.
    max_children: int = 40
    #: As ForkingMixIn's: the seconds ``handle_request()`` waits for a request before calling
    #: ``handle_timeout()`` (BaseServer's default is None, no limit).
    timeout: float | None = 300
    #: The Worker serving, set in each worker process; None in the master.
    worker: Worker | None = None
    #: True in a worker if :meth:`verify_request` is trivially True once ``post_fork()`` has
    #: run (see :meth:`verify_request_is_trivial`): the worker then skips the call, two frames
    #: less per request (docs/performance.md). Set the ``allow`` and ``deny`` networks, or
    #: replace ``verify_request``, before the workers are forked or in ``post_fork()``.
    verifies_everyone: bool = False
    #: process_request() only hands the request to the worker class: the worker does it.
    hands_over: bool = False
    #: The pool's scoreboard while ``serve_forever()`` runs (master and workers), else None.
    scoreboard: Scoreboard | None = None
    #: The ``access_log`` while ``serve_forever()`` runs (master and workers), else None.
    access: AccessLog | None = None
    #: The handler writes a line per request to ``access`` (a WSGI server), the worker one
    #: per connection only when it ended in an error.
    logs_requests: bool = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        for setting in config.SETTINGS:
            if setting.name in kwargs:
                setattr(self, setting.name, setting.validate(kwargs.pop(setting.name)))
        for setting in config.CONSTRUCTOR_SETTINGS:  # used before serve_forever() converts the rest
            setattr(self, setting.name, setting.validate(getattr(self, setting.name)))
        self.listeners: list[PreforkMixIn] = []
        self._master: Master | None = None
        self._children: set[int] = set()  # handle_request() children
        self._shutdown_request = False
        self._is_shut_down = threading.Event()
        #: The base class's get_request(), bound once: a zero-argument super() call costs as
        #: much again per request (docs/performance.md).
        self._accept: Callable[[], tuple[Any, Any]] | None = getattr(super(), "get_request", None)
        super().__init__(*args, **kwargs)

    # -- for the caller, in the master -------------------------------------------------------

    @property
    def active_children(self) -> set[int]:
        """The pids of the live children of this server, as ForkingMixIn's attribute: the
        pool's workers while ``serve_forever()`` runs, and the children of
        ``handle_request()`` not yet reaped. Empty in a worker and after ``server_close()``.
        (ForkingMixIn's is None before its first child; this one is always a set.)"""
        if self.worker is not None:
            return set()
        master = self._master
        workers = {record.pid for record in master.pool} if master is not None else set()
        return workers | self._children

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Fork the pool and supervise it until ``shutdown()`` or a stop signal. Runs in the master.

        ``poll_interval`` (seconds) bounds each wait of the master loop, as in
        ``BaseServer.serve_forever``. From the main thread, the master's signal handlers
        (TERM, INT, QUIT, HUP, TTIN, TTOU, CHLD, USR1, USR2) are installed for the call and restored after;
        from another thread none are, and ``shutdown()`` stops it. On return every worker has
        exited and been reaped.

        Each setting is validated and converted first (a class attribute may be given in any
        form its flag takes, such as ``workers = "2"`` or ``max_worker_memory = "512M"``); the
        instance then holds the converted value. A stop by signal (TERM, INT, QUIT) ends the
        server: the master closes its listening sockets so that connections are refused, and
        ``serve_forever()`` cannot run again (``shutdown()`` keeps them). Raises ValueError
        for an invalid setting or a closed listening socket,
        :class:`~prefork.errors.WorkerBootError` when workers failed to boot repeatedly, and
        :class:`~prefork.errors.PreforkError` when the ``pidfile`` or ``scoreboard_file``
        cannot be written.
        """
        sock = getattr(self, "socket", None)
        if sock is not None and sock.fileno() == -1:
            raise ValueError("the listening socket is closed (server_close(), or a stop by signal)")
        self._is_shut_down.clear()
        try:
            for setting in config.SETTINGS:  # class attributes may be strings, as flags are
                setattr(self, setting.name, setting.validate(getattr(self, setting.name)))
            self._master = Master(self, poll_interval)
            if self._shutdown_request:
                self._master.request_shutdown()
            self._master.run()
        finally:
            self._master = None
            self._shutdown_request = False
            self._is_shut_down.set()

    def shutdown(self) -> None:
        """Stop ``serve_forever()`` gracefully (as TERM) and wait until it has returned.

        Call it from another thread than the one running ``serve_forever()``, as with
        ``BaseServer.shutdown``; in-flight requests finish within ``graceful_timeout``.
        """
        self._shutdown_request = True
        master = self._master
        if master is not None:
            master.request_shutdown()
        self._is_shut_down.wait()

    def server_close(self) -> None:
        """Close the listening socket; in the master, also wait for the children of
        ``handle_request()`` when ``block_on_close`` (as ForkingMixIn), leaving no zombie.

        A pool still running (``serve_forever()`` in another thread) is stopped first.
        May be extended.
        """
        if self.worker is None and self._master is not None:
            self.shutdown()
        super().server_close()
        if self.worker is None:
            self.collect_children(blocking=self.block_on_close)

    # -- hooks -------------------------------------------------------------------------------

    def server_bind(self) -> None:
        """Bind the socket, as the base class does; called by the constructor, in the master.

        When this process was handed listening sockets (systemd socket activation, or the old
        master of a USR2 upgrade; see :mod:`prefork.systemd`), the first one of the same
        address family and type is adopted instead of binding a new one, whatever
        ``server_address`` says. A Unix socket bound here gets the ``unix_socket_mode``
        setting's file mode. May be extended.
        """
        own = getattr(self, "socket", None)  # a server class may bind without one (a mock)
        inherited = sockets.adopt_inherited_socket(own.family, own.type) if own is not None else None
        if inherited is not None:
            self.socket.close()
            self.socket = inherited
            log.info("Using the inherited socket %s (fd %d)", inherited.getsockname(), inherited.fileno())
        super().server_bind()
        mode = self.unix_socket_mode
        if inherited is None and mode is not None and own is not None and own.family == socket.AF_UNIX:
            os.chmod(self.server_address, mode)  # type: ignore[arg-type]

    def get_request(self) -> tuple[Any, Any]:
        """Accept a request, as the base class does; an accepted connection gets the
        ``socket_timeout`` setting as its timeout (``settimeout``; 0 means blocking, which
        accept() gives already, so no call is made). When the connection will have a timeout
        (this setting, or the handler class's ``timeout`` as StreamRequestHandler's), a plain
        ``socket.socket`` becomes a :class:`~prefork.connections.RequestSocket` of this
        server's ``request_socket`` class (no system call), whose recv and send poll() only
        when they would block (CPython's poll before each call) and whose reads then apply
        the ``read_min_rate`` and ``read_deadline`` rules (and ``defer_accept``'s). Runs in
        the worker. May be extended."""
        request, client_address = (self._accept or super().get_request)()
        timeout = self.socket_timeout or None
        if type(request) is socket.socket:
            if timeout:
                request.__class__ = self.request_socket
                request.settimeout(timeout)
                if self.edge is None:
                    return request, client_address
                return self.edge.accept(self, request, client_address)  # PROXY header, TLS
            if getattr(self.RequestHandlerClass, "timeout", None):
                request.__class__ = self.request_socket
        if isinstance(request, socket.socket) and request.gettimeout() != timeout:
            request.settimeout(timeout)
        if self.edge is not None:
            return self.edge.accept(self, request, client_address)
        return request, client_address

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of the pool's stream sockets, or None for no TLS: by default built
        from the ``certfile``, ``keyfile``, ``ca_certs``, ``cert_reqs``, ``ciphers`` and
        ``tls_min_version`` settings (:func:`prefork.tls.build_context`). Called in the master
        before forking and on each HUP (the new workers get the new context); raises
        ValueError or OSError, saying why, for a context that cannot be built. May be
        overridden: return your own ``ssl.SSLContext`` (server side), as gunicorn's
        ``ssl_context`` hook."""
        if self.certfile is None:
            return None
        from prefork.tls import build_context

        return build_context(
            self.certfile, self.keyfile, self.ca_certs, self.cert_reqs, self.ciphers, self.tls_min_version
        )

    def verify_request(self, request: _RequestType, client_address: _RetAddress) -> bool:
        """Return False for a client outside the ``allow`` networks (when any are set) or in
        the ``deny`` networks; the request is then closed unprocessed and counted in the
        worker's scoreboard slot as denied. Clients of Unix sockets are always allowed.
        Runs in the worker. May be extended (call ``super().verify_request()``)."""
        if (
            (self.allow or self.deny)
            and self.address_family != socket.AF_UNIX
            and isinstance(client_address, tuple)
        ):
            import ipaddress  # imported already: the allow and deny settings hold its networks

            try:
                address = ipaddress.ip_address(str(client_address[0]).partition("%")[0])
            except ValueError:
                return False
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            if any(address in network for network in self.deny):
                return False
            if self.allow and not any(address in network for network in self.allow):
                return False
        return super().verify_request(request, client_address)

    def verify_request_is_trivial(self) -> bool:
        """Whether :meth:`verify_request` returns True for every request: no ``allow`` or
        ``deny`` networks, and neither this server (an instance attribute), its class nor one
        after the mixin in its MRO overrides it. Each worker stores the answer in
        ``verifies_everyone`` once ``post_fork()`` has run."""
        if "verify_request" in vars(self):
            return False
        mine = getattr(type(self).verify_request, "__func__", type(self).verify_request)
        after = getattr(super().verify_request, "__func__", None)
        trivial = mine is PreforkMixIn.verify_request and after is socketserver.BaseServer.verify_request
        return trivial and not (self.allow or self.deny)

    def process_request_is_plain(self) -> bool:
        """Whether :meth:`process_request` is this mixin's, not extended on the instance, its
        class or after the mixin in its MRO: then it only hands the request to the worker, and
        each worker (``hands_over`` set once ``post_fork()`` has run) calls the worker class's
        ``process_request`` itself, a frame fewer per request."""
        if "process_request" in vars(self):
            return False
        mine = getattr(type(self).process_request, "__func__", type(self).process_request)
        return mine is PreforkMixIn.process_request

    def service_actions(self) -> None:
        """Reap exited workers and restart them; collect ``handle_request()`` children.

        Called by the master loop at least every ``poll_interval`` seconds and whenever a
        worker exits or a signal arrives, as ForkingMixIn's is by ``serve_forever()``. Runs in
        the master. May be extended (call ``super().service_actions()``).
        """
        super().service_actions()
        if self._master is not None:
            self._master.maintain()
        if self._children:
            self.collect_children()

    def handle_timeout(self) -> None:
        """Collect ``handle_request()`` children, as ForkingMixIn's. May be extended."""
        super().handle_timeout()
        self.collect_children()

    def post_fork(self, worker: Worker) -> None:
        """Called in each worker right after it is forked, before it serves (as gunicorn's
        ``post_fork``). Does nothing by default. May be overridden.

        An exception here is a boot failure: the worker exits with status 3 and is forked
        again after a growing delay; after 5 failures in a row ``serve_forever()`` stops the
        pool and raises :class:`~prefork.errors.WorkerBootError` naming the exception.
        """

    def handle_error(self, request: _RequestType, client_address: _RetAddress) -> None:
        """Log the exception being handled, with its traceback, on the ``prefork`` logger.

        What a client causes is one line without a traceback, so a misbehaving client cannot
        flood the log: a ``ConnectionError`` (reset, broken pipe) at DEBUG, a ``TimeoutError``
        (the ``socket_timeout`` expired) at INFO. Runs in the worker that processed the
        request (BaseServer's prints every traceback to stderr instead). The worker goes on
        serving. May be overridden.

        A ``handle_error`` defined by a server class after this mixin in the MRO (``class
        S(PreforkMixIn, MyServer)``) wins: it is called instead, as it would be with
        ForkingMixIn, which defines none; this default applies only where the next one is
        BaseServer's.
        """
        base = super().handle_error
        if getattr(base, "__func__", None) is not socketserver.BaseServer.handle_error:
            base(request, client_address)
            return
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            log.debug("Connection from %s lost: %s", client_address, error)
        elif isinstance(error, TimeoutError):
            log.info("Request from %s timed out: %s", client_address, error)
        else:
            log.exception("Error processing request from %s", client_address)

    def process_request(self, request: _RequestType, client_address: _RetAddress) -> None:
        """Process one request.

        In a worker: as the worker class does (``sync``: ``finish_request()`` then
        ``shutdown_request()`` in the worker). In the master (``handle_request()``): in a
        child forked for this request, as ForkingMixIn, where an exception goes to
        ``handle_error()`` and even ``SystemExit`` never reaches the master.

        Do not override: choose a worker class, or override ``finish_request()`` or the
        handler. (Under ``handle_request()``, ``get_request()`` and ``verify_request()``
        run in the master, as with ForkingMixIn; under ``serve_forever()``, in the workers.)
        """
        if self.worker is not None:
            self.worker.process_request(self, request, client_address)
            return
        self.collect_children()
        pid = os.fork()
        if pid:
            self._children.add(pid)
            self.close_request(request)
            return
        status = 1  # the child: it must never return, hence os._exit()
        try:
            self.finish_request(request, client_address)
            status = 0
        except Exception:
            self.handle_error(request, client_address)
        finally:
            try:
                self.shutdown_request(request)
            finally:
                os._exit(status)

    def collect_children(self, *, blocking: bool = False) -> None:
        """Reap the children of ``handle_request()`` that exited (all of them if
        ``blocking``), each by its pid. Runs in the master."""
        for pid in list(self._children):
            try:
                done, _ = os.waitpid(pid, 0 if blocking else os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self._children.discard(pid)
        while len(self._children) >= self.max_children:  # as ForkingMixIn: wait for room
            oldest = next(iter(self._children))
            try:
                os.waitpid(oldest, 0)
            except ChildProcessError:
                pass
            self._children.discard(oldest)


class PreforkTCPServer(PreforkMixIn, socketserver.TCPServer):
    """A TCP server whose requests are served by a pool of preforked workers.

    ``allow_reuse_address`` is on (a restarted server can bind at once).
    """

    allow_reuse_address = True


class PreforkUDPServer(PreforkMixIn, socketserver.UDPServer):
    """A UDP server whose datagrams are served by a pool of preforked workers."""


class PreforkUnixStreamServer(PreforkMixIn, socketserver.UnixStreamServer):
    """A Unix stream socket server served by a pool of preforked workers."""


class PreforkUnixDatagramServer(PreforkMixIn, socketserver.UnixDatagramServer):
    """A Unix datagram socket server served by a pool of preforked workers."""
