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

import select
import ssl
import time

#: The ``tls_min_version`` setting's values.
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
#: The ``cert_reqs`` setting's values.
CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
#: Seconds a handshake may take in all when the server sets no ``socket_timeout``.
HANDSHAKE_TIMEOUT = 10.0


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
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[min_version]
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
