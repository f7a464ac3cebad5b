"""The probe ``prefork bench`` sends before loading a server: is anybody listening, and does
it speak the protocol asked for?

One request of the protocol on a blocking socket, bounded in time, from the bench's parent
process. A refused connection stops the bench with one line (exit 1) instead of a run of
refused requests; a server that answers a ``line`` or ``raw`` request badly is asked once
more with an HTTP ``GET``, and if it answers ``HTTP/1.x`` the bench stops with "the server
at ADDR speaks HTTP: use --protocol http" (exit 2), instead of counting every reply as bad.
An HTTP request answered with something else than HTTP stops it the same way. Datagram
protocols are not probed (nothing is connected).
"""

from __future__ import annotations

import socket
import time

from prefork.bench.errors import BenchError
from prefork.bench.load import LoadSpec
from prefork.bench.protocols import half_closes, judge_reply, request_bytes

#: Seconds the probe waits for a connection and for each reply, at most.
PROBE_TIMEOUT = 2.0
#: Bytes of a reply the probe reads at most.
PROBE_BYTES = 65536


def probe(spec: LoadSpec, where: str) -> None:
    """Connect to ``spec``'s address (``where``: how to name it) and send one request of its
    protocol; see the module's docstring. Takes at most a few times :data:`PROBE_TIMEOUT`.

    Raises BenchError: the connection refused or failed (exit 1), the server speaks HTTP to a
    non-HTTP protocol or the reverse (``usage``, exit 2). A reply that does not come in time
    is no error here (a slow handler); the run will say.
    """
    if spec.protocol == "udp":
        return
    reply = _exchange(spec, spec.protocol, spec.payload, where)
    if spec.protocol == "http":
        if reply and not reply.startswith(b"HTTP/"):
            raise BenchError(
                f"the server at {where} does not speak HTTP (it answered {bytes(reply[:24])!r}): "
                "use --protocol line or raw",
                usage=True,
            )
        return
    complete, good, _ = judge_reply(spec.protocol, bytearray(reply), True, keepalive=False, expect=None)
    if not (complete and good) and _exchange(spec, "http", b"/", where).startswith(b"HTTP/1."):
        raise BenchError(f"the server at {where} speaks HTTP: use --protocol http", usage=True)


def _exchange(spec: LoadSpec, protocol: str, payload: bytes, where: str) -> bytes:
    """One request of ``protocol`` on a connection of its own; the reply read (until it is
    whole, the server closes, :data:`PROBE_TIMEOUT` passes or :data:`PROBE_BYTES` came)."""
    deadline = time.monotonic() + PROBE_TIMEOUT
    with socket.socket(spec.family, socket.SOCK_STREAM) as sock:
        sock.settimeout(PROBE_TIMEOUT)
        try:
            sock.connect(spec.address)
        except (ConnectionRefusedError, FileNotFoundError):
            raise BenchError(
                f"cannot connect to {where}: connection refused (is a server listening there?)"
            ) from None
        except TimeoutError:
            raise BenchError(f"cannot connect to {where}: no answer in {PROBE_TIMEOUT:g} s") from None
        except OSError as exc:
            raise BenchError(f"cannot connect to {where}: {exc.strerror or exc}") from None
        reply = bytearray()
        try:
            sock.sendall(request_bytes(protocol, payload, keepalive=False, host=spec.host))
            if half_closes(protocol, keepalive=False):
                sock.shutdown(socket.SHUT_WR)
            while len(reply) < PROBE_BYTES:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                data = sock.recv(PROBE_BYTES)
                reply += data
                if not data or judge_reply(protocol, reply, False, keepalive=False, expect=None)[0]:
                    break
        except (OSError, ValueError):  # a timeout, a reset, a bad Content-Length: what came is the reply
            pass
        return bytes(reply)
