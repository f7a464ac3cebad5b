"""How a worker process handles signals: the handlers only record (and a wake-up pipe wakes
the worker's wait), and the worker acts on them in its loop (:meth:`SignalHandling.act_on_signals`).
A mixin of :class:`~prefork.workers.base.Worker`, in the worker process."""

from __future__ import annotations

import os
import signal
import socket
from types import FrameType
from typing import TYPE_CHECKING, ClassVar

from prefork.logs import reopen_log_files
from prefork.messages import WORKER_EXIT_OK

if TYPE_CHECKING:
    from prefork.contract import PoolServer

#: The code object of ``socket.socket.accept``: a TERM arriving in a blocking accept() runs
#: the handler in that frame (the ``blocking`` wait raises there, else PEP 475 retries accept).
_SOCKET_ACCEPT_CODE = socket.socket.accept.__code__


class SignalHandling:
    """The worker's signal handlers and its wake-up pipe (see :meth:`init_signals`). Runs in
    the worker process."""

    server: PoolServer
    alive: bool
    terminated: bool
    blocking_accept: bool
    reopen_logs: bool
    wakeup_fd: int
    _wakeup_w: int

    #: Signals the worker ignores (handled as a no-op, so an exec'd child gets the default).
    #: HUP, TTIN/TTOU, USR2 are the master's; a process-group-wide one must not kill workers.
    IGNORED_SIGNALS: ClassVar[tuple[signal.Signals, ...]] = (
        signal.SIGHUP,
        signal.SIGTTIN,
        signal.SIGTTOU,
        signal.SIGUSR2,
    )

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
        # The master forked this process with its signals blocked (prefork.spawn): what
        # arrived since is delivered now, to these handlers.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, (*HANDLED_SIGNALS, *self.IGNORED_SIGNALS, signal.SIGCHLD))

    def handle_term(self, signum: int, frame: FrameType | None) -> None:
        """TERM: finish the request in progress, then exit (graceful stop).

        With the ``blocking`` accept wait, a TERM arriving in ``accept()`` raises
        InterruptedError there (``handle_request`` returns quietly), since PEP 475 would
        otherwise retry the accept after this handler returns.
        """
        self.alive = False
        self.terminated = True
        if self.blocking_accept and frame is not None and frame.f_code is _SOCKET_ACCEPT_CODE:
            raise InterruptedError("the worker is stopping")

    def handle_quit(self, signum: int, frame: FrameType | None) -> None:
        """INT, QUIT: exit now (fast stop); an in-flight request is cut off."""
        os._exit(WORKER_EXIT_OK)

    def handle_usr1(self, signum: int, frame: FrameType | None) -> None:
        """USR1 (forwarded by the master): reopen log files, in the loop."""
        self.reopen_logs = True

    def wake(self) -> None:
        """Make the worker's wait in :meth:`wait_for_listeners` return, from any thread of the
        worker: a null byte on the signal wake-up pipe (as asyncio's ``call_soon_threadsafe``
        writes on its self-pipe). A full pipe already holds a wake-up: the write is dropped."""
        try:
            os.write(self._wakeup_w, b"\0")
        except OSError:  # full (a wake-up is pending), or closed (a handler's forked child)
            pass

    def act_on_signals(self, signals: bytes = b"") -> None:
        """Act on the signals that arrived: ``signals`` are their numbers as read from the
        wake-up pipe, and the handlers' records (USR1: reopen log files). Runs in the worker,
        after a wait. May be extended.

        The numbers are acted on as the handlers would (TERM: stop after this request; INT,
        QUIT: exit now; USR1: reopen log files), since a handler may not have run: CPython
        3.13 forked from a thread other than the main one can leave the child's Python-level
        handlers uncalled while the wake-up byte arrives."""
        for number in signals:
            if number == signal.SIGTERM:
                self.alive = False
                self.terminated = True
            elif number in (signal.SIGINT, signal.SIGQUIT):
                os._exit(WORKER_EXIT_OK)
            elif number == signal.SIGUSR1:
                self.reopen_logs = True
        if self.reopen_logs:
            self.reopen_logs = False
            reopen_log_files()
            if self.server.access is not None:
                self.server.access.reopen()


#: The signals a worker handles (see :meth:`Worker.init_signals`).
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1)


def default_signals(signals: tuple[signal.Signals, ...]) -> None:
    """Give ``signals`` their default action and stop writing them to the wake-up fd (in a
    process forked by a handler); left alone where Python refuses (not the main thread)."""
    try:
        signal.set_wakeup_fd(-1)
        for sig in signals:
            signal.signal(sig, signal.SIG_DFL)
    except ValueError:
        pass


def _ignore(signum: int, frame: FrameType | None) -> None:
    """A no-op handler: unlike SIG_IGN, it is reset to the default in exec'd children."""
