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
import faulthandler
import logging
import os
import pwd
import select
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from time import monotonic
from types import FrameType
from typing import TYPE_CHECKING, ClassVar

import setproctitle

from prefork.logs import reopen_log_files
from prefork.scoreboard import WorkerState

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


#: How a worker waits for its listening sockets (see :class:`ListenerWaiter`), by preference.
ACCEPT_WAITS = ("exclusive", "select", "blocking")

#: The code object of ``socket.socket.accept``: a TERM arriving in a blocking accept() runs
#: the handler in that frame (the ``blocking`` wait raises there, else PEP 475 retries accept).
_SOCKET_ACCEPT_CODE = socket.socket.accept.__code__


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
    which reads EOF when the master has died; ``slot``, its slot in the server's scoreboard;
    ``max_requests``, the number of requests after which it exits to be replaced (0: never;
    the master adds max_requests_jitter).

    Methods for derived worker classes: :meth:`serve` (must be overridden) and
    :meth:`process_request` (must be overridden); :meth:`init_process` and
    :meth:`init_signals` (may be extended).
    """

    #: How the worker waits for connections: "exclusive" (the default: epoll, the listening
    #: sockets with EPOLLEXCLUSIVE, so one connection wakes one idle worker; measured best, see
    #: docs/performance.md; "select" where the kernel lacks it), "select" (a level-triggered
    #: selector: every idle worker wakes for each connection) or "blocking" (blocking accept()
    #: on the only listening socket; measured, not recommended: it does not notice the
    #: master's death). See :class:`ListenerWaiter` and docs/architecture.md.
    accept_wait: ClassVar[str] = "exclusive"

    #: Signals the worker ignores (handled as a no-op, so an exec'd child gets the default).
    #: HUP, TTIN/TTOU, USR2 are the master's; a process-group-wide one must not kill workers.
    IGNORED_SIGNALS: ClassVar[tuple[signal.Signals, ...]] = (
        signal.SIGHUP,
        signal.SIGTTIN,
        signal.SIGTTOU,
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
        slot: int = 0,
        max_requests: int = 0,
    ) -> None:
        self.server = server
        self.number = number
        self.generation = generation
        self.name = name
        self.notify_fd = notify_fd
        self.master_fd = master_fd
        self.slot = slot
        self.max_requests = max_requests
        #: In the worker: False once it has been told to stop (TERM) or the master died.
        self.alive = True
        #: In the worker: True once :meth:`wait_for_listeners` has seen the master's death.
        self.master_died = False
        #: In the worker: requests processed so far.
        self.requests = 0
        self.reopen_logs = False  # USR1 arrived: reopen log files in the loop
        self.wakeup_fd = -1  # read end of this worker's wake-up pipe (signals, :meth:`wake`)
        self._wakeup_w = -1  # its write end
        #: In the worker: accept() calls that found no connection (another worker took it):
        #: the spurious wake-ups. Counted off the request path (only when accept fails).
        self.empty_accepts = 0
        self._waiter: ListenerWaiter | None = None
        # The scoreboard writes of the request path, bound to the slot (set in :meth:`run`).
        self._slot_started: Callable[[float], None] | None = None
        self._slot_finished: Callable[[WorkerState, float, int], None] | None = None
        self._blocking_accept = False  # the "blocking" wait: TERM must interrupt accept()
        # Bookkeeping kept by the master (meaningless in the worker):
        self.pid = 0
        self.pidfd = -1
        self.spawned_at = 0.0  # time.monotonic() of the fork
        self.booted = False  # the worker reported READY
        self.boot_error = ""  # the cause it reported when it failed to boot
        self.stop_deadline: float | None = None  # when a stopping worker gets SIGKILL
        self.aborted = False  # sent SIGABRT for the request timeout

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
        self.notify(READY)  # then the title: a worker titled ready has told the master so
        setproctitle.setproctitle(f"prefork: worker {self.number} [{self.name}]")
        if self.server.scoreboard is not None:
            self.server.scoreboard.booted(self.slot, self.pid)
            self._slot_started, self._slot_finished = self.server.scoreboard.request_writers(self.slot)
        self.serve()
        if self.server.scoreboard is not None:
            self.server.scoreboard.set_state(self.slot, WorkerState.STOPPING)
        return WORKER_EXIT_OK

    def init_process(self) -> None:
        """Prepare this process to serve. Runs in the worker, right after the fork.

        Sets the signal handlers, makes ``faulthandler`` dump the Python stack to stderr on
        SIGABRT (the request timeout) and fatal signals, sets the process title
        (``prefork: worker K [NAME] booting``; without "booting" once ready) and the server's
        ``worker`` attribute, switches to the ``group`` and ``user`` settings (as gunicorn's),
        then calls the server's ``post_fork`` hook. May be extended (call this first).

        Raises PermissionError when the user or group cannot be switched to.
        """
        self.pid = os.getpid()
        self.init_signals()
        try:
            faulthandler.enable(file=sys.stderr, all_threads=True)
        except (AttributeError, ValueError, OSError):  # stderr closed or not a real file
            faulthandler.enable(file=2, all_threads=True)
        setproctitle.setproctitle(f"prefork: worker {self.number} [{self.name}] booting")
        for server in self.listeners():
            server.worker = self
        self.switch_user()
        self.server.post_fork(self)

    def switch_user(self) -> None:
        """Switch to the server's ``group`` and ``user`` settings (gid first, with the user's
        supplementary groups). Runs in the worker. Raises PermissionError if not allowed."""
        user, group = self.server.user, self.server.group
        if group is not None:
            os.setgid(group)
        if user is not None:
            if group is None:
                group = pwd_gid(user)
                os.setgid(group)
            name = pwd_name(user)
            os.setgroups(os.getgrouplist(name, group) if name is not None else [group])
            os.setuid(user)

    def init_signals(self) -> None:
        """Install the worker's signal handlers. Runs in the worker. May be extended.

        TERM: stop after the request in progress (graceful). INT, QUIT: exit at once.
        Handlers only record; a wake-up pipe (``signal.set_wakeup_fd``, also written by
        :meth:`wake`) wakes the loop.
        """
        for sig in self.IGNORED_SIGNALS:
            signal.signal(sig, _ignore)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, self.handle_term)
        signal.signal(signal.SIGINT, self.handle_quit)
        signal.signal(signal.SIGQUIT, self.handle_quit)
        signal.signal(signal.SIGUSR1, self.handle_usr1)
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        self.wakeup_fd, self._wakeup_w = read_fd, write_fd
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

    def handle_term(self, signum: int, frame: FrameType | None) -> None:
        """TERM: finish the request in progress, then exit (graceful stop).

        With the ``blocking`` accept wait, a TERM arriving in ``accept()`` raises
        InterruptedError there (``handle_request`` returns quietly), since PEP 475 would
        otherwise retry the accept after this handler returns.
        """
        self.alive = False
        if self._blocking_accept and frame is not None and frame.f_code is _SOCKET_ACCEPT_CODE:
            raise InterruptedError("the worker is stopping")

    def handle_quit(self, signum: int, frame: FrameType | None) -> None:
        """INT, QUIT: exit now (fast stop); an in-flight request is cut off."""
        os._exit(WORKER_EXIT_OK)

    def handle_usr1(self, signum: int, frame: FrameType | None) -> None:
        """USR1 (forwarded by the master): reopen log files, in the loop."""
        self.reopen_logs = True

    def notify(self, kind: bytes, text: str = "") -> None:
        """Send one message to the master; dropped if the pipe is full. Runs in the worker."""
        try:
            os.write(self.notify_fd, encode_message(kind, os.getpid(), text))
        except OSError:
            pass

    def wake(self) -> None:
        """Make the worker's wait in :meth:`wait_for_listeners` return, from any thread of the
        worker: a null byte on the signal wake-up pipe (as asyncio's ``call_soon_threadsafe``
        writes on its self-pipe). A full pipe already holds a wake-up: the write is dropped."""
        try:
            os.write(self._wakeup_w, b"\0")
        except BlockingIOError:
            pass

    def drain_wakeups(self) -> None:
        """Empty the signal wake-up pipe and act on what the handlers recorded (USR1).
        Runs in the worker."""
        drain(self.wakeup_fd)
        if self.reopen_logs:
            self.reopen_logs = False
            reopen_log_files()

    def wait_for_listeners(self, timeout: float | None = None, *, listen: bool = True) -> list[PreforkMixIn]:
        """Wait until a listening socket of this worker is readable; return the servers whose
        socket is (pass each to :meth:`handle_request`), or [] after ``timeout`` seconds
        (None: no limit), a signal, a :meth:`wake`, or the master's death. Runs in the worker.

        With ``listen`` False the listening sockets are left out of the wait (until a call
        with ``listen`` True), so the connections go to other workers: only the other events
        end it, and it returns []. Signals are acted on here (:meth:`drain_wakeups`); the
        master's death logs a warning and sets ``alive`` to False and ``master_died`` to True.
        Callers loop ``while self.alive``. The waiting mechanism is the class attribute
        ``accept_wait`` (see :class:`ListenerWaiter`), set up on the first call and kept for
        the worker's life.
        """
        if self._waiter is None:
            self._waiter = ListenerWaiter(self, list(self.listeners()), self.accept_wait)
        return self._waiter.wait(timeout, listen)

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

    def handle_request(self, server: BaseServer, *, woken: bool = True) -> bool:
        """Take one request from ``server`` and process it, as BaseServer._handle_request_noblock.
        Return True when a connection was accepted, False when none was waiting.

        ``get_request`` -> ``verify_request`` (False: ``shutdown_request``, never processed)
        -> ``process_request``; an exception goes to ``handle_error`` and the request is shut
        down. accept() finding nothing (another worker took the connection) returns quietly,
        and counts in ``empty_accepts`` when ``woken`` (the wait said a connection was there;
        False: the worker is only trying, see :meth:`SyncWorker.serve`). EMFILE, ENFILE,
        ENOMEM and ENOBUFS are logged and followed by a 0.1 s pause. The worker's scoreboard
        slot is BUSY from accept to the end, then counts the request (or, when
        verify_request refused it, the denied connection); after ``max_requests`` the worker
        stops (``alive`` becomes False). Runs in the worker.
        """
        try:
            request, client_address = server.get_request()
        except OSError as exc:
            self.accept_failed(exc, woken)
            return False
        self.request_started(request)
        processed = False
        try:
            if server.verify_request(request, client_address):
                self.requests += 1
                try:
                    server.process_request(request, client_address)
                    processed = True
                except Exception:
                    server.handle_error(request, client_address)
                    server.shutdown_request(request)
                except BaseException:
                    server.shutdown_request(request)
                    raise
            else:
                if self.server.scoreboard is not None:
                    self.server.scoreboard.count_denied(self.slot)
                server.shutdown_request(request)
        finally:
            if self.max_requests:
                self.check_max_requests()
            self.request_returned(request, processed)
        return True

    def request_started(self, request: _RequestType) -> None:
        """A request was accepted: the scoreboard slot becomes BUSY. Runs in the worker. May
        be overridden (the ``thread`` worker counts requests in flight)."""
        if self._slot_started is not None:
            self._slot_started(monotonic())

    def request_returned(self, request: _RequestType, processed: bool) -> None:
        """:meth:`handle_request` is done with ``request``: ``processed`` when
        ``process_request`` returned, False when it raised or ``verify_request`` refused the
        request. Here the request is over: the slot says IDLE (STOPPING once not ``alive``)
        with the count of requests. Runs in the worker. May be overridden (the ``thread``
        worker's requests go on in a handler thread)."""
        if self._slot_finished is not None:
            self._slot_finished(WorkerState.IDLE if self.alive else WorkerState.STOPPING, 0.0, self.requests)

    def accept_failed(self, error: OSError, woken: bool) -> None:
        """``get_request()`` raised ``error``: quietly when no connection was waiting (counted
        in ``empty_accepts`` when ``woken``), with a log line and a 0.1 s pause for EMFILE,
        ENFILE, ENOMEM and ENOBUFS. Runs in the worker."""
        if error.errno in ACCEPT_RESOURCE_ERRNOS:
            log.warning("Worker %d cannot accept: %s; pausing 0.1 s", self.number, error)
            time.sleep(0.1)
        elif woken:
            self.empty_accepts += 1

    def check_max_requests(self) -> None:
        """After ``max_requests`` requests, log it and stop (``alive`` becomes False), to be
        replaced by the master (as gunicorn's max_requests). Runs in the worker."""
        if self.max_requests and self.requests >= self.max_requests and self.alive:
            log.info(
                "Worker %d (pid %d) served %d requests (max_requests); exiting to be replaced",
                self.number,
                self.pid,
                self.requests,
            )
            self.alive = False

    def listeners(self) -> Iterator[PreforkMixIn]:
        """Yield the servers this worker accepts on: the server, then its ``listeners``."""
        yield self.server
        yield from self.server.listeners


class ListenerWaiter:
    """Waits for the listening sockets of one worker, with its wake-up pipe (signals and
    :meth:`Worker.wake`) and the master pipe. Created and used in the worker (by
    :meth:`Worker.wait_for_listeners`).

    ``how`` is one of :data:`ACCEPT_WAITS`:

    - ``exclusive``: one epoll instance per worker, the listening sockets registered with
      ``EPOLLIN | EPOLLEXCLUSIVE`` (Linux >= 4.5), so the kernel wakes one worker waiting in
      epoll_wait per connection instead of all of them; the other fds normally. accept()
      stays non-blocking: a woken worker may still find nothing. Where EPOLLEXCLUSIVE is
      missing (or refused), falls back to ``select``.
    - ``select``: ``selectors.DefaultSelector`` (level-triggered): every idle worker wakes.
    - ``blocking``: no waiting; the only listening socket is made blocking (for the whole pool:
      O_NONBLOCK is shared) and :meth:`wait` returns it at once, so the worker sleeps in
      accept(), where the kernel wakes one waiter per connection (FIFO). TERM interrupts it
      (:meth:`Worker.handle_term`); the master's death goes unnoticed until the next request.
      Only for one stream listener; else falls back to ``exclusive``.

    A wait without the listening sockets (``listen`` False) uses the same epoll or selector
    with the listening sockets unregistered (a selector of the other fds for ``blocking``).
    """

    def __init__(self, worker: Worker, servers: list[PreforkMixIn], how: str) -> None:
        if how not in ACCEPT_WAITS:
            raise ValueError(f"accept_wait must be one of {', '.join(ACCEPT_WAITS)}, got {how!r}")
        self.worker = worker
        self.servers = {server.fileno(): server for server in servers}
        if how == "blocking" and (len(servers) != 1 or servers[0].socket.type != socket.SOCK_STREAM):
            how = "exclusive"
        exclusive = getattr(select, "EPOLLEXCLUSIVE", 0)
        poller: select.epoll | selectors.BaseSelector | None = None
        if how == "exclusive" and exclusive and hasattr(select, "epoll"):
            self.events = select.EPOLLIN | exclusive  # of the listening sockets
            poller = select.epoll()
            try:
                for fd in self.servers:
                    poller.register(fd, self.events)
            except OSError:  # EINVAL: a kernel older than 4.5
                poller.close()
                poller = None
            else:
                poller.register(worker.wakeup_fd, select.EPOLLIN)
                poller.register(worker.master_fd, select.EPOLLIN)
        if poller is None:
            self.events = selectors.EVENT_READ
            poller = selectors.DefaultSelector()
            poller.register(worker.wakeup_fd, self.events)
            poller.register(worker.master_fd, self.events)
            if how == "blocking":  # the selector only for waits without the listener
                servers[0].socket.setblocking(True)
                worker._blocking_accept = True
            else:
                how = "select"
                for fd in self.servers:
                    poller.register(fd, self.events)
        #: The epoll instance or selector.
        self.poller = poller
        #: The mechanism in use, after fallbacks.
        self.how = how
        #: The listening sockets are registered in the poller (unused by ``blocking``).
        self.listening = True

    def wait(self, timeout: float | None, listen: bool = True) -> list[PreforkMixIn]:
        """Wait up to ``timeout`` seconds (None: no limit); return the readable listeners.
        With ``listen`` False, leave the listening sockets out (and return []).

        Acts on signals and on the master's death (see :meth:`Worker.wait_for_listeners`).
        """
        poller = self.poller
        if listen != self.listening and self.how != "blocking":
            self.listening = listen
            for fd in self.servers:
                if listen:
                    poller.register(fd, self.events)
                else:
                    poller.unregister(fd)
        if isinstance(poller, select.epoll):  # a concrete type: cheaper than the selector ABC
            fds = [fd for fd, _ in poller.poll(-1 if timeout is None else timeout)]
        else:
            if listen and self.how == "blocking":  # accept() itself waits
                drain(self.worker.wakeup_fd)
                return list(self.servers.values()) if self.worker.alive else []
            fds = [key.fd for key, _ in poller.select(timeout)]
        ready = []
        for fd in fds:
            server = self.servers.get(fd)
            if server is not None:
                ready.append(server)
            elif fd == self.worker.master_fd:
                log.warning("Worker %d: the master died; exiting", self.worker.number)
                self.worker.alive = False
                self.worker.master_died = True
                poller.unregister(fd)  # at EOF: readable for good
            else:
                self.worker.drain_wakeups()
        return ready

    def close(self) -> None:
        """Close the epoll instance or selector."""
        self.poller.close()


def pwd_gid(uid: int) -> int:
    """The primary group of user ``uid`` (``uid`` itself when the user is not in passwd)."""
    try:
        return int(pwd.getpwuid(uid).pw_gid)
    except KeyError:
        return uid


def pwd_name(uid: int) -> str | None:
    """The name of user ``uid``, or None when the user is not in passwd."""
    try:
        return str(pwd.getpwuid(uid).pw_name)
    except KeyError:
        return None


def _ignore(signum: int, frame: FrameType | None) -> None:
    """A no-op handler: unlike SIG_IGN, it is reset to the default in exec'd children."""
