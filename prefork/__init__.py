"""prefork: socketserver servers served by a supervised pool of preforked worker processes.

The public names are imported on first use (PEP 562), so ``import prefork`` and the
``prefork`` command load only what they use: ``PreforkHTTPServer`` alone pulls in
``http.server`` (about 40 ms of imports).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefork.errors import PreforkError, WorkerBootError
    from prefork.httpserver import PreforkHTTPServer, PreforkUnixHTTPServer
    from prefork.server import (
        PreforkMixIn,
        PreforkTCPServer,
        PreforkUDPServer,
        PreforkUnixDatagramServer,
        PreforkUnixStreamServer,
    )
    from prefork.wsgi.server import PreforkUnixWSGIServer, PreforkWSGIServer

from prefork.version import __version__

__all__ = [
    "PreforkError",
    "PreforkHTTPServer",
    "PreforkMixIn",
    "PreforkTCPServer",
    "PreforkUDPServer",
    "PreforkUnixDatagramServer",
    "PreforkUnixHTTPServer",
    "PreforkUnixStreamServer",
    "PreforkUnixWSGIServer",
    "PreforkWSGIServer",
    "WorkerBootError",
    "__version__",
]

#: Where each public name is defined.
_MODULES = {
    "PreforkError": "prefork.errors",
    "WorkerBootError": "prefork.errors",
    "PreforkHTTPServer": "prefork.httpserver",
    "PreforkUnixHTTPServer": "prefork.httpserver",
    "PreforkMixIn": "prefork.server",
    "PreforkTCPServer": "prefork.server",
    "PreforkUDPServer": "prefork.server",
    "PreforkUnixDatagramServer": "prefork.server",
    "PreforkUnixStreamServer": "prefork.server",
    "PreforkWSGIServer": "prefork.wsgi.server",
    "PreforkUnixWSGIServer": "prefork.wsgi.server",
}


def __getattr__(name: str) -> Any:
    """Import a public name on first use. Raises AttributeError for any other name."""
    if name not in _MODULES:
        raise AttributeError(f"module 'prefork' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULES[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
