"""The error of ``prefork bench``: :class:`BenchError`, raised where the bench cannot go on.

Its own module at the bottom of :mod:`prefork.bench`, so that every layer (the server under
test, the probe, the runner) can raise it and :func:`prefork.bench.main` turns it into one
line on stderr and an exit status.
"""

from __future__ import annotations


class BenchError(Exception):
    """The bench cannot go on (the server did not start, a client failed, every request
    failed, the target refused); one line saying why.

    ``usage`` is true when the cause is in what the user gave (the server exited with status
    2, the server speaks another protocol than the one asked for): exit status 2, else 1.
    """

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage
