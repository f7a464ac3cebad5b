"""The converters of the settings: each validates a value given to the constructor, as a
class attribute or on the command line, and returns it converted; it raises ValueError with
a message that completes "NAME ..." (:meth:`prefork.config.Setting.validate` adds the name).
Imports nothing of prefork.
"""

from __future__ import annotations

import grp
import pwd
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import ipaddress

    #: An IPv4 or IPv6 network, as in the allow and deny settings.
    Network = ipaddress.IPv4Network | ipaddress.IPv6Network

T = TypeVar("T")


def positive_int(value: Any) -> int:
    """Convert ``value`` to an int >= 1; raise ValueError otherwise."""
    number = _number(value, int)
    if number < 1:
        raise ValueError(f"must be a positive integer, got {value!r}")
    return number


def optional_positive_int(value: Any) -> int | None:
    """Like :func:`positive_int`, but None (or the string ``auto``) passes as None."""
    if value is None or value == "auto":
        return None
    return positive_int(value)


def non_negative_float(value: Any) -> float:
    """Convert ``value`` to a float >= 0; raise ValueError otherwise."""
    number = _number(value, float)
    if not number >= 0:  # also rejects NaN
        raise ValueError(f"must be a number >= 0, got {value!r}")
    return number


#: The longest timeout a setting takes (seconds): ``socket.settimeout`` and ``poll()`` take
#: milliseconds in a C int (at most 24.8 days), and ``inf`` made every connection fail.
MAX_SECONDS = 1_000_000.0
#: The largest pool (``workers``): each worker is a process, and the scoreboard has 4 slots
#: per worker.
LARGEST_POOL = 1024


def seconds(value: Any) -> float:
    """Convert ``value`` to a number of seconds from 0 to :data:`MAX_SECONDS`; raise
    ValueError otherwise (``inf``, NaN, negative)."""
    number = non_negative_float(value)
    if number > MAX_SECONDS:
        raise ValueError(f"must be a number of seconds from 0 to {MAX_SECONDS:g}, got {value!r}")
    return number


def optional_seconds(value: Any) -> float | None:
    """Like :func:`seconds`, but None (or the string ``auto``) passes as None."""
    if value is None or value == "auto":
        return None
    return seconds(value)


def workers_count(value: Any) -> int | None:
    """Like :func:`optional_positive_int`, at most :data:`LARGEST_POOL`."""
    number = optional_positive_int(value)
    if number is not None and number > LARGEST_POOL:
        raise ValueError(f"must be 1 to {LARGEST_POOL} (or auto), got {value!r}")
    return number


