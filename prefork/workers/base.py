"""The base worker: what every worker class does in its process around serving.

A :class:`Worker` object is created by the master before the fork; ``__init__`` touches nothing
process-wide, and the master keeps the object as its record of the process (pid, boot state,
stop deadline). In the child, :meth:`Worker.run` boots the process (:meth:`Worker.init_process`),
reports to the master, serves until told to stop, and returns an exit status; the master's fork
code ends the child with ``os._exit(status)``, so a worker never returns into master code.

Workers report to the master over one pipe shared by the pool: each message is written with a
single ``write()`` of less than ``PIPE_BUF`` bytes, so messages never interleave.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import struct
import time
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING, ClassVar

import setproctitle

if TYPE_CHECKING:
    from _socket import _RetAddress
    from socketserver import BaseServer, _RequestType

    from prefork.server import PreforkMixIn

log = logging.getLogger("prefork")

#: Exit status of a worker that stopped normally.
WORKER_EXIT_OK = 0
#: Exit status of a worker whose loop raised (the error is logged by the worker).
WORKER_EXIT_ERROR = 1
#: Exit status of a worker that failed while booting, before serving (as gunicorn's).
WORKER_BOOT_ERROR = 3

#: Message kinds on the notification pipe (worker -> master).
READY = b"R"
BOOT_ERROR = b"B"

_HEADER = struct.Struct("=ciH")  # kind, pid, length of the UTF-8 text that follows
_MAX_TEXT = 400  # keeps every message far below PIPE_BUF (512 on the smallest POSIX systems)

#: accept() errors that mean the process or system is out of a resource: waiting a little
#: beats spinning on them (as trio's serve_listeners does).
ACCEPT_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


def drain(fd: int) -> None:
    """Read a non-blocking wake-up pipe or socket until it is empty (or closed)."""
    try:
        while os.read(fd, 4096):
            pass
    except OSError:
        pass


def encode_message(kind: bytes, pid: int, text: str = "") -> bytes:
    """Return one notification message (at most 407 bytes)."""
    data = text.encode("utf-8", "replace")[:_MAX_TEXT]
    return _HEADER.pack(kind, pid, len(data)) + data


def decode_messages(buffer: bytes) -> tuple[list[tuple[bytes, int, str]], bytes]:
    """Split ``buffer`` into whole messages ``(kind, pid, text)`` and the incomplete remainder."""
    messages: list[tuple[bytes, int, str]] = []
    while len(buffer) >= _HEADER.size:
        kind, pid, length = _HEADER.unpack_from(buffer)
        end = _HEADER.size + length
        if len(buffer) < end:
            break
        messages.append((kind, pid, buffer[_HEADER.size : end].decode("utf-8", "replace")))
        buffer = buffer[end:]
    return messages, buffer


class Worker:
    """One worker process of the pool; subclasses implement :meth:`serve`.

    Created in the master before the fork. Arguments: ``server``, the prefork server (the
    master's object, inherited by the fork); ``number``, the worker's number K in the pool
    (0 .. workers-1, shown in its title and reused by its replacement); ``generation``, the
    reload count it was started in; ``name``, the process name; ``notify_fd``, the write end of
    the pipe to the master; ``master_fd``, the read end of a pipe only the master writes to,
    which reads EOF when the master has died.

    Methods for derived worker classes: :meth:`serve` (must be overridden) and
    :meth:`process_request` (must be overridden); :meth:`init_process` and
    :meth:`init_signals` (may be extended).
    """

    #: Signals the worker ignores (handled as a no-op, so an exec'd child gets the default).
    #: HUP, TTIN/TTOU, USR1/USR2 are the master's; a process-group-wide one must not kill workers.
    IGNORED_SIGNALS: ClassVar[tuple[signal.Signals, ...]] = (
        signal.SIGHUP,
        signal.SIGTTIN,
        signal.SIGTTOU,
        signal.SIGUSR1,
        signal.SIGUSR2,
    )

    def __init__(
        self,
        server: PreforkMixIn,
        number: int,
        generation: int,
        name: str,
        notify_fd: int,
        master_fd: int,
    ) -> None:
        self.server = server
        self.number = number
        self.generation = generation
        self.name = name
        self.notify_fd = notify_fd
        self.master_fd = master_fd
        #: In the worker: False once it has been told to stop (TERM) or the master died.
        self.alive = True
        self.wakeup_fd = -1  # read end of this worker's signal wake-up pipe
        # Bookkeeping kept by the master (meaningless in the worker):
        self.pid = 0
        self.pidfd = -1
        self.spawned_at = 0.0  # time.monotonic() of the fork
        self.booted = False  # the worker reported READY
        self.boot_error = ""  # the cause it reported when it failed to boot
        self.stop_deadline: float | None = None  # when a stopping worker gets SIGKILL

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.number} pid={self.pid} gen={self.generation}>"

    # -- in the worker process -------------------------------------------------------------

    def run(self) -> int:
        """Boot, serve until stopped, and return the exit status. Runs in the worker.

        A boot failure (an exception from :meth:`init_process`, e.g. from the server's
        ``post_fork`` hook) is logged, reported to the master with its cause, and gives
        :data:`WORKER_BOOT_ERROR`.
        """
        try:
            self.init_process()
        except Exception as exc:
            log.exception("Worker %d (pid %d) failed to boot", self.number, os.getpid())
            self.notify(BOOT_ERROR, f"{type(exc).__name__}: {exc}")
            return WORKER_BOOT_ERROR
        self.notify(READY)
        self.serve()
        return WORKER_EXIT_OK

    def init_process(self) -> None:
        """Prepare this process to serve. Runs in the worker, right after the fork.

        Sets the signal handlers, the process title (``prefork: worker K [NAME]``), the
        server's ``worker`` attribute, then calls the server's ``post_fork`` hook. May be
        extended (call this first).
        """
        self.pid = os.getpid()
        self.init_signals()
        setproctitle.setproctitle(f"prefork: worker {self.number} [{self.name}]")
        for server in self.listeners():
            server.worker = self
        self.server.post_fork(self)

    def init_signals(self) -> None:
        """Install the worker's signal handlers. Runs in the worker. May be extended.

        TERM: stop after the request in progress (graceful). INT, QUIT: exit at once.
        Handlers only record; a wake-up pipe (``signal.set_wakeup_fd``) wakes the loop.
        """
        for sig in self.IGNORED_SIGNALS:
            signal.signal(sig, _ignore)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, self.handle_term)
        signal.signal(signal.SIGINT, self.handle_quit)
        signal.signal(signal.SIGQUIT, self.handle_quit)
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        self.wakeup_fd = read_fd
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

    def handle_term(self, signum: int, frame: FrameType | None) -> None:
        """TERM: finish the request in progress, then exit (graceful stop)."""
        self.alive = False

    def handle_quit(self, signum: int, frame: FrameType | None) -> None:
        """INT, QUIT: exit now (fast stop); an in-flight request is cut off."""
        os._exit(WORKER_EXIT_OK)

    def notify(self, kind: bytes, text: str = "") -> None:
        """Send one message to the master; dropped if the pipe is full. Runs in the worker."""
        try:
            os.write(self.notify_fd, encode_message(kind, os.getpid(), text))
        except OSError:
            pass

    def drain_wakeups(self) -> None:
        """Empty the signal wake-up pipe. Runs in the worker."""
        drain(self.wakeup_fd)

    def serve(self) -> None:
        """Accept and process requests until ``alive`` is False. Runs in the worker.

        Must be overridden.
        """
        raise NotImplementedError

    def process_request(
        self, server: PreforkMixIn, request: _RequestType, client_address: _RetAddress
    ) -> None:
        """Process one request of ``server`` (its ``process_request`` in a worker).

        Must be overridden.
        """
        raise NotImplementedError

    def handle_request(self, server: BaseServer) -> None:
        """Take one request from ``server`` and process it, as BaseServer._handle_request_noblock.

        ``get_request`` -> ``verify_request`` (False: ``shutdown_request``, never processed)
        -> ``process_request``; an exception goes to ``handle_error`` and the request is shut
        down. accept() finding nothing (another worker took the connection) returns quietly;
        EMFILE, ENFILE, ENOMEM and ENOBUFS are logged and followed by a 0.1 s pause. Runs in
        the worker.
        """
        try:
            request, client_address = server.get_request()
        except OSError as exc:
            if exc.errno in ACCEPT_RESOURCE_ERRNOS:
                log.warning("Worker %d cannot accept: %s; pausing 0.1 s", self.number, exc)
                time.sleep(0.1)
            return
        if server.verify_request(request, client_address):
            try:
                server.process_request(request, client_address)
            except Exception:
                server.handle_error(request, client_address)
                server.shutdown_request(request)
            except BaseException:
                server.shutdown_request(request)
                raise
        else:
            server.shutdown_request(request)

    def listeners(self) -> Iterator[PreforkMixIn]:
        """Yield the servers this worker accepts on: the server, then its ``listeners``."""
        yield self.server
        yield from self.server.listeners


def _ignore(signum: int, frame: FrameType | None) -> None:
    """A no-op handler: unlike SIG_IGN, it is reset to the default in exec'd children."""
