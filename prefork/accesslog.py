"""The access log: one line per connection (per datagram for datagram servers; per request
for WSGI servers, with the request line, status and size), for any socketserver handler, as
gunicorn's --access-logfile.

Each line says who the client was, which worker served it, how long the connection took and
how it ended::

    127.0.0.1:53422 - worker 2 [pid 1234] 2026-11-26T11:50:34.107+00:00 served 0.003125s

or, with ``log_format`` ``json``, one object per line::

    {"time": "2026-11-26T11:50:34.107+00:00", "logger": "prefork.access",
     "client": "127.0.0.1:53422", "worker": 2, "pid": 1234, "seconds": 0.003125,
     "outcome": "served"}

(on one line). The time is when the line was written (the connection's end), ISO 8601 in UTC
to the millisecond; the duration is in seconds, to the microsecond (as gunicorn's ``%(L)s``).
The client is ``HOST:PORT`` (``[HOST]:PORT`` for IPv6), the peer's path for a Unix socket
(``@NAME`` for an abstract one), ``-`` for an unnamed Unix peer. The outcomes are
:data:`OUTCOMES`.

The file is opened once, in the master before the pool is forked, so a bad path is an error at
start; workers inherit the descriptor and write to it. Every line is written with one
``write()`` to a descriptor opened with ``O_APPEND``, so the lines of several workers never
mix within a line (for a pipe, lines under PIPE_BUF, 4096 bytes, are atomic too).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import stat
import time
from typing import Any

from prefork.logs import LOG_FORMATS, iso_time

#: How a connection ended: the handler returned (``served``); it raised (``error``: the
#: server's ``handle_error`` was called); ``verify_request`` refused the client (``denied``);
#: the handler raised TimeoutError, e.g. a slow client cut by the read rules (``timeout``).
OUTCOMES = ("served", "error", "denied", "timeout")
SERVED, ERROR, DENIED, TIMEOUT = OUTCOMES
#: The path that means stderr (file descriptor 2, wherever ``--log-file`` pointed it).
STDERR = "-"
#: Mode of a created access log file (the umask applies).
FILE_MODE = 0o644
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC

log = logging.getLogger("prefork")


def outcome_of(error: BaseException | None) -> str:
    """The outcome of a connection whose handler raised ``error`` (None: it returned):
    ``timeout`` for a TimeoutError (``socket.timeout`` is one), else ``error``, or ``served``.
    A refused client (``denied``) is known from ``verify_request``, not from an exception."""
    if error is None:
        return "served"
    return "timeout" if isinstance(error, TimeoutError) else "error"


def client_text(client_address: Any) -> str:
    """``client_address`` (as socketserver gives it) for the log: ``HOST:PORT``,
    ``[HOST]:PORT`` for IPv6, a Unix peer's path (``@NAME`` for an abstract name), ``-`` for
    an unnamed Unix peer (also for PreforkUnixHTTPServer's ``(PEER, 0)``: PEER alone, or
    ``-`` for ``("unix", 0)``). Control characters and spaces, possible in a path, are
    escaped (``\\n``, ``\\x20``), so the line stays one line of space-separated fields."""
    if isinstance(client_address, tuple) and len(client_address) >= 2:
        host, port = client_address[0], client_address[1]
        if port == 0:  # PreforkUnixHTTPServer's (PEER, 0): no TCP or UDP peer has port 0
            return client_text(None if host == "unix" else host)
        text = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    elif not client_address:  # an unnamed Unix peer: "" (or b"", None)
        return "-"
    else:  # a Unix peer's path; Linux gives an abstract name, b"\0NAME", as bytes
        if isinstance(client_address, bytes):
            client_address = client_address.decode("utf-8", "backslashreplace")
        text = str(client_address)
        text = "@" + text[1:] if text.startswith("\0") else text
    if text.isprintable() and " " not in text:
        return text
    return text.encode("unicode_escape").decode("ascii").replace(" ", "\\x20")


class AccessLog:
    """An access log file (or stderr), written by the workers, one line per connection.

    For the caller (the master): :meth:`open` at start, before the fork; :meth:`reopen` on
    USR1, after a rotation; :meth:`close` at exit. For the workers: :meth:`record` after each
    connection, and :meth:`reopen` when the master forwards USR1. Not to be overridden.
    """

    def __init__(self, path: str, fd: int, log_format: str, *, owned: bool = True) -> None:
        """Use the open descriptor ``fd`` (of ``path``); :meth:`open` is the usual way.
        ``owned``: :meth:`close` closes ``fd``. Raises ValueError for an unknown format."""
        if log_format not in LOG_FORMATS:
            raise ValueError(f"unknown log format {log_format!r}: expected one of {', '.join(LOG_FORMATS)}")
        #: The path given (``-``: stderr).
        self.path = path
        #: The descriptor written to: stays the same number across :meth:`reopen`.
        self.fd = fd
        #: ``text`` or ``json``.
        self.log_format = log_format
        self._owned = owned
        #: Lines lost to a failed write (ENOSPC, EPIPE, EBADF...), in this process.
        self.drops = 0

    @classmethod
    def open(
        cls, path: str, log_format: str, *, user: int | None = None, group: int | None = None
    ) -> AccessLog:
        """Open the access log at ``path`` (``-``: stderr) for appending, creating it with mode
        :data:`FILE_MODE` (less the umask). A symbolic link at ``path`` is refused, never
        followed (``O_NOFOLLOW``). Run as root with the workers' ``user`` and ``group`` (uid,
        gid), the file is given to them, so workers can :meth:`reopen` it after a rotation.
        Runs in the master, before the fork: the workers inherit the descriptor (not kept
        across exec). Raises OSError (with the path, and a clear ``strerror`` for a symbolic
        link), ValueError for an unknown ``log_format``.
        """
        if log_format not in LOG_FORMATS:
            raise ValueError(f"unknown log format {log_format!r}: expected one of {', '.join(LOG_FORMATS)}")
        if path == STDERR:
            return cls(path, 2, log_format, owned=False)
        fd = _open(path)
        if os.geteuid() == 0 and (user is not None or group is not None):
            try:
                os.fchown(fd, -1 if user is None else user, -1 if group is None else group)
            except OSError:
                os.close(fd)
                raise
        return cls(path, fd, log_format)

    def record(
        self,
        client_address: Any,
        worker: int,
        pid: int,
        seconds: float,
        outcome: str,
        http: tuple[str, int, int] | None = None,
    ) -> None:
        """Write the line of one connection: from ``client_address`` (as socketserver gives it,
        see :func:`client_text`), served by worker number ``worker`` (process ``pid``) in
        ``seconds`` (float, from accept to close), ending in ``outcome`` (one of
        :data:`OUTCOMES`). ``http``: the line is one HTTP request's (a WSGI server logs each
        request of a kept-alive connection): its request line, status and body bytes sent,
        shown as gunicorn's ``"%(r)s" %(s)s %(b)s`` are. One ``write()``. Never raises: a line
        that cannot be written (ENOSPC, EPIPE, a closed descriptor...) is dropped and counted
        in :attr:`drops`. Runs in the worker, after the connection is shut down (or the
        request answered).
        """
        try:
            now = iso_time(time.time())
            client = client_text(client_address)
            if self.log_format == "json":
                if not math.isfinite(seconds):
                    raise ValueError(seconds)  # NaN is not JSON
                request = ""
                if http is not None:
                    status, size = int(http[1]), int(http[2])
                    request = f'"request": {json.dumps(http[0])}, "status": {status}, "bytes": {size}, '
                line = (
                    f'{{"time": "{now}", "logger": "prefork.access", "client": {json.dumps(client)}, '
                    f'"worker": {int(worker)}, "pid": {int(pid)}, {request}"seconds": {seconds:.6f}, '
                    f'"outcome": {json.dumps(outcome)}}}'
                )
            else:
                request = ""
                if http is not None:
                    text = http[0].replace("\\", "\\\\").replace('"', '\\"')
                    if not text.isprintable():  # one line, whatever the target holds
                        text = text.encode("unicode_escape").decode("ascii")
                    request = f'"{text}" {int(http[1])} {int(http[2])} '
                line = f"{client} - worker {worker} [pid {pid}] {now} {request}{outcome} {seconds:.6f}s"
            data = (line + "\n").encode("utf-8", "backslashreplace")
            while data:
                written = os.write(self.fd, data)
                data = data[written:]  # a short write (a full disk, a signal): write the rest
        except Exception:  # OSError, or an address that is not text: never fail the request
            self.drops += 1

    def reopen(self) -> bool:
        """Open :attr:`path` anew (after a log rotation moved the file away) onto the same
        descriptor number, keeping the old file's owner when run as root. Nothing to do for
        stderr. Runs in the master on USR1, and in each worker when the master forwards it.
        Never raises: on an error (logged), keeps writing to the old file and returns False.
        """
        if not self._owned or self.fd < 0:
            return True
        try:
            old_status = os.fstat(self.fd)
            fd = _open(self.path)
            try:
                new_status = os.fstat(fd)
                owner = (old_status.st_uid, old_status.st_gid)
                if os.geteuid() == 0 and (new_status.st_uid, new_status.st_gid) != owner:
                    os.fchown(fd, *owner)
                os.dup2(fd, self.fd, inheritable=False)  # atomic: no moment without a file
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("Cannot reopen the access log %s: %s", self.path, exc.strerror or exc)
            return False
        return True

    def close(self) -> None:
        """Close the file (not stderr); later records are dropped. Idempotent. Runs in the
        master at exit (each worker's copy goes with the worker)."""
        if self._owned and self.fd >= 0:
            fd, self.fd = self.fd, -1
            try:
                os.close(fd)
            except OSError:
                pass

    def __repr__(self) -> str:
        return f"<AccessLog {self.path!r} fd={self.fd} {self.log_format} drops={self.drops}>"


def _open(path: str) -> int:
    """Open ``path`` for appending without following a symbolic link; raises OSError."""
    try:
        return os.open(path, _OPEN_FLAGS, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            try:
                is_link = stat.S_ISLNK(os.lstat(path).st_mode)
            except OSError:
                is_link = False
            if is_link:
                raise OSError(errno.ELOOP, "a symbolic link is there: not followed", path) from None
        raise
