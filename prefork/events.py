"""What wakes the master: one selector over the signal wake-up socket, the workers'
notification pipe and, on Linux >= 5.3, a pidfd per worker.

:class:`MasterEvents` owns those descriptors and the master pipe (which only the master
holds open for writing, so a worker reads EOF on it once the master is gone). It is created
in the master before the first fork; each worker inherits it and drops the master's ends
(:meth:`MasterEvents.close_in_worker`). The messages themselves are :mod:`prefork.messages`.
"""

from __future__ import annotations

import os
import selectors
import socket
from collections.abc import Callable, Iterable

from prefork.messages import decode_messages, drain

#: A message of a worker: (kind, pid, text), see :func:`prefork.messages.decode_messages`.
Message = tuple[bytes, int, str]


class MasterEvents:
    """The master's wait: for a signal (``signal.set_wakeup_fd`` writes to :attr:`wakeup_fd`),
    a thread's :meth:`wakeup`, a worker's message, a worker's exit (its pidfd), or a socket
    given with a callback to :meth:`add` (the control socket)."""

    def __init__(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        #: The notification pipe: workers write messages to ``notify_w``.
        self.notify_r, self.notify_w = os.pipe()
        os.set_blocking(self.notify_r, False)
        os.set_blocking(self.notify_w, False)
        #: The master pipe: workers watch ``master_r``, which reads EOF once the master is gone.
        self.master_r, self.master_w = os.pipe()
        self._buffer = b""
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._selector.register(self.notify_r, selectors.EVENT_READ, None)

    @property
    def wakeup_fd(self) -> int:
        """The fd for ``signal.set_wakeup_fd``: a byte written there ends :meth:`wait`."""
        return self._wake_w.fileno()

    def wait(self, timeout: float) -> list[Message]:
        """Wait up to ``timeout`` seconds for a signal, a wake-up, a message or a worker's
        exit; return the workers' messages that arrived (maybe none). Runs in the master."""
        messages: list[Message] = []
        for key, mask in self._selector.select(timeout):
            if key.data is not None:  # a socket of add(): the control socket, its clients
                key.data(mask)
            elif key.fileobj is self._wake_r:
                drain(self._wake_r.fileno())
            elif key.fileobj == self.notify_r:
                messages += self.read_messages()
        return messages

    def add(self, sock: socket.socket, events: int, callback: Callable[[int], None]) -> None:
        """Make ``sock`` ready for ``events`` (``selectors.EVENT_READ``/``EVENT_WRITE``) call
        ``callback(mask)`` from :meth:`wait`. Runs in the master."""
        self._selector.register(sock, events, callback)

    def change(self, sock: socket.socket, events: int, callback: Callable[[int], None]) -> None:
        """Wait for other ``events`` on a socket of :meth:`add`, with ``callback``."""
        self._selector.modify(sock, events, callback)

    def remove(self, sock: socket.socket) -> None:
        """Stop waiting for a socket of :meth:`add` (before it is closed)."""
        self._selector.unregister(sock)

    def read_messages(self) -> list[Message]:
        """The whole messages waiting in the notification pipe (a partial one is kept for
        the next call). Runs in the master."""
        try:
            while chunk := os.read(self.notify_r, 65536):
                self._buffer += chunk
        except BlockingIOError:
            pass
        messages, self._buffer = decode_messages(self._buffer)
        return messages

    def wakeup(self) -> None:
        """End the master's wait, from any thread."""
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full (the loop will wake anyway) or closed (the loop is over)
            pass

    def watch(self, pid: int) -> int:
        """Make the exit of child ``pid`` end the wait; return its pidfd, or -1 where pidfds
        are missing (kernel < 5.3, not Linux: SIGCHLD and the poll interval wake the loop)."""
        if not hasattr(os, "pidfd_open"):
            return -1
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return -1
        self._selector.register(pidfd, selectors.EVENT_READ, None)
        return pidfd

    def unwatch(self, pidfd: int) -> None:
        """Stop watching and close a pidfd of :meth:`watch` (-1: nothing to do)."""
        if pidfd >= 0:
            self._selector.unregister(pidfd)
            os.close(pidfd)

    def close_in_worker(self, pidfds: Iterable[int]) -> None:
        """In a freshly forked worker: close the master's descriptors (the selector, the
        wake-up socket, the pidfds, the read end of the notification pipe, the write end of
        the master pipe), keeping ``notify_w`` and ``master_r``."""
        self._selector.close()
        for pidfd in pidfds:
            if pidfd >= 0:
                os.close(pidfd)
        self._wake_r.close()
        self._wake_w.close()
        os.close(self.notify_r)
        os.close(self.master_w)

    def close(self) -> None:
        """Close every descriptor (in the master, once the pool is stopped)."""
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
        for fd in (self.notify_r, self.notify_w, self.master_r, self.master_w):
            os.close(fd)
