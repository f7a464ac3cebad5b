"""prefork: socketserver servers served by a supervised pool of preforked worker processes."""

from __future__ import annotations

from prefork.errors import PreforkError, WorkerBootError
from prefork.server import (
    PreforkHTTPServer,
    PreforkMixIn,
    PreforkTCPServer,
    PreforkUDPServer,
    PreforkUnixDatagramServer,
    PreforkUnixStreamServer,
)

__version__ = "0.1.0"

__all__ = [
    "PreforkError",
    "PreforkHTTPServer",
    "PreforkMixIn",
    "PreforkTCPServer",
    "PreforkUDPServer",
    "PreforkUnixDatagramServer",
    "PreforkUnixStreamServer",
    "WorkerBootError",
    "__version__",
]
