"""The master's signals: which method acts on each, and handlers that only record them.

As gunicorn's arbiter and unicorn's master: a handler appends the signal to a queue and
``signal.set_wakeup_fd`` wakes the master's wait; the master loop acts on the queue
(``Master.dispatch_signals`` calls ``handle_<name>``) outside the handler.
"""

from __future__ import annotations

import collections
import signal
import threading
from collections.abc import Callable, Mapping
from types import FrameType, MappingProxyType

#: The master's signals and the method (``handle_<name>``) that acts on each.
SIGNALS: Mapping[signal.Signals, str] = MappingProxyType(
    {
        signal.SIGTERM: "term",
        signal.SIGINT: "int",
        signal.SIGQUIT: "quit",
        signal.SIGHUP: "hup",
        signal.SIGTTIN: "ttin",
        signal.SIGTTOU: "ttou",
        signal.SIGCHLD: "chld",
        signal.SIGUSR1: "usr1",
        signal.SIGUSR2: "usr2",
    }
)

_Handler = Callable[[int, FrameType | None], object] | int | None


class SignalQueue:
    """The master's signal handlers: each only appends the signal to :attr:`pending`;
    ``signal.set_wakeup_fd`` (the write end ``wakeup_fd``) wakes the loop. Installed only in
    the main thread; :meth:`restore` puts back what was there before."""

    def __init__(self, wakeup_fd: int) -> None:
        self.wakeup_fd = wakeup_fd
        #: Signals received and not yet acted on, oldest first.
        self.pending: collections.deque[int] = collections.deque()
        self._old_handlers: dict[signal.Signals, _Handler] = {}
        self._old_wakeup_fd: int | None = None

    def install(self) -> None:
        """Install the handlers of :data:`SIGNALS` and the wake-up fd (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._old_wakeup_fd = signal.set_wakeup_fd(self.wakeup_fd, warn_on_full_buffer=False)
        for sig in SIGNALS:
            self._old_handlers[sig] = signal.signal(sig, self.record)

    def restore(self) -> None:
        """Put back the handlers and wake-up fd that were there before :meth:`install`."""
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._old_handlers.clear()
        if self._old_wakeup_fd is not None:
            signal.set_wakeup_fd(self._old_wakeup_fd)
            self._old_wakeup_fd = None

    def record(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler: record the signal; the wake-up fd wakes the loop."""
        self.pending.append(signum)
