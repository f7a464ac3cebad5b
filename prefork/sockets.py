"""Listening addresses: parsing the CLI's ``--bind`` values and describing bound sockets."""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from prefork import systemd

if TYPE_CHECKING:
    from prefork.contract import PoolServer

log = logging.getLogger("prefork")

_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d+)$")


class Address(NamedTuple):
    """A parsed ``--bind`` value: address family, socketserver ``server_address``, datagrams."""

    family: socket.AddressFamily
    server_address: tuple[str, int] | str
    datagram: bool = False


def parse_address(text: str, datagram: bool = False) -> Address:
    """Parse ``HOST:PORT``, ``[IPV6]:PORT``, ``unix:PATH``, with an optional ``tcp://`` or
    ``udp://`` scheme (``udp://`` selects datagrams, as ``datagram=True`` does).

    An empty HOST (``:8000``) means every IPv4 address. Raises ValueError naming the value
    and the accepted forms.
    """
    rest = text
    scheme, sep, after = text.partition("://")
    if sep:
        if scheme not in ("tcp", "udp"):
            raise ValueError(f"bad address {text!r}: unknown scheme {scheme!r} (use tcp:// or udp://)")
        datagram = datagram or scheme == "udp"
        rest = after
    if rest.startswith("unix:"):
        path = rest[len("unix:") :]
        if not path:
            raise ValueError(f"bad address {text!r}: unix: needs a path")
        return Address(socket.AF_UNIX, path, datagram)
    match = _HOST_PORT.match(rest)
    if match is None:
        raise ValueError(f"bad address {text!r}: expected HOST:PORT, [IPV6]:PORT or unix:PATH")
    port = int(match["port"])
    if port > 65535:
        raise ValueError(f"bad address {text!r}: port {port} is out of range 0-65535")
    if match["v6"] is not None:
        return Address(socket.AF_INET6, (match["v6"], port), datagram)
    return Address(socket.AF_INET, (match["host"], port), datagram)


def is_http_handler(handler: object) -> bool:
    """Whether ``handler`` is an http.server request handler class (XML-RPC's included).
    Imports nothing: if ``http.server`` is not imported, no handler can be one."""
    http = sys.modules.get("http.server")
    return http is not None and isinstance(handler, type) and issubclass(handler, http.BaseHTTPRequestHandler)


def is_wsgi_handler(handler: object) -> bool:
    """Whether ``handler`` is a WSGI request handler class (:mod:`prefork.wsgi`). Imports
    nothing."""
    wsgi = sys.modules.get("prefork.wsgi.handler")
    return wsgi is not None and isinstance(handler, type) and issubclass(handler, wsgi.WSGIRequestHandler)


def speaks_http(server: PoolServer) -> bool:
    """Whether ``server`` speaks HTTP: an ``http.server`` or ``xmlrpc.server`` server, or
    one whose ``RequestHandlerClass`` is an http.server or WSGI handler."""
    http, xmlrpc = sys.modules.get("http.server"), sys.modules.get("xmlrpc.server")
    return bool(
        (http is not None and isinstance(server, http.HTTPServer))
        or (xmlrpc is not None and isinstance(server, xmlrpc.SimpleXMLRPCServer))
        or is_http_handler(getattr(server, "RequestHandlerClass", None))
        or is_wsgi_handler(getattr(server, "RequestHandlerClass", None))
    )


def describe(server: PoolServer) -> str:
    """Return where ``server`` listens, e.g. ``http://127.0.0.1:8000``, ``udp://[::1]:53``,
    ``unix:/run/app.sock`` (``unix:PATH (http)`` for HTTP, ``unix:PATH (datagram)``), with TLS
    ``https://``, ``tls://``, ``unix:PATH (https)`` or ``(tls)``. Reads the bound socket, so
    port 0 shows the port chosen."""
    sock: socket.socket = server.socket
    datagram = sock.type == socket.SOCK_DGRAM
    name = sock.getsockname()
    edge = getattr(server, "edge", None)
    tls = edge is not None and edge.tls is not None
    scheme = (
        "udp"
        if datagram
        else ("https" if tls else "http")
        if speaks_http(server)
        else "tls"
        if tls
        else "tcp"
    )
    if sock.family == socket.AF_UNIX:
        path = name.decode() if isinstance(name, bytes) else name
        kind = " (datagram)" if datagram else f" ({scheme})" if scheme != "tcp" else ""
        return f"unix:{path}{kind}"
    host, port = name[0], name[1]
    if sock.family == socket.AF_INET6:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


