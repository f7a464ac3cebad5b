"""A setting's declaration (:class:`Setting`), and the CPU count the pool size defaults to."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

T = TypeVar("T")


def usable_cpus() -> int:
    """Return the number of CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Setting(NamedTuple, Generic[T]):
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
