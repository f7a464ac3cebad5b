"""``test.test_wsgiref`` with ``PreforkMixIn`` in front of ``WSGIServer``.

Swaps (globals of the stdlib test module, for one case): ``MockServer``, the socketless
``WSGIServer`` subclass through which ``run_amock()`` runs its requests (``finish_request()``
on an in-memory request), becomes ``PreforkMixIn`` mixed in front of it; ``make_server``
defaults its ``server_class`` to ``PreforkMixIn`` + ``WSGIServer`` (one worker).

Not taken: the cases that serve no request through a server (``UtilityTests``,
``HeaderTests``, ``HandlerTests``).
"""

from __future__ import annotations

import wsgiref.simple_server
from collections.abc import Callable
from typing import Any

import pytest

from prefork import PreforkMixIn
from tests.conformance import harness

pytestmark = pytest.mark.filterwarnings(harness.FORK_WITH_THREADS)

stdlib: Any = harness.load("test.test_wsgiref")


class WSGIServer(PreforkMixIn, wsgiref.simple_server.WSGIServer):
    workers = 1


def make_server(
    host: str,
    port: int,
    app: Callable[..., Any],
    server_class: type[wsgiref.simple_server.WSGIServer] = WSGIServer,
    handler_class: type[wsgiref.simple_server.WSGIRequestHandler] = wsgiref.simple_server.WSGIRequestHandler,
) -> wsgiref.simple_server.WSGIServer:
    """``wsgiref.simple_server.make_server`` with the prefork WSGI server as default."""
    return wsgiref.simple_server.make_server(host, port, app, server_class, handler_class)


class Swapping(harness.Swapping):
    stdlib_module = stdlib

    def swaps(self) -> harness.Swaps:
        return {
            "MockServer": type("MockServer", (PreforkMixIn, stdlib.MockServer), {}),
            "make_server": make_server,
        }


INTERRUPTED_WRITE = (
    "the test interrupts the handler's send() with signals to the test process's main thread; "
    "handle_request() runs the handler in a forked child (as ForkingMixIn's), which the signals "
    "never reach, so the interrupted write it checks cannot happen"
)

if stdlib is not None:
    IntegrationTests = harness.conform(
        stdlib.IntegrationTests,
        Swapping,
        module=__name__,
        not_applicable={"test_interrupted_write": INTERRUPTED_WRITE},
    )
