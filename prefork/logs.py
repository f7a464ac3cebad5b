"""Logging around the pool: where the log goes (:func:`setup`), in which format (text, or one
JSON object per line: :class:`JsonFormatter`, :func:`apply_format`), which worker wrote a
record (:func:`set_worker`), and reopening log files on USR1 (:func:`reopen_log_files`, as
gunicorn's reopen_files)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

#: One line per record: time, pid of the process that logged it (master or worker), level.
LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
#: The values of the ``log_format`` setting.
LOG_FORMATS = ("text", "json")

#: The number of the worker this process is (set by :func:`set_worker`); None in the master.
_worker: int | None = None

#: The attributes every ``logging.LogRecord`` has: the others came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def set_worker(number: int | None) -> None:
    """Say that this process is worker ``number`` (0, 1, ...; None: not a worker), for the
    ``worker`` field of the JSON log. Called in the worker right after the fork, before it
    logs anything; the text format does not show it (its lines carry the pid)."""
    global _worker
    _worker = number


def worker() -> int | None:
    """The worker number given to :func:`set_worker` in this process, None if none was."""
    return _worker


def clean_text(text: str) -> str:
    """``text`` with each lone surrogate (an undecodable byte kept by ``surrogateescape``, as
    in a file name) written as the 6 characters ``\\udcXX``: a lone surrogate has no UTF-8
    encoding, and many JSON parsers refuse its ``\\u`` escape."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def iso_time(seconds: float) -> str:
    """``seconds`` since the epoch as ISO 8601 in UTC, to the millisecond:
    ``2026-11-26T11:50:34.107+00:00``."""
    whole = int(seconds // 1)
    milliseconds = int((seconds - whole) * 1000)  # truncated, as logging's msecs
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(whole))}.{milliseconds:03d}+00:00"


class JsonFormatter(logging.Formatter):
    """Each log record as one line of JSON (an object, ASCII only, no newline inside), for log
    shippers. Its fields, in this order:

    - ``time``: when the record was made, ISO 8601 in UTC to the millisecond
      (``2026-11-26T11:50:34.107+00:00``, see :func:`iso_time`);
    - ``level`` (``INFO``...), ``logger`` (``prefork``, ``app``...);
    - ``message``: the message with its arguments;
    - ``pid``: the process that logged; ``worker``: its worker number (:func:`set_worker`),
      null in the master and any other process;
    - ``traceback``: the formatted exception, only when the record has ``exc_info``;
      ``stack``: only with ``stack_info``;
    - then each attribute given with ``extra=`` (not overriding the fields above), as JSON or,
      for a value JSON cannot hold, as its ``str()``.

    Newlines, quotes and control characters are escaped, non-ASCII characters written as
    ``\\uXXXX`` and lone surrogates as text (:func:`clean_text`), so any message gives exactly
    one valid line. Runs in whichever process logs (master, workers).
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON (without the newline)."""
        fields: dict[str, Any] = {
            "time": iso_time(record.created),
            "level": record.levelname,
            "logger": clean_text(record.name),
            "message": clean_text(record.getMessage()),
            "pid": record.process,
            "worker": _worker,
        }
        if record.exc_info:
            if not record.exc_text:  # cached, as logging.Formatter.format does
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            fields["traceback"] = clean_text(record.exc_text)
        if record.stack_info:
            fields["stack"] = clean_text(self.formatStack(record.stack_info))
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and key not in fields:
                fields[clean_text(key)] = clean_text(value) if isinstance(value, str) else value
        try:
            return json.dumps(fields, default=_as_text)
        except (TypeError, ValueError):  # a circular or otherwise unwritable extra value
            return json.dumps({key: _as_text(value) for key, value in fields.items()})


def _as_text(value: object) -> str:
    return clean_text(str(value))


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of ``log_format`` (``text``: :data:`LOG_FORMAT`; ``json``:
    :class:`JsonFormatter`). Raises ValueError for another format."""
    if log_format == "text":
        return logging.Formatter(LOG_FORMAT)
    if log_format == "json":
        return JsonFormatter()
    raise ValueError(f"unknown log format {log_format!r}: expected one of {', '.join(LOG_FORMATS)}")


class _StderrHandler(logging.StreamHandler[TextIO]):
    """A handler writing to whatever ``sys.stderr`` is when it writes (as logging's last
    resort handler), so it follows :func:`guard_std_streams`' wrapper."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def apply_format(log_format: str) -> None:
    """Use ``log_format`` for the log of a server started from the Python API (the command
    sets it with :func:`setup`). With ``json``, every handler of the root logger and of the
    ``prefork`` logger gets a :class:`JsonFormatter`, and a root logger without a handler gets
    one writing to stderr (its level is left alone). With ``text``, nothing changes: the
    application's own formatting stays. Idempotent. Runs in the master at start, before the
    workers are forked. Raises ValueError for an unknown format.
    """
    chosen = formatter(log_format)
    if log_format != "json":
        return
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(_StderrHandler())
    for handler in (*root.handlers, *logging.getLogger("prefork").handlers):
        if not isinstance(handler.formatter, JsonFormatter):
            handler.setFormatter(chosen)


def setup(
    level: str | int = "INFO",
    log_file: str | None = None,
    user: int | None = None,
    group: int | None = None,
    log_format: str = "text",
) -> None:
    """Send the log (the root logger, at ``level``) to stderr, or append it to ``log_file``,
    in ``log_format`` (``text``: :data:`LOG_FORMAT` lines; ``json``: :class:`JsonFormatter`).

    With ``log_file`` (a path; ``-`` means stderr), file descriptors 1 and 2 are pointed at
    the same file, as gunicorn's capture_output, so ``print()``, tracebacks written to stderr
    and faulthandler's stack dumps land in the log too; stdout becomes line-buffered. Runs in
    the master before the pool is forked (workers inherit it). Raises OSError when the file
    cannot be opened, ValueError for an unknown ``log_format``; then nothing has changed.

    Run as root with the workers' ``user`` and ``group`` (uid, gid), the file is given to them,
    so workers can reopen it after a rotation; :func:`reopen_log_files` keeps the owner.
    """
    level = level.upper() if isinstance(level, str) else level
    chosen = formatter(log_format)
    if log_file is None or log_file == "-":
        logging.basicConfig(level=level, stream=sys.stderr, force=True)
        logging.getLogger().handlers[0].setFormatter(chosen)
        return
    handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
    handler.setFormatter(chosen)
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
