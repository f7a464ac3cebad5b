"""``test.test_xmlrpc`` with prefork servers.

Swaps (globals of the stdlib test module, for one case): ``xmlrpc`` becomes a copy of the
package whose ``server`` is a copy of ``xmlrpc.server`` with ``SimpleXMLRPCServer`` and
``MultiPathXMLRPCServer`` mixed with ``PreforkMixIn`` (the classes its ``http_server`` and
``http_multi_server`` helpers build their server from, new classes for each case since the
tests set attributes on them); ``http`` becomes a copy whose ``server.HTTPServer`` is a
``PreforkHTTPServer`` (``test_keepalive_disconnect``).

These helpers serve with ``handle_request()``, which keeps ForkingMixIn's meaning: each request
is handled in a child forked for it. Around the stdlib cases (:class:`EndHelperServer`): at
``tearDown()`` the helper thread may still wait for requests the test did not make
(``MultiPathServerTestCase`` expects ``request_count = 2`` and most of its cases make one; the
stdlib then waits out the 3 s socket timeout); it is sent empty connections until it is done.
The helpers close the listening socket rather than calling ``server_close()``, which reaps the
children of ``handle_request()``; a cleanup reaps them as ``server_close()`` would.

Not taken: the cases that start no server (all of ``XMLRPCTestCase`` but
``test_keepalive_disconnect``, the dispatcher, marshalling, ``ServerProxy`` and CGI handler
cases).
"""

from __future__ import annotations

import http.server
import socket
import time
import unittest
import xmlrpc.server
from typing import Any

import pytest

from prefork import PreforkHTTPServer, PreforkMixIn
from tests.conformance import harness

pytestmark = pytest.mark.filterwarnings(harness.FORK_WITH_THREADS)

stdlib: Any = harness.load("test.test_xmlrpc")


class Swapping(harness.Swapping):
    stdlib_module = stdlib

    def swaps(self) -> harness.Swaps:
        created: list[PreforkMixIn] = []

        class Tracked(PreforkMixIn):
            workers = 1

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                created.append(self)

        class SimpleXMLRPCServer(Tracked, xmlrpc.server.SimpleXMLRPCServer):
            pass

        class MultiPathXMLRPCServer(Tracked, xmlrpc.server.MultiPathXMLRPCServer):
            pass

        class HTTPServer(Tracked, PreforkHTTPServer):
            # test_keepalive_disconnect: its last child waits for another request on a
            # connection whose client end it inherited (see CLIENT_END_INHERITED), until this
            # timeout (10 s by default); with ForkingMixIn, which has none, it would never end.
            socket_timeout = 1

        def reap() -> None:
            deadline = time.monotonic() + 10
            while any(server.active_children for server in created):
                if time.monotonic() > deadline:
                    pids = set().union(*(server.active_children for server in created))
                    raise AssertionError(f"the children of handle_request() are still running: {pids}")
                time.sleep(0.01)
                for server in created:
                    server.collect_children()

        self.addCleanup(reap)
        server = harness.module_with(
            xmlrpc.server, SimpleXMLRPCServer=SimpleXMLRPCServer, MultiPathXMLRPCServer=MultiPathXMLRPCServer
        )
        return {
            "xmlrpc": harness.module_with(xmlrpc, server=server),
            "http": harness.module_with(http, server=harness.module_with(http.server, HTTPServer=HTTPServer)),
        }


class EndHelperServer(unittest.TestCase):
    """Before the stdlib ``tearDown()`` waits for the helper's server thread, connect to it
    (and close at once) until it has handled its ``request_count`` requests and set ``evt``."""

    evt: Any

    def tearDown(self) -> None:
        while not self.evt.wait(0.1):
            port = stdlib.PORT
            if port is not None:
                try:
                    with socket.create_connection((stdlib.ADDR, port), timeout=1) as sock:
                        # the end of the connection even for a child forked with a copy of sock
                        sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # it closed its socket meanwhile
        super().tearDown()


HANDLER_CLASS_STATE = (
    "the handler records what the test checks in its class ({}), and the test reads it; the "
    "handler runs in a child forked for the request (as ForkingMixIn's), whose class the test "
    "process cannot see"
)
KEEPALIVE = HANDLER_CLASS_STATE.format("RequestHandler.myRequests, one entry per connection")
CLIENT_END_INHERITED = (
    "{} the child forked for the connection by handle_request() (as ForkingMixIn's) is forked "
    "from the test process, where the test's client socket is open: it holds the client's end "
    "too, never reads the end of the connection when the test closes it, and waits forever (the "
    "helper's get_request() makes the socket blocking); with socketserver.ForkingMixIn this case "
    "hangs the same way"
)
KEEPALIVE_INHERITED = CLIENT_END_INHERITED.format(
    "the handler keeps the HTTP/1.1 connection open for another request, and"
)
PARTIAL_POST = CLIENT_END_INHERITED.format(
    "the handler waits for the rest of a partial body until the client closes, and, when the "
    "server accepts before the test closes (a race),"
)

if stdlib is not None:
    XMLRPCTestCase = harness.conform(
        stdlib.XMLRPCTestCase, Swapping, module=__name__, only={"test_keepalive_disconnect"}
    )
    SimpleServerTestCase = harness.conform(
        stdlib.SimpleServerTestCase,
        Swapping,
        module=__name__,
        mixins=(EndHelperServer,),
        not_applicable={"test_partial_post": PARTIAL_POST},
    )
    SimpleServerEncodingTestCase = harness.conform(
        stdlib.SimpleServerEncodingTestCase, Swapping, module=__name__, mixins=(EndHelperServer,)
    )
    MultiPathServerTestCase = harness.conform(
        stdlib.MultiPathServerTestCase, Swapping, module=__name__, mixins=(EndHelperServer,)
    )
    KeepaliveServerTestCase1 = harness.conform(
        stdlib.KeepaliveServerTestCase1,
        Swapping,
        module=__name__,
        mixins=(EndHelperServer,),
        not_applicable={"test_two": KEEPALIVE},
    )
    KeepaliveServerTestCase2 = harness.conform(
        stdlib.KeepaliveServerTestCase2,
        Swapping,
        module=__name__,
        mixins=(EndHelperServer,),
        not_applicable={"test_close": KEEPALIVE, "test_transport": KEEPALIVE},
    )
    GzipServerTestCase = harness.conform(
        stdlib.GzipServerTestCase,
        Swapping,
        module=__name__,
        mixins=(EndHelperServer,),
        not_applicable={
            "test_gzip_request": HANDLER_CLASS_STATE.format("RequestHandler.content_length"),
            "test_bad_gzip_request": KEEPALIVE_INHERITED,
            "test_gzip_response": KEEPALIVE_INHERITED,
        },
    )
    HeadersServerTestCase = harness.conform(
        stdlib.HeadersServerTestCase,
        Swapping,
        module=__name__,
        mixins=(EndHelperServer,),
        not_applicable=dict.fromkeys(
            [
                "test_header",
                "test_header_many",
                "test_header_empty",
                "test_header_tuple",
                "test_header_items",
            ],
            HANDLER_CLASS_STATE.format("RequestHandler.test_headers"),
        ),
    )
    FailingServerTestCase = harness.conform(
        stdlib.FailingServerTestCase, Swapping, module=__name__, mixins=(EndHelperServer,)
    )
