"""Reading a configuration file: TOML (``tomllib``), bounded, every failure one line.

A path, like the environment, is treated as hostile: only a regular file is read (a FIFO, a
device or a directory is refused without blocking on it), at most :data:`MAX_FILE_SIZE`
bytes, and every way it can fail (missing, unreadable, not UTF-8, not TOML, nested past
Python's recursion limit) is a :class:`ConfigError` with one line naming the file. Also
renders values back as TOML, for ``prefork --print-config`` and the reference. Used by the
``prefork`` command (the master), at start and on HUP.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

#: The largest configuration file read (bytes): a settings file is a few hundred bytes, a
#: pyproject.toml a few KiB.
MAX_FILE_SIZE = 1 << 20
#: The file read from the working directory when no ``--config`` is given: its
#: ``[tool.prefork]`` table.
PYPROJECT = "pyproject.toml"


class ConfigError(ValueError):
    """A configuration file or variable cannot be used; the message says which and why, on
    one line."""


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the TOML document at ``path`` as a dict. Raises :class:`ConfigError` when it is
    not a readable regular file of at most :data:`MAX_FILE_SIZE` bytes of UTF-8 TOML."""
    return parse_toml(read_bounded(path), path)


def read_bounded(path: str | os.PathLike[str], limit: int = MAX_FILE_SIZE) -> bytes:
    """Return the bytes of the regular file at ``path``, at most ``limit`` of them. Raises
    :class:`ConfigError` for a file that cannot be opened, is not a regular file (opened
    non-blocking, so a FIFO cannot hang the caller) or is larger."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise ConfigError(f"cannot read the configuration file {os.fspath(path)}: {_reason(exc)}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"cannot read the configuration file {os.fspath(path)}: not a regular file")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {os.fspath(path)}: {_reason(exc)}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise ConfigError(f"configuration file {os.fspath(path)} is larger than {limit} bytes")
    return b"".join(chunks)


def parse_toml(data: bytes, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return ``data`` (the bytes of the file at ``path``) parsed as TOML. Raises
    :class:`ConfigError` naming the file when it is not UTF-8 TOML."""
    import tomllib  # here: a start without a configuration file does not pay for it

    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8 (byte {exc.start})"
    except tomllib.TOMLDecodeError as exc:
        reason = str(exc)
    except RecursionError:
        reason = "nested too deeply"
    raise ConfigError(f"configuration file {os.fspath(path)} is not valid TOML: {reason}")


def read_pyproject(directory: str | os.PathLike[str]) -> tuple[str, dict[str, Any]] | None:
    """Return the path of ``pyproject.toml`` in ``directory`` and its ``[tool.prefork]``
    table, or None when there is no such file, or it has no such table. A file that does not
    mention prefork at all is not parsed (it is the project's, not ours: a broken one is not
    prefork's error); one that does and cannot be read or parsed raises :class:`ConfigError`."""
    path = os.path.abspath(os.path.join(directory, PYPROJECT))
    try:
        data = read_bounded(path)
    except ConfigError:
        if not os.path.lexists(path):
            return None
        raise
    if b"prefork" not in data:  # cannot hold a [tool.prefork] table
        return None
    tool = parse_toml(data, path).get("tool")
    table = tool.get("prefork") if isinstance(tool, dict) else None
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: tool.prefork must be a table of settings, got {table!r}")
    return path, table


def toml_value(value: Any, octal: bool = False) -> str:
    """``value`` (a setting's converted value) as a TOML value: a bool, number, string, or an
    array of them (networks as strings); ``octal`` writes an int as ``0o660``. None has no
    TOML form: ``none`` (not valid TOML; the caller comments it out)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"0o{value:o}" if octal else str(value)
    if isinstance(value, float):
        return repr(value)  # 30.0, 0.5, 1e-06: all TOML floats
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return _toml_string(str(value))


def _toml_string(text: str) -> str:
    """``text`` as a TOML basic string (escapes for quotes, backslashes, control characters
    and lone surrogates, which TOML cannot hold)."""
    out = []
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}" if code < 0xD800 else "\\ufffd")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{exc.strerror or errno.errorcode.get(exc.errno, exc.errno)} (errno {exc.errno})"
    return str(exc)