#: Environment variable holding "PID:FD,FD,..": listening sockets handed to process PID (by
#: systemd socket activation or a USR2 upgrade) that no server has adopted yet.
INHERITED_FDS_ENV = "PREFORK_INHERITED_FDS"


class InheritedSocket(socket.socket):
    """A listening socket handed to this process, already bound: ``bind()`` does nothing,
    so the server class's own ``server_bind()`` runs unchanged around it."""

    def bind(self, address: object) -> None:
        """Do nothing: the socket is bound already."""


def _inherited_fds() -> list[int]:
    fds = systemd.listen_fds()
    if fds:
        os.environ[INHERITED_FDS_ENV] = f"{os.getpid()}:" + ",".join(map(str, fds))
    pid, _, listed = os.environ.get(INHERITED_FDS_ENV, "").partition(":")
    if pid != str(os.getpid()):
        return []
    return [int(fd) for fd in listed.split(",") if fd]


def inherited_sockets() -> list[socket.socket]:
    """Return the listening sockets handed to this process and not adopted yet, in order.

    Each is a duplicate (``os.dup``) for inspection (family, type, ``getsockname()``): the
    caller owns and closes it; the inherited descriptor itself stays for
    :func:`adopt_inherited_socket`. Runs in the master.
    """
    return [socket.socket(fileno=os.dup(fd)) for fd in _inherited_fds()]


def adopt_inherited_socket(family: int, kind: int) -> InheritedSocket | None:
    """Take the first inherited listening socket of this ``family`` and ``kind`` (e.g.
    ``AF_INET``, ``SOCK_STREAM``), or return None. Each socket is adopted once.

    Inherited sockets come from systemd socket activation (``LISTEN_FDS``, see
    :func:`prefork.systemd.listen_fds`) or from the old master of a USR2 upgrade.
    Runs in the master.
    """
    fds = _inherited_fds()
    for fd in fds:
        sock = InheritedSocket(fileno=fd)
        if sock.family == family and sock.type == kind:
            rest = [str(other) for other in fds if other != fd]
            os.environ[INHERITED_FDS_ENV] = f"{os.getpid()}:" + ",".join(rest)
            return sock
        sock.detach()
    return None


#: Where Linux says whether a closing SO_REUSEPORT listener's queued connections migrate to
#: another listener of its group (1) or are reset (0, the default).
TCP_MIGRATE_REQ = "/proc/sys/net/ipv4/tcp_migrate_req"


def reuseport_unsupported(sock: socket.socket) -> str | None:
    """Why ``sock`` cannot have per-worker SO_REUSEPORT copies (the ``reuseport`` accept
    strategy), or None when it can: only TCP/UDP sockets bound here (not inherited from
    systemd or an old master), on a system with SO_REUSEPORT. Runs in the master."""
    if not hasattr(socket, "SO_REUSEPORT"):
        return "SO_REUSEPORT is not available"
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return "not a TCP or UDP socket"
    if isinstance(sock, InheritedSocket):
        return "an inherited socket"
    return None


def tcp_migrate_req(path: str = TCP_MIGRATE_REQ) -> bool | None:
    """Whether ``net.ipv4.tcp_migrate_req`` is on (read from ``path``); None when unknown
    (not Linux >= 5.14, or unreadable)."""
    try:
        with open(path) as file:
            return file.read().strip() != "0"
    except (OSError, ValueError):
        return None


