"""``test.test_socketserver`` with the prefork classes in place of socketserver's.

Swaps (globals of the stdlib test module, for one case): ``socketserver`` becomes a copy of the
module whose ``TCPServer``/``ForkingTCPServer``, ``UDPServer``/``ForkingUDPServer``,
``UnixStreamServer``/``ForkingUnixStreamServer`` and ``UnixDatagramServer``/
``ForkingUnixDatagramServer`` are the ``Prefork*Server`` classes (one worker) and whose
``ForkingMixIn`` is ``PreforkMixIn`` (so ``run_server`` checks ``active_children`` is empty after
``server_close()``, as it does for ForkingMixIn); on 3.11 the test module's own
``ForkingUnix*Server`` too; ``ForkingErrorTestServer`` is rebuilt on ``PreforkMixIn`` (its
stdlib definition bases it on ``ForkingMixIn`` at import).

Not taken: the cases of ``ThreadingMixIn`` (``test_Threading*``, ``test_close_immediately``,
``test_threading_*``, ``test_threads_reaped``), those whose server class is fixed at import
(``ErrorHandlerTest.test_sync_*``) and ``MiscTestCase.test_all`` (socketserver's ``__all__``).
"""

from __future__ import annotations

import socketserver
from typing import Any

import pytest

from prefork import (
    PreforkMixIn,
    PreforkTCPServer,
    PreforkUDPServer,
    PreforkUnixDatagramServer,
    PreforkUnixStreamServer,
)
from tests.conformance import harness

pytestmark = pytest.mark.filterwarnings(harness.FORK_WITH_THREADS)

stdlib: Any = harness.load("test.test_socketserver")


class TCPServer(PreforkTCPServer):
    workers = 1


class UDPServer(PreforkUDPServer):
    workers = 1


class UnixStreamServer(PreforkUnixStreamServer):
    workers = 1


class UnixDatagramServer(PreforkUnixDatagramServer):
    workers = 1


SERVERS = {
    "TCPServer": TCPServer,
    "ForkingTCPServer": TCPServer,
    "UDPServer": UDPServer,
    "ForkingUDPServer": UDPServer,
    "UnixStreamServer": UnixStreamServer,
    "ForkingUnixStreamServer": UnixStreamServer,
    "UnixDatagramServer": UnixDatagramServer,
    "ForkingUnixDatagramServer": UnixDatagramServer,
}

HANDLER_IN_CHILD = (
    "the handler stores what the test checks on self.server, and the test reads it after "
    "handle_request(); that runs the handler in a forked child (as ForkingMixIn's does), whose "
    "server object the test process cannot see"
)


class Swapping(harness.Swapping):
    stdlib_module = stdlib

    def swaps(self) -> harness.Swaps:
        values: dict[str, object] = {
            "socketserver": harness.module_with(socketserver, ForkingMixIn=PreforkMixIn, **SERVERS),
            "ForkingErrorTestServer": type(
                "ForkingErrorTestServer", (PreforkMixIn, stdlib.BaseErrorTestServer), {}
            ),
        }
        for name in ("ForkingUnixStreamServer", "ForkingUnixDatagramServer"):  # 3.11's own
            if hasattr(stdlib, name):
                values[name] = SERVERS[name]
        return values


if stdlib is not None:
    SocketServerTest = harness.conform(
        stdlib.SocketServerTest,
        Swapping,
        module=__name__,
        only={
            "test_TCPServer",
            "test_ForkingTCPServer",
            "test_UnixStreamServer",
            "test_ForkingUnixStreamServer",
            "test_UDPServer",
            "test_ForkingUDPServer",
            "test_UnixDatagramServer",
            "test_ForkingUnixDatagramServer",
            "test_shutdown",
            "test_tcpserver_bind_leak",
            "test_context_manager",
        },
    )
    ErrorHandlerTest = harness.conform(
        stdlib.ErrorHandlerTest,
        Swapping,
        module=__name__,
        only={"test_forking_handled", "test_forking_not_handled"},
    )
    SocketWriterTest = harness.conform(
        stdlib.SocketWriterTest,
        Swapping,
        module=__name__,
        not_applicable={
            "test_basics": HANDLER_IN_CHILD,
            "test_write": HANDLER_IN_CHILD
            + " (and the signal meant to interrupt the handler's send() goes to the test process)",
        },
    )
    MiscTestCase = harness.conform(
        stdlib.MiscTestCase,
        Swapping,
        module=__name__,
        only={"test_shutdown_request_called_if_verify_request_false"},
    )
