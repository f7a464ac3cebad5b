"""``test.test_httpservers`` with ``PreforkHTTPServer`` serving.

Swap (a global of the stdlib test module, for one case): ``HTTPServer``, the class its
``TestServerThread`` serves with (``serve_forever()`` in a thread, ``shutdown()`` from the
test), becomes a ``PreforkHTTPServer`` of two workers (``ThreadingHTTPServer`` too, where the
test module has that global).

``SimpleHTTPServerTestCase`` and ``CGIHTTPServerTestCase`` change the current directory in
``setUp()`` after the server thread has started: the workers, which keep the directory they
were forked in, serve from the right one only if the change wins the race with the fork
(usually; with the change delayed by 0.2 s, 11 of the 12 ``SimpleHTTPServerTestCase`` cases
fail). Here the server is started again at the end of ``setUp()``
(:class:`ServerStartedAfterSetUp`), so the workers are forked in the directory the test set up.

Not taken: the cases that start no server (``BaseHTTPRequestHandlerTestCase``,
``SimpleHTTPRequestHandlerTestCase``, ``MiscTestCase``, ``ScriptTestCase``).
"""

from __future__ import annotations

import http.server
import unittest
from typing import Any

import pytest

from prefork import PreforkHTTPServer
from tests.conformance import harness

pytestmark = pytest.mark.filterwarnings(harness.FORK_WITH_THREADS)

stdlib: Any = harness.load("test.test_httpservers")


class HTTPServer(PreforkHTTPServer):
    workers = 2


class Swapping(harness.Swapping):
    stdlib_module = stdlib

    def swaps(self) -> harness.Swaps:
        names = [name for name in ("HTTPServer", "ThreadingHTTPServer") if hasattr(stdlib, name)]
        assert all(issubclass(getattr(stdlib, name), http.server.HTTPServer) for name in names)
        return dict.fromkeys(names, HTTPServer)


class ServerStartedAfterSetUp(unittest.TestCase):
    """Starts the test's server again once the stdlib ``setUp()`` has changed the current
    directory (and, for CGI, written the scripts): prefork's workers are forked when
    ``serve_forever()`` starts and keep the current directory they were forked in, and the
    handlers serve files relative to it."""

    thread: Any
    server_started: Any
    request_handler: Any

    def setUp(self) -> None:
        super().setUp()
        self.thread.stop()
        self.server_started.clear()
        self.thread = type(self.thread)(self, self.request_handler)
        self.thread.start()
        self.server_started.wait()


LOGS_TO_STDERR = (
    "the test captures sys.stderr of the test process to read the handler's log lines; the "
    "handler runs in a worker process, which logs to its own"
)
CLASS_CHANGED_AFTER_FORK = (
    "the test changes the handler class (CGIHTTPRequestHandler.cgi_directories) in the test "
    "process while the server runs; the workers were forked before, with the class as it was"
)
ENVIRON_OF_SERVER = (
    "the test checks that the CGI handler left os.environ of the server process unchanged by "
    "reading the test process's: the handler runs in a worker, so the check cannot fail"
)

if stdlib is not None:
    BaseHTTPServerTestCase = harness.conform(stdlib.BaseHTTPServerTestCase, Swapping, module=__name__)
    RequestHandlerLoggingTestCase = harness.conform(
        stdlib.RequestHandlerLoggingTestCase,
        Swapping,
        module=__name__,
        not_applicable={"test_get": LOGS_TO_STDERR, "test_err": LOGS_TO_STDERR},
    )
    SimpleHTTPServerTestCase = harness.conform(
        stdlib.SimpleHTTPServerTestCase, Swapping, module=__name__, mixins=(ServerStartedAfterSetUp,)
    )

if stdlib is not None and hasattr(stdlib, "CGIHTTPServerTestCase"):  # CGIHTTPRequestHandler: gone in 3.15
    CGIHTTPServerTestCase = harness.conform(
        stdlib.CGIHTTPServerTestCase,
        Swapping,
        module=__name__,
        mixins=(ServerStartedAfterSetUp,),
        not_applicable={
            "test_cgi_path_in_sub_directories": CLASS_CHANGED_AFTER_FORK,
            "test_os_environ_is_not_altered": ENVIRON_OF_SERVER,
        },
    )
