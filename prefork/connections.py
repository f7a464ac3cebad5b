"""Accepted connections: the socket class a worker gives each one, and the rules that bound
how long a slow or silent client can keep a worker waiting.

A worker's defences against slow clients (the settings of the same names):

- ``socket_timeout``: each wait for the client is at most that long (``settimeout``; the
  handler sees ``TimeoutError``, as with any socket timeout).
- ``read_min_rate`` and ``read_deadline``: from the first time a worker waits for a
  connection to send, the client has ``socket_timeout`` seconds plus one more per
  ``read_min_rate`` bytes it sends meanwhile, and never more than ``read_deadline`` seconds;
  then the read that would wait raises ``TimeoutError`` (as Apache's mod_reqtimeout
  ``RequestReadTimeout header=20-40,MinRate=500``). A client trickling a byte a second is cut
  after ``socket_timeout`` seconds, not kept until ``request_timeout`` kills the worker.
- ``defer_accept``: Linux ``TCP_DEFER_ACCEPT`` on the listening socket (see
  :func:`defer_accept`): a connection that sends nothing never reaches a worker until the
  period ends, and one handed over then that has sent nothing is closed when a read would
  wait for it (``tcp_info`` says no byte arrived).

Every check is on the slow path, when a read would block: a client that keeps up costs
nothing more than the plain socket (see docs/performance.md). The rules cover what the server
reads; a client that reads slowly is bounded per write by ``socket_timeout`` and in all by
``request_timeout``.
"""

from __future__ import annotations

import math
import os
import select
import socket
import struct
import weakref
from collections.abc import Sequence
from time import monotonic
from typing import TYPE_CHECKING, Any, ClassVar

from prefork.sockets import speaks_http

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

    from prefork.contract import PoolServer


class RejectedConnection(OSError):
    """Raised by ``get_request()`` for a connection refused at the edge (its PROXY header:
    :mod:`prefork.edge`), already closed and counted: as a failed accept, no request to
    process. Workers take the next connection."""


