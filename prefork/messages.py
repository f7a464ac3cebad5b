"""What a worker tells the master: the notification pipe's messages and the exit statuses.

Workers report to the master over one pipe shared by the pool (created by the master before
the first fork): each message is written with a single ``write()`` of less than ``PIPE_BUF``
bytes, so messages of different workers never interleave. A worker ends with
``os._exit(status)``, one of the statuses below, which the master reads with ``waitpid``.
Both sides import this module; it imports nothing of prefork.
"""

from __future__ import annotations

import os
import signal
import struct

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


def describe_exit(code: int) -> str:
    """'exited with status N' or 'was killed by SIGNAME', for an exit code from
    ``os.waitstatus_to_exitcode`` (negative: the signal)."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def encode_message(kind: bytes, pid: int, text: str = "") -> bytes:
    """Return one notification message (at most 407 bytes): ``kind`` (:data:`READY` or
    :data:`BOOT_ERROR`), the worker's ``pid`` and ``text`` (cut to 400 bytes of UTF-8)."""
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


def send_message(fd: int, kind: bytes, text: str = "") -> None:
    """Write one message from this process to the master on pipe ``fd``; dropped when the
    pipe is full or closed (the master reads the exit status anyway). Runs in a worker."""
    try:
        os.write(fd, encode_message(kind, os.getpid(), text))
    except OSError:
        pass


def drain(fd: int) -> None:
    """Read a non-blocking wake-up pipe or socket until it is empty (or closed)."""
    try:
        while os.read(fd, 4096):
            pass
    except OSError:
        pass
