"""Settings, each declared once.

Every setting of a prefork server is one :class:`Setting` in :data:`SETTINGS`. That one
declaration gives the server class attribute's default, the keyword-only constructor argument
(validated by :meth:`Setting.convert`), the ``prefork`` command-line flag and the reference
table in the docs (``python -m prefork.config`` prints it as Markdown).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def usable_cpus() -> int:
    """Return the number of CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


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


def optional_str(value: Any) -> str | None:
    """Pass None through; convert anything else to a non-empty str."""
    if value is None:
        return None
    text = str(value)
    if not text:
        raise ValueError("must not be empty")
    return text


def worker_class_name(value: Any) -> str:
    """Check that ``value`` names a worker class of :mod:`prefork.workers`."""
    from prefork.workers import WORKER_CLASSES

    if value not in WORKER_CLASSES:
        raise ValueError(f"must be one of {', '.join(WORKER_CLASSES)}, got {value!r}")
    return str(value)


def _number(value: Any, kind: Callable[[Any], T]) -> T:
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"must be a number, got {value!r}") from None


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One setting: its name (the server attribute and constructor keyword), default and docs.

    ``convert`` validates a value given to the constructor or on the command line and returns
    it converted; it raises ValueError with a message that completes "NAME ...".
    """

    name: str
    section: str
    default: T
    convert: Callable[[Any], T]
    flags: tuple[str, ...]
    metavar: str
    help: str

    def validate(self, value: Any) -> T:
        """Return ``convert(value)``; raise ValueError("NAME must ...") when it is invalid."""
        try:
            return self.convert(value)
        except ValueError as exc:
            raise ValueError(f"{self.name} {exc}") from None


WORKERS: Setting[int | None] = Setting(
    name="workers",
    section="Pool",
    default=None,
    convert=optional_positive_int,
    flags=("-w", "--workers"),
    metavar="N",
    help="Number of worker processes in the pool. Default (None): the number of usable CPUs.",
)
WORKER_CLASS: Setting[str] = Setting(
    name="worker_class",
    section="Pool",
    default="sync",
    convert=worker_class_name,
    flags=("-k", "--worker-class"),
    metavar="CLASS",
    help="Worker class: 'sync' serves one request at a time in the worker process itself.",
)
GRACEFUL_TIMEOUT: Setting[float] = Setting(
    name="graceful_timeout",
    section="Pool",
    default=30.0,
    convert=non_negative_float,
    flags=("--graceful-timeout",),
    metavar="SECONDS",
    help=(
        "Seconds a stopping worker (on TERM, reload or pool shrink) may spend finishing its "
        "request before it is killed with SIGKILL, as gunicorn's graceful_timeout."
    ),
)
REQUEST_QUEUE_SIZE: Setting[int] = Setting(
    name="request_queue_size",
    section="Server",
    default=2048,
    convert=positive_int,
    flags=("--backlog",),
    metavar="N",
    help=(
        "listen() backlog of the listening socket (socketserver's request_queue_size, default "
        "there 5; gunicorn's backlog). The kernel caps it at net.core.somaxconn."
    ),
)
PROC_NAME: Setting[str | None] = Setting(
    name="proc_name",
    section="Server",
    default=None,
    convert=optional_str,
    flags=("-n", "--name"),
    metavar="NAME",
    help=(
        "Name shown in process titles, 'prefork: master [NAME]' and 'prefork: worker K [NAME]'. "
        "Default: the server class name; from the CLI, the TARGET (or 'demo')."
    ),
)

SETTINGS: tuple[Setting[Any], ...] = (
    WORKERS,
    WORKER_CLASS,
    GRACEFUL_TIMEOUT,
    REQUEST_QUEUE_SIZE,
    PROC_NAME,
)


def reference_markdown() -> str:
    """Return the settings reference as a Markdown table, grouped by section (for the docs)."""
    lines: list[str] = []
    for section in dict.fromkeys(s.section for s in SETTINGS):
        lines += [f"### {section}", "", "| setting | CLI flag | default | meaning |", "|---|---|---|---|"]
        for s in SETTINGS:
            if s.section == section:
                flags = ", ".join(f"`{f}`" for f in s.flags)
                lines.append(f"| `{s.name}` | {flags} | `{s.default!r}` | {s.help} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_markdown())
