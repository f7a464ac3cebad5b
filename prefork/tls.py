"""TLS on the pool's stream sockets: the context, built and checked once in the master before
forking (:func:`build_context`), and the handshake, in the worker, within a deadline
(:func:`handshake`).

The master builds one ``ssl.SSLContext`` from the TLS settings (or the server's
:meth:`~prefork.server.PreforkMixIn.ssl_context` hook) before the first fork and again on each
HUP; every worker inherits it, so no connection pays for loading a certificate (gunicorn
builds a context per connection). A worker wraps each accepted connection without a handshake
(``get_request``, no I/O) and makes it first thing in ``finish_request``: in the worker
process (sync) or the connection's thread (thread), never in the accept loop.
"""

from __future__ import annotations

import os
import select
import ssl
import stat
import time
from typing import Any, cast

from prefork.connections import RequestSocket, readable_now

#: The ``tls_min_version`` setting's values.
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
#: The ``cert_reqs`` setting's values.
CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
#: Seconds a handshake may take in all when the server sets no ``socket_timeout``.
HANDSHAKE_TIMEOUT = 10.0


#: The most bytes of a certificate, key or CA file read (a PEM chain is a few KiB).
MAX_PEM_FILE = 1 << 20


def _check_file(what: str, path: str) -> None:
    """Raise ValueError unless ``path`` is a regular file of at most :data:`MAX_PEM_FILE`
    bytes, looked at without blocking: OpenSSL opens the path itself, and a FIFO there would
    hang the master (at start, or on HUP)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        status = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(status.st_mode) or status.st_size > MAX_PEM_FILE:
        raise ValueError(f"cannot use {what} {path}: not a regular file of at most {MAX_PEM_FILE} bytes")


def build_context(
    certfile: str,
    keyfile: str | None = None,
    ca_certs: str | None = None,
    cert_reqs: str = "none",
    ciphers: str | None = None,
    min_version: str = "1.2",
) -> ssl.SSLContext:
    """A server-side context serving ``certfile`` (PEM chain) with ``keyfile`` (PEM; None: in
    certfile), asking for client certificates per ``cert_reqs`` (``none``, ``optional``,
    ``required``) signed by ``ca_certs`` (PEM), with the OpenSSL cipher list ``ciphers`` for
    TLS 1.2 (None: Python's defaults) and ``min_version`` (``1.2``, ``1.3``) the oldest version.
    Raises ValueError with one line naming the file and the reason. Runs in the master."""
    for what, path in (("certfile", certfile), ("keyfile", keyfile), ("ca_certs", ca_certs)):
        if path is not None:
            _check_file(what, path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[min_version]
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)  # a renegotiation is a handshake unbounded
    try:
        context.load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        raise ValueError(
            f"cannot use certfile {certfile} with keyfile {keyfile or certfile}: {_why(exc)}"
        ) from None
    except OSError as exc:
        raise ValueError(
            f"cannot read certfile {certfile} or keyfile {keyfile}: {exc.strerror or exc}"
        ) from None
    context.verify_mode = CERT_REQS[cert_reqs]
    if ca_certs is not None:
        try:
            context.load_verify_locations(cafile=ca_certs)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"cannot use ca_certs {ca_certs}: {_why(exc)}") from None
    elif cert_reqs != "none":
        raise ValueError(
            f"cert_reqs {cert_reqs} needs ca_certs, the authorities to check client certificates with"
        )
    if ciphers is not None:
        try:
            context.set_ciphers(ciphers)
        except ssl.SSLError:
            raise ValueError(f"no cipher can be selected with ciphers {ciphers!r}") from None
    return context


def _why(error: OSError) -> str:
    reason = getattr(error, "reason", None)
    return str(reason or error.strerror or error).lower().replace("_", " ")


def handshake(sock: ssl.SSLSocket, deadline: float) -> None:
    """Make the TLS handshake of the accepted ``sock`` by ``deadline`` (``time.monotonic()``
    seconds) in all, whatever the client's pace; its timeout is restored after. Raises
    ssl.SSLError when it fails, TimeoutError past the deadline, OSError when the connection
    does. Runs in the worker (or the connection's thread)."""
    timeout = sock.gettimeout()
    sock.settimeout(0.0)
    poller = select.poll()
    try:
        while True:
            try:
                sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                events = select.POLLIN
            except ssl.SSLWantWriteError:
                events = select.POLLOUT
            left = deadline - time.monotonic()
            poller.register(sock, events)
            if left <= 0 or not poller.poll(left * 1000):
                raise TimeoutError("the TLS handshake did not finish in time")
    finally:
        sock.settimeout(timeout)


def ruled_socket_class(rules: type[RequestSocket]) -> type[ssl.SSLSocket]:
    """An ``ssl.SSLSocket`` class whose reads apply the ``read_min_rate`` and
    ``read_deadline`` rules of ``rules`` (a server's ``request_socket`` class), as a plain
    connection's do (:meth:`RequestSocket.wait_for_client
    <prefork.connections.RequestSocket.wait_for_client>`): before a read that would block
    (no decrypted byte pending, none on the socket), counting the decrypted bytes read. Set
    as the context's ``sslsocket_class`` by the master."""

    class RuledSSLSocket(ssl.SSLSocket):
        read_min_rate = rules.read_min_rate
        read_deadline = rules.read_deadline
        deferred = False

        def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
            progress = self._before_read(flags)
            data = super().recv(buflen, flags)
            if progress is not None:
                progress.received += len(data)
            return data

        def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
            progress = self._before_read(flags)
            count = super().recv_into(buffer, nbytes, flags)
            if progress is not None:
                progress.received += count
            return count

        def _before_read(self, flags: int) -> Any:
            if flags or not self.gettimeout() or getattr(self, "_sslobj", None) is None or self.pending():
                return None
            if readable_now(self.fileno()):
                return None
            return RequestSocket.wait_for_client(cast(RequestSocket, self))  # the same rules

    return RuledSSLSocket
