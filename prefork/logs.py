"""Logging around the pool: where the log goes (:func:`setup`) and reopening log files on USR1
(:func:`reopen_log_files`, as gunicorn's reopen_files)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any, TextIO

#: One line per record: time, pid of the process that logged it (master or worker), level.
LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"


def setup(
    level: str | int = "INFO", log_file: str | None = None, user: int | None = None, group: int | None = None
) -> None:
    """Send the log (the root logger, at ``level``) to stderr, or append it to ``log_file``.

    With ``log_file`` (a path; ``-`` means stderr), file descriptors 1 and 2 are pointed at
    the same file, as gunicorn's capture_output, so ``print()``, tracebacks written to stderr
    and faulthandler's stack dumps land in the log too; stdout becomes line-buffered. Runs in
    the master before the pool is forked (workers inherit it). Raises OSError when the file
    cannot be opened; then nothing has changed.

    Run as root with the workers' ``user`` and ``group`` (uid, gid), the file is given to them,
    so workers can reopen it after a rotation; :func:`reopen_log_files` keeps the owner.
    """
    level = level.upper() if isinstance(level, str) else level
    if log_file is None or log_file == "-":
        logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr, force=True)
        return
    handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    assert handler.stream is not None  # opened by the constructor (delay=False)
    fileno = handler.stream.fileno()
    if os.geteuid() == 0 and (user is not None or group is not None):
        try:
            os.fchown(fileno, -1 if user is None else user, -1 if group is None else group)
        except OSError:
            handler.close()
            raise
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    for fd in (1, 2):
        os.dup2(fileno, fd)
    if sys.stdout is not None and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    logging.basicConfig(level=level, handlers=[handler], force=True)


def reopen_log_files() -> None:
    """Reopen every ``logging.FileHandler``'s file (after a log rotation moved it away).

    A standard stream (fd 1 or 2) that pointed at the old file is pointed at the new one, so
    ``print()`` and faulthandler's dumps follow. A file created anew gets the owner of the old
    one (when run as root), so workers that switched user can open it in turn. Runs in the
    master on USR1, and in each worker when the master forwards it (after the master has
    reopened). Errors are logged, never raised.
    """
    handlers = [
        logging.getLogger().handlers,
        *(getattr(lg, "handlers", []) for lg in logging.Logger.manager.loggerDict.values()),
    ]
    for handler in {h for group in handlers for h in group}:
        if not isinstance(handler, logging.FileHandler) or handler.stream is None:
            continue
        handler.acquire()
        try:
            old = handler.stream
            try:
                old_status = os.fstat(old.fileno())
                handler.stream = handler._open()
                new_status = os.fstat(handler.stream.fileno())
                owner = (old_status.st_uid, old_status.st_gid)
                if os.geteuid() == 0 and (new_status.st_uid, new_status.st_gid) != owner:
                    os.fchown(handler.stream.fileno(), *owner)
            except OSError as exc:
                logging.getLogger("prefork").error("Cannot reopen %s: %s", handler.baseFilename, exc)
                continue
            for fd in (1, 2):
                try:
                    status = os.fstat(fd)
                except OSError:
                    continue
                if (status.st_dev, status.st_ino) == (old_status.st_dev, old_status.st_ino):
                    os.dup2(handler.stream.fileno(), fd)
            old.close()
        finally:
            handler.release()


def flush_std_streams() -> None:
    """Flush ``sys.stdout`` and ``sys.stderr``, ignoring a closed stream or a broken pipe.
    Called before a fork (so the child does not inherit unwritten output and write it twice)
    and before a child's ``os._exit``."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # closed, or a broken pipe
            pass


class PipeSafeStream:
    """A text stream (``sys.stdout``, ``sys.stderr``) whose ``write`` and ``flush`` ignore a
    reader that has gone (``BrokenPipeError``: ``prefork ... 2>&1 | head`` once head has
    exited) instead of raising into the code that wrote: ``http.server``'s handlers log each
    request to ``sys.stderr``, and the exception there left every request unanswered. Once
    the pipe is broken, what is written is dropped. Everything else is the wrapped stream's."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        #: The reader has gone: writes are dropped.
        self.broken = False

    def write(self, text: str) -> int:
        """Write ``text`` to the stream; return its length even when it was dropped."""
        if not self.broken:
            try:
                return self.stream.write(text)
            except BrokenPipeError:
                self.broken = True
        return len(text)

    def flush(self) -> None:
        """Flush the stream, unless the pipe is broken."""
        if not self.broken:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self.broken = True

    def writelines(self, lines: Iterable[str]) -> None:
        """Write each of ``lines``, as :meth:`write`."""
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def guard_std_streams() -> Callable[[], None]:
    """Make ``sys.stdout`` and ``sys.stderr`` :class:`PipeSafeStream` wrappers (workers forked
    afterwards inherit them); return a function that puts back each stream it wrapped, if its
    wrapper is still in place (a stream already wrapped, by another pool of this process, or
    replaced since, is left alone). Runs in the master, when the pool starts."""
    installed: list[tuple[str, PipeSafeStream]] = []
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, PipeSafeStream):
            wrapper = PipeSafeStream(stream)
            setattr(sys, name, wrapper)
            installed.append((name, wrapper))

    def restore() -> None:
        for name, wrapper in installed:
            if getattr(sys, name) is wrapper:
                setattr(sys, name, wrapper.stream)

    return restore
