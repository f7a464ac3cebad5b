"""The master's pid file (the ``pidfile`` setting), as gunicorn's pidfile.py."""

from __future__ import annotations

import contextlib
import os


class Pidfile:
    """The file at ``path`` holding the master's pid while it serves. Used in the master.

    :meth:`create` writes it atomically (a temporary file renamed over it), so a reader never
    sees it half written, and a new master of a USR2 upgrade simply replaces the old master's.
    :meth:`remove` deletes it only if it still holds this process's pid. Raises OSError from
    :meth:`create` when the file cannot be written.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def create(self) -> None:
        """Write this process's pid to the file."""
        temporary = f"{self.path}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="ascii") as file:
            file.write(f"{os.getpid()}\n")
        os.replace(temporary, self.path)

    def remove(self) -> None:
        """Delete the file if it holds this process's pid; never raises."""
        with contextlib.suppress(OSError, ValueError):
            with open(self.path, encoding="ascii") as file:
                if int(file.read().strip() or 0) != os.getpid():
                    return
            os.unlink(self.path)