def reuseport_socket(original: socket.socket, backlog: int) -> socket.socket:
    """Return a new non-blocking socket bound to ``original``'s address in one SO_REUSEPORT
    group with it (listening with ``backlog`` for a stream socket), for one worker.

    ``original`` (bound and, for a stream socket, listening) gets SO_REUSEPORT too, so that
    the kernel admits the new socket to its port: it is then a member of the group, and the
    kernel hashes connections over all members, so it must be accepted on as well (worker 0
    does). The copy keeps ``original``'s SO_REUSEADDR, IPV6_V6ONLY and TCP_DEFER_ACCEPT. Runs
    in the master. Raises OSError when the address cannot be shared.
    """
    original.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock = socket.socket(original.family, original.type, original.proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reuse_address = original.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuse_address)
        if original.family == socket.AF_INET6:
            v6only = original.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        sock.bind(original.getsockname())
        if sock.type == socket.SOCK_STREAM:
            defer = getattr(socket, "TCP_DEFER_ACCEPT", None)  # the original's deferred accept
            if defer is not None and original.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, defer, original.getsockopt(socket.IPPROTO_TCP, defer))
            sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class ReuseportSockets:
    """The per-worker SO_REUSEPORT listening sockets of the ``reuseport`` accept strategy,
    kept by the master. Created in the master by :meth:`create` (None when the strategy
    cannot apply).

    ``servers`` are the servers the pool accepts on. Worker 0 accepts on the servers' own
    sockets; worker K > 0 on copies (one per server, :func:`reuseport_socket`) created on
    first use and kept across K's replacements (which inherit their queue) until the pool
    shrinks below K (:meth:`close_from`) or stops (:meth:`close`).
    """

    def __init__(self, servers: Sequence[PoolServer]) -> None:
        self.servers = list(servers)
        self._copies: dict[int, list[socket.socket]] = {}  # by worker number

    @classmethod
    def create(cls, servers: Sequence[PoolServer]) -> ReuseportSockets | None:
        """The sockets for ``servers``, or None (logged) when one of them cannot have
        SO_REUSEPORT copies (see :func:`reuseport_unsupported`). Warns once when queued
        connections of a closing socket would be reset (``tcp_migrate_req`` 0). Runs in the
        master."""
        for server in servers:
            why = reuseport_unsupported(server.socket)
            if why is not None:
                log.info("accept=reuseport: %s is %s; using shared sockets", describe(server), why)
                return None
        if tcp_migrate_req() is False:
            log.warning(
                "accept=reuseport with net.ipv4.tcp_migrate_req=0: connections queued on a worker's "
                "socket are reset when the pool shrinks or stops (sysctl -w net.ipv4.tcp_migrate_req=1)"
            )
        return cls(servers)

    def for_worker(self, number: int) -> list[socket.socket] | None:
        """Worker ``number``'s listening sockets, one per server; None (logged) when they
        cannot be created: the worker then shares worker 0's. Runs in the master."""
        if number == 0:
            return [server.socket for server in self.servers]
        if number not in self._copies:
            socks: list[socket.socket] = []
            try:
                for server in self.servers:
                    backlog = server.request_queue_size
                    socks.append(reuseport_socket(server.socket, backlog))
            except OSError as exc:
                log.error("Worker %d: cannot create a reuseport socket (%s); sharing worker 0's", number, exc)
                for sock in socks:
                    sock.close()
                return None
            self._copies[number] = socks
        return self._copies[number]

    def close_from(self, first: int) -> None:
        """Close the sockets of worker numbers ``first`` and above (the pool shrank). A
        retiring worker's own copies stay open in it until it exits."""
        for number in [n for n in self._copies if n >= first]:
            for sock in self._copies.pop(number):
                sock.close()

    def close(self) -> None:
        """Close every copy (the pool stopped)."""
        self.close_from(0)

    def copies(self) -> list[socket.socket]:
        """Every per-worker copy the master holds (each has its own accept queue)."""
        return [sock for socks in self._copies.values() for sock in socks]

    def use_in_worker(self, own: list[socket.socket] | None) -> None:
        """In a freshly forked worker: with ``own`` (its sockets, one per server, from
        :meth:`for_worker`), each server's ``socket`` becomes its own one; the copies that
        are not its own are closed (all of them for a worker sharing worker 0's: None)."""
        if own is not None:
            for server, sock in zip(self.servers, own, strict=True):
                if server.socket is not sock:
                    server.socket.close()
                    server.socket = sock
        for socks in self._copies.values():
            for sock in socks:
                if own is None or sock not in own:
                    sock.close()
