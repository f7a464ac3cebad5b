"""Exceptions of prefork."""

from __future__ import annotations


class PreforkError(Exception):
    """Base class of prefork's own errors."""


class WorkerBootError(PreforkError):
    """Workers failed to boot too many times in a row; the pool was stopped.

    Raised by ``serve_forever()`` in the master. The message names the cause, e.g. the
    exception a worker's ``post_fork`` hook raised. The CLI exits with status 3 on it.
    """
