"""Worker classes: ``sync`` (one request at a time in the worker process) and ``thread`` (up to
``threads`` requests at once, each in a thread of the worker process, as gunicorn's gthread)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from prefork.messages import WORKER_BOOT_ERROR, WORKER_EXIT_ERROR, WORKER_EXIT_OK
from prefork.workers.base import Worker
from prefork.workers.sync import SyncWorker
from prefork.workers.thread import ThreadWorker

#: Worker classes by the name the ``worker_class`` setting takes (the names are listed in
#: :data:`prefork.config.WORKER_CLASS_NAMES` too, which a test keeps equal to these keys).
WORKER_CLASSES: Mapping[str, type[Worker]] = MappingProxyType({"sync": SyncWorker, "thread": ThreadWorker})

__all__ = [
    "WORKER_BOOT_ERROR",
    "WORKER_CLASSES",
    "WORKER_EXIT_ERROR",
    "WORKER_EXIT_OK",
    "SyncWorker",
    "ThreadWorker",
    "Worker",
]
