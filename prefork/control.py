"""The control socket: the master's side (``prefork status`` and ``prefork ctl`` are the client).

A Unix stream socket, mode 0600, served by the master in its own loop (no thread): each
connection carries one request, a JSON object on one line, and gets one reply, a JSON object
on one line, then the master closes it. The commands (see docs/observing.md)::

    {"command": "status"}                          the pool's snapshot (prefork.stats)
    {"command": "workers", "count": N}             set the pool to exactly N workers
    {"command": "add", "count": K}                 K workers more (default 1), as K TTINs
    {"command": "remove", "count": K}              K workers fewer (default 1), as K TTOUs
    {"command": "reload"} / "upgrade" / "reopen"   as HUP / USR2 / USR1
    {"command": "stop", "mode": "graceful"|"fast"} as TERM / INT

A reply is ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.

Who may ask: the socket file is mode 0600 in a private directory by default, and each peer's
uid is checked with ``SO_PEERCRED`` (Linux): only the master's user and root are answered.
What a client can cost the master: nothing blocks (every socket is non-blocking), a request
is at most :data:`MAX_REQUEST` bytes, a client gets :data:`CLIENT_TIMEOUT` seconds in all
(to send its request and read the reply), and at most :data:`MAX_CLIENTS` are served at once
(more are closed at once). A client that sends garbage gets an error reply; one that vanishes
is forgotten.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import selectors
import socket
import stat
import struct
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from prefork.errors import PreforkError

log = logging.getLogger("prefork")

#: Bytes a request may have, its newline included.
MAX_REQUEST = 64 * 1024
#: Seconds a client has, from its connection, to send its request and read the reply.
CLIENT_TIMEOUT = 2.0
#: Clients served at once; one more is closed as soon as it is accepted.
MAX_CLIENTS = 16
#: Seconds the control socket is left unwatched after accept() failed for lack of a resource
#: (EMFILE, ENFILE, ENOBUFS, ENOMEM): it stays readable, and would spin the master's loop.
PAUSE = 0.5
#: The commands, and the signal each one acts as (None: not a signal's).
COMMANDS = ("status", "workers", "add", "remove", "reload", "stop", "upgrade", "reopen")

#: ``register(fileobj, events, callback)``, ``modify(...)`` and ``unregister(fileobj)`` of the
#: master's wait (:class:`~prefork.events.MasterEvents`): ``callback(mask)`` runs in the loop.
Register = Callable[[socket.socket, int, Callable[[int], None]], None]

_PEERCRED = struct.Struct("3i")  # pid, uid, gid


class Command(NamedTuple):
    """A valid request: ``name`` (one of :data:`COMMANDS`), ``workers`` (a count of workers:
    for ``workers``, ``add``, ``remove``) and ``fast`` (for ``stop``)."""

    name: str
    workers: int = 0
    fast: bool = False


def parse_command(request: Any) -> Command:
    """The :class:`Command` a decoded request asks for. Raises ValueError with a one-line
    reason when it is not one (not an object, an unknown command, a bad count or mode)."""
    if not isinstance(request, dict):
        raise ValueError("a request is a JSON object")
    name = request.get("command")
    if name not in COMMANDS:
        raise ValueError(f"unknown command {str(name)[:40]!r}; one of {', '.join(COMMANDS)}")
    if name in ("workers", "add", "remove"):
        count = request.get("count", 1 if name != "workers" else None)
        if type(count) is not int or count < (1 if name == "workers" else 0):
            raise ValueError(f"{name} needs a count, a whole number >= {1 if name == 'workers' else 0}")
        return Command(name, count)
    if name == "stop":
        mode = request.get("mode", "graceful")
        if mode not in ("graceful", "fast"):
            raise ValueError('stop mode is "graceful" or "fast"')
        return Command(name, fast=mode == "fast")
    return Command(name)


class _Client:
    __slots__ = ("deadline", "received", "reply", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.received = b""
        self.reply = b""


class ControlServer:
    """The master's control socket at ``path`` (a str), answering each request with
    ``handle(command) -> dict`` (the reply's fields besides ``ok``; a ValueError becomes an
    error reply). ``register``, ``modify`` and ``unregister`` hook its sockets into the
    master's wait. Created, served and closed in the master.

    With ``takeover`` (the new master of a USR2 upgrade, given the old one's path) the socket
    is bound beside ``path`` and renamed over the old master's live one, which then removes
    nothing at its stop (the file is no longer its own). Raises
    :class:`~prefork.errors.PreforkError` when the socket cannot be created: ``path`` exists
    and is not a socket, or (without ``takeover``) another process listens there, or bind()
    fails.
    """

    def __init__(
        self,
        path: str,
        handle: Callable[[Command], dict[str, Any]],
        register: Register,
        modify: Register,
        unregister: Callable[[socket.socket], None],
        *,
        takeover: bool = False,
    ) -> None:
        self.path = path
        self.handle = handle
        self._register, self._modify, self._unregister = register, modify, unregister
        self._clients: dict[socket.socket, _Client] = {}
        self.listener = _bind(path, takeover)
        self._inode = os.stat(path).st_ino
        self._paused_until = 0.0  # accept() failed for lack of a resource: not watched until then
        register(self.listener, selectors.EVENT_READ, self._accept)

    def _accept(self, mask: int) -> None:
        for _ in range(MAX_CLIENTS):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: stop watching (it stays readable)
                log.warning(
                    "Control socket: accept failed (%s); retrying in %g s", exc.strerror or exc, PAUSE
                )
                self._unregister(self.listener)
                self._paused_until = time.monotonic() + PAUSE
                return
            sock.setblocking(False)
            if len(self._clients) >= MAX_CLIENTS:
                sock.close()
                continue
            client = _Client(sock, time.monotonic() + CLIENT_TIMEOUT)
            self._clients[sock] = client
            self._register(sock, selectors.EVENT_READ, functools.partial(self._ready, client))
            if not _peer_allowed(sock):
                self._answer(client, {"ok": False, "error": "permission denied (another user)"})

    def _ready(self, client: _Client, mask: int) -> None:
        if client.reply:
            self._send(client)
            return
        try:
            chunk = client.sock.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:  # gone before its request ended
            self._forget(client)
            return
        client.received += chunk
        line, newline, _ = client.received.partition(b"\n")
        if newline:
            self._answer(client, self._reply_to(line))
        elif len(client.received) >= MAX_REQUEST:
            self._answer(client, {"ok": False, "error": f"request over {MAX_REQUEST} bytes"})

    def _reply_to(self, line: bytes) -> dict[str, Any]:
        try:
            command = parse_command(json.loads(line))
            return {"ok": True, **self.handle(command)}
        except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError included
            return {"ok": False, "error": str(exc).splitlines()[0][:200]}
        except Exception as exc:
            log.exception("Control socket: error answering a request")
            return {"ok": False, "error": f"internal error: {type(exc).__name__}"}

    def _answer(self, client: _Client, reply: dict[str, Any]) -> None:
        client.reply = json.dumps(reply, separators=(",", ":")).encode() + b"\n"
        self._modify(client.sock, selectors.EVENT_WRITE, functools.partial(self._ready, client))
        self._send(client)

    def _send(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.reply)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            sent = len(client.reply)
        client.reply = client.reply[sent:]
        if not client.reply:
            self._forget(client)

    def _forget(self, client: _Client) -> None:
        if self._clients.pop(client.sock, None) is not None:
            self._unregister(client.sock)
        client.sock.close()

    def next_deadline(self) -> float:
        """The monotonic time at which the oldest client times out, or accepting resumes
        (inf: none)."""
        soonest = min((c.deadline for c in self._clients.values()), default=float("inf"))
        return min(soonest, self._paused_until or soonest)

    def expire(self, now: float) -> None:
        """Close the clients whose :data:`CLIENT_TIMEOUT` is over at monotonic time ``now``;
        accept again after a pause."""
        for client in [c for c in self._clients.values() if c.deadline <= now]:
            self._forget(client)
        if self._paused_until and now >= self._paused_until:
            self._paused_until = 0.0
            self._register(self.listener, selectors.EVENT_READ, self._accept)

    def close_in_child(self) -> None:
        """In a process forked by the master (a worker, the exporter): close its copies of the
        sockets, leaving the file and the master's sockets alone."""
        for sock in [self.listener, *self._clients]:
            sock.close()
        self._clients.clear()

    def close(self) -> None:
        """Close every socket and remove the socket file if it is still ours. In the master."""
        for client in list(self._clients.values()):
            self._forget(client)
        if not self._paused_until:
            with contextlib.suppress(KeyError, ValueError):
                self._unregister(self.listener)
        self.listener.close()
        with contextlib.suppress(OSError):
            if os.lstat(self.path).st_ino == self._inode:
                os.unlink(self.path)


def _bind(path: str, takeover: bool) -> socket.socket:
    """A non-blocking Unix socket listening at ``path``, mode 0600; a stale socket file there
    (nobody listening) is replaced, anything else is refused; with ``takeover`` a live socket
    too (bound beside, renamed over)."""
    if takeover:
        return _bind_over(path)
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise PreforkError(f"cannot use control socket {path}: {exc.strerror or exc}") from None
    else:
        if not stat.S_ISSOCK(status.st_mode):
            raise PreforkError(f"cannot use control socket {path}: a file that is not a socket is there")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(path)
            except OSError as exc:
                if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                    raise PreforkError(f"cannot use control socket {path}: {exc.strerror or exc}") from None
            else:
                raise PreforkError(f"cannot use control socket {path}: another server listens there")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)  # created 0600: no moment when others may connect
    try:
        sock.bind(path)
        sock.listen(MAX_CLIENTS)
    except OSError as exc:
        sock.close()
        raise PreforkError(f"cannot create control socket {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(umask)
    sock.setblocking(False)
    return sock


def _bind_over(path: str) -> socket.socket:
    """Bind beside ``path`` (mode 0600) and rename over it: a socket or nothing may be there."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise PreforkError(f"cannot use control socket {path}: a file that is not a socket is there")
    beside = f"{path}.{os.urandom(8).hex()}.tmp"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)
    try:
        sock.bind(beside)
        sock.listen(MAX_CLIENTS)
        os.replace(beside, path)
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(beside)
        raise PreforkError(f"cannot create control socket {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(umask)
    sock.setblocking(False)
    return sock


def _peer_allowed(sock: socket.socket) -> bool:
    """Whether the peer is this process's user or root (``SO_PEERCRED``; where the platform
    lacks it, the socket's mode 0600 alone decides)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return True
    try:
        _, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, option, _PEERCRED.size))
    except OSError:
        return False
    return uid in (0, os.getuid())