class RequestSocket(socket.socket):
    """An accepted stream connection whose recv and send try the system call at once and
    wait only when it would block, within the read rules of its server.

    With a timeout (``settimeout(t)``, t > 0) CPython polls the socket before every
    ``recv`` and ``send``, even when data is waiting or the send buffer has room: one
    ``poll()`` system call per call, three for a small HTTP request. Here ``recv``,
    ``recv_into``, ``send`` and ``sendall`` (all that ``makefile()`` and socketserver's
    handlers use) first read or write the non-blocking descriptor directly; only when that
    would block (``EAGAIN``) do they call socket.socket's own method, which polls with the
    timeout and raises ``TimeoutError`` as always. So the timeout's meaning is unchanged: a
    call returns what was ready at once, or waits at most the timeout (``sendall``: at most
    the timeout after the first write that would block). With flags, a byte count to
    ``recv_into``, or no timeout (blocking or non-blocking), they are socket.socket's.

    A read that would block first applies :meth:`wait_for_client`'s rules (``read_min_rate``
    and ``read_deadline``, class attributes set per server by :func:`request_socket_class`;
    0 here: off). They apply to ``recv`` and ``recv_into`` (all that ``makefile()`` and
    socketserver's stream handlers use); ``recv`` and ``recv_into`` with flags, ``recvfrom``,
    ``recvfrom_into`` and ``recvmsg`` are socket.socket's, bounded by the timeout only.

    :meth:`PreforkMixIn.get_request <prefork.server.PreforkMixIn.get_request>` gives an
    accepted plain ``socket.socket`` its server's class when it will have a timeout: the
    ``socket_timeout`` setting, or the handler class's own (``StreamRequestHandler.timeout``).
    It adds no slot; a TLS socket or other subclass is left as it is. Runs in the worker.
    """

    __slots__ = ()

    #: Bytes per second the client must send once it has made the worker wait (0: no rule).
    read_min_rate: ClassVar[int] = 0
    #: Seconds after the first wait beyond which no read waits (0: no deadline).
    read_deadline: ClassVar[float] = 0.0
    #: Accepted through TCP_DEFER_ACCEPT: at the first wait, a connection that has neither
    #: sent a byte nor been sent one has been idle the whole defer period, and is closed.
    deferred: ClassVar[bool] = False

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """Receive up to ``bufsize`` bytes, as socket.socket.recv."""
        if not flags and self.gettimeout():
            try:
                return os.read(self.fileno(), bufsize)
            except BlockingIOError:
                progress = self.wait_for_client()
                data = super().recv(bufsize)
                if progress is not None:
                    progress.received += len(data)
                return data
        return super().recv(bufsize, flags)

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        """Receive into ``buffer`` (its first ``nbytes`` bytes, when given), as
        socket.socket.recv_into; return the byte count."""
        if not flags and self.gettimeout():
            if nbytes:
                octets = memoryview(buffer).cast("B")
                if nbytes > len(octets):
                    raise ValueError("buffer too small for requested bytes")
                return self.recv_into(octets[:nbytes])
            try:
                return os.readv(self.fileno(), (buffer,))
            except BlockingIOError:
                progress = self.wait_for_client()
                count = super().recv_into(buffer)
                if progress is not None:
                    progress.received += count
                return count
        return super().recv_into(buffer, nbytes, flags)

    def send(self, data: ReadableBuffer, flags: int = 0) -> int:
        """Send what the socket takes of ``data``, as socket.socket.send; return the count."""
        if not flags and self.gettimeout():
            try:
                return os.write(self.fileno(), data)
            except BlockingIOError:
                pass
        return super().send(data, flags)

    def sendall(self, data: ReadableBuffer, flags: int = 0) -> None:
        """Send all of ``data``, as socket.socket.sendall; raises TimeoutError when the
        rest could not be sent within the timeout."""
        if flags or not self.gettimeout():
            return super().sendall(data, flags)
        try:
            sent = os.write(self.fileno(), data)
        except BlockingIOError:
            sent = 0
        if type(data) is bytes and sent == len(data):  # the usual case: no memoryview needed
            return None
        with memoryview(data) as view, view.cast("B") as octets:
            if sent < len(octets):
                super().sendall(octets[sent:])
        return None

    def wait_for_client(self) -> Progress | None:
        """A read would block: apply the read rules before socket.socket's own wait. Returns
        the connection's :class:`Progress` (the caller adds the bytes it then reads), or None
        when the class has no rule (the wait is then only the timeout's).

        Raises TimeoutError when the connection was deferred and has been idle since it
        connected (see ``deferred``), or when the client is out of time: more than ``read_deadline``
        seconds since the first wait, or more than the timeout plus one second per
        ``read_min_rate`` bytes received since then; or when it sends nothing within the
        time it has left. Runs in the worker (any thread: one connection, one thread)."""
        min_rate, deadline = self.read_min_rate, self.read_deadline
        if not (min_rate or deadline or self.deferred):
            return None
        timeout = self.gettimeout() or 0.0
        progress = _PROGRESS.get(self)
        if progress is None:
            if self.deferred and _idle_since_connect(self):
                raise TimeoutError("client idle since it connected (defer_accept)")
            progress = _PROGRESS[self] = Progress(monotonic())
            if not deadline or deadline >= timeout:  # the first wait is the timeout's own
                return progress
        allowed = timeout + progress.received / min_rate if min_rate else math.inf
        if deadline and deadline < allowed:
            allowed, rule = deadline, f"read_deadline {deadline:g} s"
        else:
            rule = f"read_min_rate {min_rate} bytes/s"
        left = progress.since + allowed - monotonic()
        if left >= timeout:  # socket.socket's own wait decides
            return progress
        if left <= 0 or not _readable(self.fileno(), left):
            raise TimeoutError(f"client too slow ({rule}; {progress.received} bytes after waiting)")
        return progress


class Progress:
    """What a connection sent since a worker first waited for it (see
    :meth:`RequestSocket.wait_for_client`): ``since``, that time (``time.monotonic()``), and
    ``received``, the bytes read after a wait since."""

    __slots__ = ("received", "since")

    def __init__(self, since: float) -> None:
        self.since = since
        self.received = 0