def switch(value: Any) -> bool:
    """Convert ``value`` to a bool: True, False, or (as on a command line or in the
    environment) ``on``/``off``, ``true``/``false``, ``yes``/``no``, ``1``/``0``."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("on", "true", "yes", "1"):
        return True
    if text in ("off", "false", "no", "0"):
        return False
    raise ValueError(f"must be on or off, got {value!r}")


def non_negative_int(value: Any) -> int:
    """Convert ``value`` to an int >= 0; raise ValueError otherwise."""
    number = _number(value, int)
    if number < 0:
        raise ValueError(f"must be an integer >= 0, got {value!r}")
    return number


_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def byte_size(value: Any) -> int:
    """Convert a size in bytes to an int >= 0: an int, or a string with an optional binary
    suffix (``512M``, ``1G``, ``64KiB``: K = 1024 bytes); raise ValueError otherwise."""
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match is None:
            raise ValueError(f"must be a size in bytes such as 1073741824 or 1G, got {value!r}")
        return int(match[1]) << (10 * " kmgt".index(match[2].lower() or " "))
    return non_negative_int(value)


def optional_octal(value: Any) -> int | None:
    """Pass None through; convert an int or an octal string (``0o660``, ``660``) to an int in
    0..0o777; raise ValueError otherwise."""
    if value is None:
        return None
    try:
        number = value if isinstance(value, int) and not isinstance(value, bool) else int(str(value), 8)
    except ValueError:
        raise ValueError(f"must be an octal mode such as 0o660, got {value!r}") from None
    if not 0 <= number <= 0o777:
        raise ValueError(f"must be an octal mode in 0..0o777, got {value!r}")
    return number


def networks(value: Any) -> tuple[Network, ...]:
    """Convert CIDR networks (a comma-separated string, or an iterable of strings or
    networks; a bare address is a /32 or /128) to a tuple; raise ValueError otherwise, also
    for a network with host bits set (``10.0.0.1/8``), which would silently mean another."""
    import ipaddress  # here: only servers with allow or deny pay for importing it

    items = value.split(",") if isinstance(value, str) else list(value)
    found = []
    for text in (str(item).strip() for item in items):
        if not text:
            continue
        try:
            found.append(ipaddress.ip_network(text))
        except ValueError as exc:
            hint = ""
            if "host bits set" in str(exc):  # 10.0.0.1/8: a typo for 10.0.0.0/8, or for /32?
                hint = f"; did you mean {ipaddress.ip_network(text, strict=False)}?"
            raise ValueError(
                f"must be CIDR networks such as 10.0.0.0/8,::1, got {value!r} ({exc}{hint})"
            ) from None
    return tuple(found)


def optional_user(value: Any) -> int | None:
    """Pass None through; convert a user name or numeric uid to a uid; raise ValueError for
    an unknown user."""
    if value is None:
        return None
    return _id(value, pwd.getpwnam, "user")


def optional_group(value: Any) -> int | None:
    """Pass None through; convert a group name or numeric gid to a gid; raise ValueError for
    an unknown group."""
    if value is None:
        return None
    return _id(value, grp.getgrnam, "group")


def _id(value: Any, lookup: Callable[[str], Any], kind: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif str(value).isdigit():
        number = int(str(value))
    else:
        try:
            return int(lookup(str(value))[2])
        except KeyError:
            raise ValueError(f"must name an existing {kind}, got {value!r}") from None
    if number < 0:
        raise ValueError(f"must be a {kind} name or a numeric id >= 0, got {value!r}")
    return number


def optional_str(value: Any) -> str | None:
    """Pass None through; convert anything else but a list or a table (of a configuration
    file) to a non-empty str."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, dict, set)):
        raise ValueError(f"must be a string, got {value!r}")
    text = str(value)
    if not text:
        raise ValueError("must not be empty")
    return text


def addresses(value: Any) -> tuple[str, ...]:
    """Convert listening addresses to a tuple of at least one non-empty string: a string is
    a comma-separated list (as in the environment, or a TOML string), a list's items are
    taken whole (a TOML array, a repeated flag: a Unix socket path may hold a comma). The
    addresses themselves are parsed when bound (:func:`prefork.sockets.parse_address`)."""
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError(f"must be addresses such as 127.0.0.1:8000,unix:/run/app.sock, got {value!r}")
    if not items or not all(isinstance(item, str) and item for item in items):
        raise ValueError(f"must be one or more non-empty addresses, got {value!r}")
    return tuple(items)


#: The levels of the ``log_level`` setting, as ``logging`` names them (lower case).
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def log_level(value: Any) -> str:
    """Convert a logging level name (any case) to one of :data:`LOG_LEVELS`."""
    return choice(str(value).lower() if isinstance(value, str) else value, LOG_LEVELS)


def metrics_address(value: Any) -> str | None:
    """Pass None through; check ``HOST:PORT`` (port 0..65535; ``[::1]:PORT`` for IPv6) or
    ``unix:PATH`` (a non-empty path)."""
    if value is None:
        return None
    text = str(value)
    if text.startswith("unix:"):
        if len(text) == len("unix:"):
            raise ValueError("must be HOST:PORT or unix:PATH, with a path after unix:")
        return text
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"must be HOST:PORT or unix:PATH, got {text!r}")
    return text


def choice(value: Any, choices: tuple[str, ...]) -> str:
    """Check that ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


#: The names the ``worker_class`` setting takes: the keys of
#: :data:`prefork.workers.WORKER_CLASSES` (a test keeps them equal; this module imports
#: nothing of prefork, so the names are listed here).
WORKER_CLASS_NAMES = ("sync", "thread")


def worker_class_name(value: Any) -> str:
    """Check that ``value`` names a worker class (:data:`WORKER_CLASS_NAMES`)."""
    return choice(value, WORKER_CLASS_NAMES)


def _number(value: Any, kind: Callable[[Any], T]) -> T:
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"must be a number, got {value!r}") from None
