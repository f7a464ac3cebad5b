"""Worker classes: ``sync`` (one request at a time in the worker process)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from prefork.workers.base import WORKER_BOOT_ERROR, WORKER_EXIT_ERROR, WORKER_EXIT_OK, Worker
from prefork.workers.sync import SyncWorker

#: Worker classes by the name the ``worker_class`` setting takes.
WORKER_CLASSES: Mapping[str, type[Worker]] = MappingProxyType({"sync": SyncWorker})

__all__ = [
    "WORKER_BOOT_ERROR",
    "WORKER_CLASSES",
    "WORKER_EXIT_ERROR",
    "WORKER_EXIT_OK",
    "SyncWorker",
    "Worker",
]
