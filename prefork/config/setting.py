"""A setting's declaration (:class:`Setting`), and the CPU count the pool size defaults to."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

T = TypeVar("T")

#: What a HUP does with a setting whose value changed in the configuration file
#: (:attr:`Setting.at_hup`). ``HUP``: the master takes the new value, and the new workers
#: of the reload serve with it.
HUP = "HUP"
#: ... ``USR2``: the value is the master's (its sockets, files, processes, the code it
#: imported): it takes a new master, a USR2 upgrade (which reads the file again) or a restart.
USR2 = "USR2"
#: ... ``RESTART``: the value shapes the listening sockets, which a USR2 upgrade hands over
#: as they are: it takes a stop and a start.
RESTART = "restart"


def usable_cpus() -> int:
    """Return the number of CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


#: The longest message a setting's error gives, in characters.
MAX_ERROR = 200


class Setting(NamedTuple, Generic[T]):
    """One setting: its name (the server attribute and constructor keyword, the key in a
    configuration file, ``PREFORK_<NAME>`` in the environment), default and docs.

    ``convert`` validates a value given to the constructor, on the command line, in a
    configuration file or the environment, and returns it converted; it raises ValueError
    with a message that completes "NAME ...".

    ``flags`` are its command-line flags; none: it is the positional argument (TARGET).
    ``action`` is how the flags take a value: ``store`` (one value, converted), ``append``
    (repeatable: the list of their values is converted) or ``switch`` (``--NAME`` on,
    ``--no-NAME`` off). ``choices``, when given, are the values the command line offers
    (argparse's "invalid choice" message). ``at_hup`` says what a HUP does with a new value
    read from the configuration file: :data:`HUP`, :data:`USR2` or :data:`RESTART`.
    """

    name: str
    section: str
    default: T
    convert: Callable[[Any], T]
    flags: tuple[str, ...]
    metavar: str
    help: str
    action: str = "store"
    choices: tuple[str, ...] = ()
    at_hup: str = USR2

    @property
    def env(self) -> str:
        """The environment variable of this setting: ``PREFORK_`` and its name in upper case."""
        return "PREFORK_" + self.name.upper()

    def validate(self, value: Any) -> T:
        """Return ``convert(value)``; raise ValueError("NAME must ...") when it is invalid,
        the message cut at :data:`MAX_ERROR` characters (it quotes the value, which may be
        huge: a 5,000-digit environment variable)."""
        try:
            return self.convert(value)
        except ValueError as exc:
            text = str(exc)
            if len(text) > MAX_ERROR:
                text = text[: MAX_ERROR - 3] + "..."
            raise ValueError(f"{self.name} {text}") from None
