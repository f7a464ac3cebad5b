"""The edge of each connection: the PROXY header of a load balancer, then TLS.

The master sets up one :class:`Edge` for the pool's stream servers before forking
(:func:`setup_edge`, again on HUP: new certificate files are read for the new workers) from
the first server's settings and its :meth:`~prefork.server.PreforkMixIn.ssl_context` hook; a
bad certificate is a :class:`~prefork.errors.PreforkError` at start (one line, exit 2) and a
failed reload on HUP (the workers serve on). In a worker, ``get_request()`` passes each
accepted connection to :meth:`Edge.accept`: the PROXY header is read first (as the spec
orders, before TLS and before ``verify_request``, so ``client_address``, allow/deny and the
logs see the original client), then the socket is wrapped for TLS without a handshake (no
I/O); the worker class makes the handshake (:meth:`Edge.handshake`) before
``finish_request()``, in the worker process (sync) or the connection's thread (thread), never
in the accept loop. A connection refused
at the edge is closed unprocessed, counted in the worker's scoreboard slot, and logged in one
line.
"""

from __future__ import annotations

import logging
import socket
import sys
import time
from typing import TYPE_CHECKING, Any, cast

from prefork.connections import RejectedConnection, RequestSocket
from prefork.errors import PreforkError

if TYPE_CHECKING:
    import ssl

    from prefork.config.convert import Network
    from prefork.contract import PoolServer

log = logging.getLogger("prefork")

#: Seconds a connection's PROXY header and TLS handshake may take in all, when the server
#: sets no ``socket_timeout``.
EDGE_TIMEOUT = 10.0
#: Seconds a PROXY header may take at most: a balancer sends it with the connection, and it
#: is read in the accept loop (the thread worker's other threads wait meanwhile).
PROXY_TIMEOUT = 2.0


class Edge:
    """The edge of a pool's stream connections: ``tls`` (the context; None: no TLS),
    ``proxy`` (the ``proxy_protocol`` setting: ``off``, ``v1``, ``v2``, ``auto``), ``allow``
    (the peers that may send a PROXY header; None: loopback) and ``limit`` (seconds the
    header and the handshake may take, each). Built by the master, used in the workers."""

    def __init__(
        self, tls: ssl.SSLContext | None, proxy: str, allow: tuple[Network, ...] | None, limit: float
    ) -> None:
        self.tls = tls
        self.proxy = proxy
        self.limit = limit
        if proxy != "off":
            import ipaddress

            self.allow = (
                allow if allow is not None else tuple(map(ipaddress.ip_network, ("127.0.0.0/8", "::1")))
            )

    def accept(self, server: PoolServer, request: Any, client_address: Any) -> tuple[Any, Any]:
        """The accepted connection ``request`` from ``client_address`` past the edge: the
        client's address from its PROXY header, the socket wrapped for TLS. Raises
        :class:`~prefork.connections.RejectedConnection` (an OSError, as a failed accept)
        having closed and counted a connection without a valid PROXY header, or from a peer
        not allowed to send one. Runs in the worker."""
        if self.proxy != "off":
            client_address = self._read_proxy(server, request, client_address)
        if self.tls is not None:
            request = self.tls.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        return request, client_address

    def _read_proxy(self, server: PoolServer, request: socket.socket, client_address: Any) -> Any:
        from prefork import proxyproto

        try:
            if request.family != socket.AF_UNIX and not self._allowed(client_address):
                raise proxyproto.ProxyHeaderError("a PROXY header from a peer not in proxy_allow")
            found = proxyproto.read_header(
                request, self.proxy, time.monotonic() + min(self.limit, PROXY_TIMEOUT)
            )
        except (proxyproto.ProxyHeaderError, OSError) as exc:
            _count(server, "count_proxy_refused")
            log.info("Closed a connection from %s: %s (proxy_protocol %s)", client_address, exc, self.proxy)
            server.shutdown_request(request)
            raise RejectedConnection(str(exc)) from None
        return client_address if found is None else found

    def _allowed(self, client_address: Any) -> bool:
        import ipaddress

        try:
            address = ipaddress.ip_address(str(client_address[0]).partition("%")[0])
        except (ValueError, TypeError, IndexError):
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.allow)

    def finish_tls(self, server: PoolServer, request: Any, client_address: Any) -> bool:
        """The TLS part of a worker's request: the handshake, ``finish_request()``, then the
        close_notify alert. False when the handshake failed: the request was not processed
        (the worker counts it; the caller shuts the connection down either way). Runs in the
        worker, or the connection's thread."""
        if not self.handshake(request, client_address):
            return False
        server.finish_request(request, client_address)
        close_notify(request)
        return True

    def handshake(self, request: Any, client_address: Any) -> bool:
        """Make the TLS handshake of ``request`` within :attr:`limit` seconds in all; False
        (one DEBUG line) when it failed: the worker then counts it and closes the connection
        unprocessed. Runs in the worker, or the connection's thread (the worker classes call
        it before ``finish_request()``)."""
        from prefork import tls

        try:
            tls.handshake(request, time.monotonic() + self.limit)
        except OSError as exc:  # ssl.SSLError, TimeoutError, a reset
            log.debug("TLS handshake with %s failed: %s", client_address, exc)
            return False
        return True


def close_notify(request: Any) -> None:
    """Send the TLS ``close_notify`` alert on ``request`` before it is shut down, without
    waiting for the client's (non-blocking): a client then tells a complete answer from a
    cut connection (OpenSSL 3 reports "unexpected eof" otherwise). Errors are ignored: the
    connection is closed next anyway. Runs in the worker, or the connection's thread."""
    try:
        request.settimeout(0.0)
        request.unwrap()
    except (OSError, ValueError):  # want-read (the client's alert not there yet), a reset
        pass


def _count(server: PoolServer, counter: str) -> None:
    worker = server.worker  # in the main thread of a worker (get_request)
    if worker is not None:
        getattr(worker.scoreboard, counter)(worker.slot)


def setup_edge(servers: list[PoolServer]) -> None:
    """Give each of the pool's ``servers`` its :class:`Edge` (the stream ones; None when
    neither TLS nor the PROXY protocol is on), from the first server's settings and its
    ``ssl_context()``. Raises :class:`~prefork.errors.PreforkError` with one line for a
    certificate or key that cannot be used, or for TLS or the PROXY protocol on a datagram
    socket; then nothing has changed. Runs in the master, before forking and on HUP."""
    first = servers[0]
    try:
        context = first.ssl_context()
    except (ValueError, OSError) as exc:
        raise PreforkError(str(exc)) from None
    if context is not None and context.sslsocket_class is sys.modules["ssl"].SSLSocket:
        from prefork.tls import ruled_socket_class  # a socket class of the hook's own is kept

        context.sslsocket_class = ruled_socket_class(cast("type[RequestSocket]", first.request_socket))
    edge = None
    if context is not None or first.proxy_protocol != "off":
        limit = min(t for t in (first.socket_timeout, first.read_deadline, EDGE_TIMEOUT) if t > 0)
        edge = Edge(context, first.proxy_protocol, first.proxy_allow, limit)
        for server in servers:
            if server.socket.type != socket.SOCK_STREAM:
                raise PreforkError("TLS and the PROXY protocol need stream sockets, not datagrams")
    for server in servers:
        server.edge = edge
