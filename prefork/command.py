"""What every ``prefork`` command shares: its argument parser and its exit statuses.

A small module of its own, so that ``prefork bench`` (:mod:`prefork.bench`) parses its
arguments as ``prefork`` does without importing the server (:mod:`prefork.cli`).
"""

from __future__ import annotations

import argparse
from typing import NoReturn

#: Exit status for a usage error: bad target, flag value or address, or a failed bind.
EXIT_USAGE = 2
#: Exit status when workers failed to boot repeatedly (as gunicorn's).
EXIT_BOOT_ERROR = 3
#: Exit status when an address stayed in use while binding was retried (another server, or
#: the workers of a killed master finishing their requests): a restart may succeed.
EXIT_ADDRESS_IN_USE = 4


class UsageError(Exception):
    """Something the user gave is wrong; the message says what and why, on one line."""


class AddressInUse(UsageError):
    """An address stayed in use while binding was retried (exit status 4, retryable)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with errors on one line of stderr and exit status 2 (:data:`EXIT_USAGE`)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")