#: Seconds the first wait of a deferred connection that never spoke waits for data before it
#: cuts the connection as idle. The kernel makes a connection acceptable a moment before it queues
#: the data that made it so (the child socket is queued, then the segment processed), so a
#: worker accepting then can find nothing to read yet: measured in CPython's test_httpservers
#: under prefork, the data followed within microseconds. A connection handed over when the
#: defer period ran out is told apart by its retransmitted SYN-ACK and costs no wait: 200 idle
#: connections handed over at once held a 4-worker sync pool 0.5 s when each waited this.
DEFER_RACE_GRACE = 0.01

#: The progress of the connections a worker has waited for, dropped with the connection.
_PROGRESS: weakref.WeakKeyDictionary[socket.socket, Progress] = weakref.WeakKeyDictionary()


def wait_readable(sock: socket.socket, seconds: float) -> bool:
    """Wait up to ``seconds`` (0: not at all) for ``sock`` to have something to read (data,
    EOF or an error); a TLS socket may hold decrypted bytes already (``pending()``)."""
    pending = getattr(sock, "pending", None)
    if pending is not None and pending():
        return True
    return _readable(sock.fileno(), seconds)


def readable_now(fd: int) -> bool:
    """Whether ``fd`` is readable at once (data, EOF or an error): a poll() without waiting."""
    return _readable(fd, 0.0)


def _readable(fd: int, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``fd`` to be readable (or closed, or in error)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(math.ceil(seconds * 1000)))


def _idle_since_connect(sock: socket.socket) -> bool:
    """Whether ``sock``, accepted through TCP_DEFER_ACCEPT, has been idle since it connected:
    from the kernel's ``tcp_info`` (Linux 4.1+; False where it cannot tell), no byte arrived
    and we sent none (acknowledged or in flight). When the kernel retransmitted its SYN-ACK (the defer
    period ran out: it hands the connection over on the ACK that answers a retransmission),
    that is so at once; otherwise the data that made it acceptable may be a moment behind
    (see :data:`DEFER_RACE_GRACE`), and it is so only if nothing arrives by then. Parsed by
    hand: no library reads ``struct tcp_info``."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except (AttributeError, OSError):
        return False
    if len(info) < _TCP_INFO_SIZE:
        return False
    unacked: int
    retransmitted: int
    acked: int
    received: int
    (unacked,) = struct.unpack_from("=I", info, TCP_INFO_UNACKED)
    (retransmitted,) = struct.unpack_from("=I", info, _TCP_INFO_TOTAL_RETRANS)
    acked, received = struct.unpack_from("=QQ", info, _TCP_INFO_BYTES_ACKED)
    if unacked or acked or received:  # it sent, or we did (acknowledged or still in flight)
        return False
    return retransmitted > 0 or not _readable(sock.fileno(), DEFER_RACE_GRACE)


#: Offsets in Linux's ``struct tcp_info`` of ``tcpi_unacked`` (our segments in flight),
#: ``tcpi_total_retrans`` (a child socket starts with
#: its request's SYN-ACK retransmissions) and ``tcpi_bytes_acked`` (then
#: ``tcpi_bytes_received``), and the size read (up to ``tcpi_segs_in``).
#: Offset of ``tcpi_unacked`` in ``struct tcp_info`` (then ``tcpi_sacked``): on a listening
#: socket, the accept queue's length (and its limit).
TCP_INFO_UNACKED = 24
_TCP_INFO_TOTAL_RETRANS = 100
_TCP_INFO_BYTES_ACKED = 120
_TCP_INFO_SIZE = 144


def defer_seconds(server: PoolServer) -> float:
    """The ``defer_accept`` seconds ``server`` uses: the setting, or for ``auto`` (None) its
    ``socket_timeout`` when it speaks HTTP (the client speaks first) and 0 otherwise."""
    if server.defer_accept is not None:
        return server.defer_accept
    return server.socket_timeout if speaks_http(server) else 0.0


def defer_accept(server: PoolServer) -> bool:
    """Set ``TCP_DEFER_ACCEPT`` on ``server``'s listening socket for :func:`defer_seconds`
    (a TCP socket on Linux; elsewhere nothing is done). Returns whether connections are
    deferred. Raises OSError when the kernel refuses the option. Runs in the master, before
    the fork."""
    sock = server.socket
    option = getattr(socket, "TCP_DEFER_ACCEPT", None)
    if (
        option is None
        or sock.family not in (socket.AF_INET, socket.AF_INET6)
        or sock.type != socket.SOCK_STREAM
    ):
        return False
    seconds = defer_seconds(server)
    sock.setsockopt(socket.IPPROTO_TCP, option, math.ceil(seconds))
    return seconds > 0


#: Seconds a stopping pool waits, after turning ``TCP_DEFER_ACCEPT`` off, for the connections
#: whose request is on its way to be queued (see :func:`stop_deferring`).
DEFER_STOP_GRACE = 0.03


def stop_deferring(servers: Sequence[PoolServer]) -> list[tuple[socket.socket, int]]:
    """Turn ``TCP_DEFER_ACCEPT`` off on ``servers``' listening sockets, for a pool that stops
    gracefully: a connection the kernel holds back until its first data (the client has
    connected and not yet sent) is not in the accept queue, so the drain would miss it and
    the listener's close reset it. With the option off, the client's data or bare ACK queues
    it. Returns each socket turned off with its value, to give back with
    :func:`resume_deferring` once the queue is taken: the sockets are shared, with the next
    master's pool too during a USR2 upgrade. The caller waits :data:`DEFER_STOP_GRACE` in
    between when the list is not empty. Runs in a stopping worker."""
    option = getattr(socket, "TCP_DEFER_ACCEPT", None)
    turned: list[tuple[socket.socket, int]] = []
    if option is None:
        return turned
    for server in servers:
        sock = server.socket
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
            continue
        try:
            value = sock.getsockopt(socket.IPPROTO_TCP, option)
            if value:
                sock.setsockopt(socket.IPPROTO_TCP, option, 0)
                turned.append((sock, value))
        except OSError:
            continue
    return turned


def resume_deferring(turned: list[tuple[socket.socket, int]]) -> None:
    """Give back the ``TCP_DEFER_ACCEPT`` values :func:`stop_deferring` turned off (for
    whoever still listens on the sockets: the new pool of a USR2 upgrade)."""
    for sock, value in turned:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, value)
        except OSError:
            continue


def request_socket_class(server: PoolServer, deferred: bool) -> type[RequestSocket]:
    """The class :meth:`~prefork.server.PreforkMixIn.get_request` gives ``server``'s accepted
    connections: a :class:`RequestSocket` subclass with its ``read_min_rate``,
    ``read_deadline`` and ``deferred`` (its listening socket defers accept). Runs in the
    master, before the fork."""
    rules = {
        "read_min_rate": server.read_min_rate,
        "read_deadline": server.read_deadline,
        "deferred": deferred,
        "__slots__": (),
    }
    return type("RequestSocket", (RequestSocket,), rules)


def forget_waits(sock: socket.socket) -> None:
    """Start the read rules of ``sock`` afresh: its next wait is a first wait again (for the
    next request of a kept-alive connection, so ``read_deadline`` bounds each request and
    not the connection's life). Runs in the worker."""
    _PROGRESS.pop(sock, None)


class UnixPeerMixIn:
    """For an HTTP server on a Unix stream socket: ``client_address`` as ``(PEER, 0)``, where
    PEER is the peer's socket path or ``"unix"`` for an unnamed one (the usual case), or the
    client a PROXY header named (``(HOST, PORT)``, kept as it is). HTTP handlers log and pass
    on ``client_address[0]``, which socketserver's ``''`` for a Unix peer breaks."""

    def get_request(self) -> tuple[Any, Any]:
        """Accept a request (the next class's ``get_request``) with ``client_address`` as
        above. Runs in the worker. May be extended."""
        request, peer = super().get_request()  # type: ignore[misc]
        if isinstance(peer, tuple):  # from a PROXY header (prefork.edge)
            return request, peer
        name = os.fsdecode(peer) if isinstance(peer, bytes) else str(peer)
        return request, (name or "unix", 0)
