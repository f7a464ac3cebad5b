"""The exporter process: serves the pool's metrics and status page over HTTP (``--metrics``).

The master binds the socket (:func:`bind_metrics`) while it starts, before any fork, then forks
one exporter process that runs :func:`serve_exporter` on it and never forks again. The
exporter reads the pool through the callables it is given (the shared memory it inherited),
lazily, once per request; it uses threads, since it never forks:

- the main thread watches the master: it returns from :func:`serve_exporter` when the
  master's pipe reads EOF or the parent changes (the master died);
- one thread runs the HTTP server, which answers each connection in a daemon thread of its own,
  at most ``max_connections`` at a time (more are closed at once), each with a socket timeout
  and a deadline for the whole connection, so a stuck or slow client ties up only its own
  thread, and not for long;
- a sampler thread feeds the status page's :class:`~prefork.statuspage.History`.

Routes: ``GET /metrics`` (Prometheus text format), ``GET /status`` (HTML page),
``GET /status?json`` (the snapshot as JSON), ``GET /`` (an index); ``HEAD`` of each; 404
otherwise. Requests are logged at debug level only.
"""

from __future__ import annotations

import contextlib
import errno
import http.server
import json
import logging
import os
import select
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prefork.exposition import FamilyLike, render
from prefork.logs import reopen_log_files
from prefork.statuspage import History, render_html

log = logging.getLogger(__name__)

#: Connections the exporter answers at once; one more is closed at once.
MAX_CONNECTIONS = 32
#: Seconds a connection may stay silent (while sending its request or reading the answer).
CONNECTION_TIMEOUT = 10.0
#: Seconds a connection may last in all: a client trickling a byte now and then, never silent
#: for CONNECTION_TIMEOUT, is cut off then (checked once a second).
CONNECTION_DEADLINE = 30.0
#: Seconds between two samples of the status page's history.
SAMPLE_INTERVAL = 2.0
#: accept() errors that mean "out of a resource": wait a little instead of spinning on them.
_ACCEPT_PAUSE_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))

Snapshot = Callable[[], Mapping[str, Any]]
Families = Callable[[], Iterable[FamilyLike]]


def serve_exporter(
    sock: socket.socket,
    snapshot: Snapshot,
    families: Families,
    master_fd: int,
    *,
    max_connections: int = MAX_CONNECTIONS,
    timeout: float = CONNECTION_TIMEOUT,
    deadline: float = CONNECTION_DEADLINE,
    sample_interval: float = SAMPLE_INTERVAL,
    master_pid: int | None = None,
    sample: Snapshot | None = None,
) -> None:
    """Serve HTTP on ``sock`` (listening, of :func:`bind_metrics`) until the master dies, then
    return (the caller ends the process with ``os._exit``). Runs in the exporter process, in
    its main thread, right after the fork; that process must never fork.

    ``snapshot()`` returns the pool snapshot and ``families()`` the application's metric
    families; both are called from several threads at once, once per request (and every
    ``sample_interval`` seconds by the sampler, with ``sample()`` instead when given: the
    history needs no process's memory, which costs milliseconds per process to read).
    ``master_fd`` is the read end of a pipe whose
    write end only the master holds: EOF there, or a parent other than ``master_pid`` (default:
    the parent at the call), means the master is gone. What the master writes on it is read
    and ignored.

    First the signal dispositions inherited from the master are reset: TERM, INT and QUIT end
    the process (the default), USR1 reopens the log files (the master forwards its own), HUP,
    USR2, TTIN and TTOU (the master's, often sent to the whole process group) are ignored, the
    master's wake-up fd is dropped, and the signals the
    master blocked around the fork are unblocked. At most ``max_connections`` connections are
    answered at once (one more is closed at once); a connection silent for ``timeout`` seconds,
    or open for ``deadline`` seconds, is closed. Raises nothing of its own: accept() errors are
    survived (EMFILE, ENFILE, ENOBUFS and ENOMEM after a 0.1 s pause), a failing request gets a
    500 and a log line.
    """
    _init_signals()
    parent = os.getppid() if master_pid is None else master_pid
    history = History()
    server = ExporterServer(sock, snapshot, families, history, max_connections, timeout)
    stopping = threading.Event()
    threads = [
        threading.Thread(target=server.serve_forever, name="exporter-http", daemon=True),
        threading.Thread(
            target=_sample,
            args=(sample or snapshot, history, sample_interval, stopping),
            name="exporter-sampler",
            daemon=True,
        ),
    ]
    for thread in threads:
        thread.start()
    try:
        _wait_for_master_exit(master_fd, parent, lambda: server.cut_off_older_than(deadline))
        log.debug("The master is gone: the exporter (pid %d) exits.", os.getpid())
    finally:
        stopping.set()
        server.shutdown()
        server.server_close()


def _init_signals() -> None:
    """Reset the master's signal dispositions in the exporter (see :func:`serve_exporter`)."""
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGUSR1, lambda number, frame: reopen_log_files())  # forwarded by the master
        ignored = (
            signal.SIGHUP,
            signal.SIGUSR2,
            signal.SIGTTIN,
            signal.SIGTTOU,
            signal.SIGPIPE,
        )
        for sig in ignored:
            signal.signal(sig, signal.SIG_IGN)
        signal.pthread_sigmask(
            signal.SIG_UNBLOCK,
            (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD, signal.SIGUSR1, *ignored),
        )


def _wait_for_master_exit(master_fd: int, parent: int, every_second: Callable[[], object]) -> None:
    """Block until ``master_fd`` reads EOF (or fails) or the parent process changes; the
    parent is checked once a second, in case a worker inherited the pipe's write end, and
    ``every_second()`` is called."""
    while True:
        every_second()
        try:
            readable, _, _ = select.select([master_fd], [], [], 1.0)
            if readable and not os.read(master_fd, 4096):
                return
        except BlockingIOError:
            pass
        except (OSError, ValueError):  # EBADF: nothing left to watch
            return
        if os.getppid() != parent:
            return


def _sample(snapshot: Snapshot, history: History, interval: float, stopping: threading.Event) -> None:
    """The sampler thread: add a snapshot to ``history`` every ``interval`` seconds. A failing
    ``snapshot()`` is logged as a warning the first time in a row, then at debug level."""
    failing = False
    while True:
        try:
            history.add(snapshot())
            failing = False
        except Exception:
            log.log(
                logging.DEBUG if failing else logging.WARNING,
                "The exporter cannot sample the pool",
                exc_info=True,
            )
            failing = True
        if stopping.wait(interval):
            return


class ExporterServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """A threading HTTP server on an already bound, listening socket (TCP or Unix). Runs in the
    exporter process; built and served by :func:`serve_exporter`.

    For the handlers: :attr:`snapshot`, :attr:`families`, :attr:`history`. Overridden from
    socketserver: :meth:`get_request` (pauses on resource errors; Unix peers get a
    ``("unix", 0)`` address), :meth:`process_request` (the connection cap) and
    :meth:`handle_error` (logs at debug instead of printing to stderr). For its owner:
    :meth:`cut_off_older_than`.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        sock: socket.socket,
        snapshot: Snapshot,
        families: Families,
        history: History,
        max_connections: int = MAX_CONNECTIONS,
        timeout: float = CONNECTION_TIMEOUT,
    ) -> None:
        # BaseServer, not TCPServer/HTTPServer.__init__: they would create and bind a socket.
        socketserver.BaseServer.__init__(self, sock.getsockname(), ExporterHandler)
        self.socket = sock
        self.address_family = sock.family
        self.server_name, self.server_port = "localhost", 0
        self.snapshot, self.families, self.history = snapshot, families, history
        self.connection_timeout = timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._open: dict[socket.socket, float] = {}  # connection -> time.monotonic() accepted
        self._reading: set[socket.socket] = set()  # those that have not sent their whole request
        self._open_lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection. On EMFILE, ENFILE, ENOBUFS or ENOMEM, pause 0.1 s before the
        error goes up (socketserver then ignores it), rather than spin on a readable socket."""
        try:
            conn, peer = self.socket.accept()
        except OSError as exc:
            if exc.errno in _ACCEPT_PAUSE_ERRNOS:
                time.sleep(0.1)
            raise
        return conn, peer if self.address_family != socket.AF_UNIX else ("unix", 0)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Answer in a new thread, or close the connection at once when ``max_connections``
        are being answered."""
        if not self._slots.acquire(blocking=False) and not self._evict_for_newcomer():
            log.debug("Metrics connection from %s closed: too many connections", client_address)
            self.shutdown_request(request)
            return
        with self._open_lock:
            self._open[request] = time.monotonic()
            self._reading.add(request)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._forget(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)

    def _forget(self, request: socket.socket) -> None:
        with self._open_lock:
            del self._open[request]
            self._reading.discard(request)
        self._slots.release()

    def request_read(self, conn: socket.socket) -> None:
        """``conn`` has sent its whole request: from now on it is never evicted. Runs in the
        connection's thread."""
        with self._open_lock:
            self._reading.discard(conn)

    def _evict_for_newcomer(self) -> bool:
        """Every slot is taken: shut down the oldest connection still sending its request (a
        slow or silent client; a scraper sends its request at once) and wait up to 0.5 s for
        its slot. Returns whether a slot was taken. So clients trickling their requests never
        keep a scraper out."""
        with self._open_lock:
            slowest = min(self._reading, key=self._open.__getitem__, default=None)
            self._reading.discard(slowest)
        if slowest is None:
            return False
        log.debug("Metrics connection still sending its request cut off for a newcomer")
        with contextlib.suppress(OSError):
            slowest.shutdown(socket.SHUT_RDWR)
        return self._slots.acquire(timeout=0.5)

    def cut_off_older_than(self, seconds: float) -> None:
        """Shut down the connections open for more than ``seconds``: their threads' blocking
        reads and writes end at once, and the threads finish. Runs in any thread."""
        oldest = time.monotonic() - seconds
        with self._open_lock:
            old = [conn for conn, accepted in self._open.items() if accepted < oldest]
        for conn in old:
            log.debug("Metrics connection cut off after %.0f s", seconds)
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("Error answering %s on the metrics socket", client_address, exc_info=True)


class ExporterHandler(http.server.BaseHTTPRequestHandler):
    """The exporter's routes (see the module docstring); one request per connection (HTTP/1.0).
    Runs in the exporter process, in the connection's thread."""

    server: ExporterServer
    server_version = "prefork-exporter"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.connection_timeout)

    def parse_request(self) -> bool:
        """Parse the request (BaseHTTPRequestHandler's), then tell the server it was read
        whole: the connection is no longer one to evict for a newcomer."""
        parsed = super().parse_request()
        self.server.request_read(self.connection)
        return parsed

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        url = urlsplit(self.path)
        try:
            status, content_type, body = self.route(url.path, url.query)
        except Exception:
            log.warning("The exporter cannot answer %s", url.path, exc_info=True)
            status, content_type, body = 500, "text/plain; charset=utf-8", b"cannot read the pool's state\n"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def route(self, path: str, query: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for ``path`` and ``query``. May be extended. Raises what
        the snapshot callable or the renderers raise (the request then gets a 500)."""
        server = self.server
        if path == "/metrics":
            body, content_type = render(server.snapshot(), server.families())
            return 200, content_type, body
        if path == "/status":
            if "json" in parse_qs(query, keep_blank_values=True) or query == "json":
                text = json.dumps(server.snapshot(), indent=1) + "\n"
                return 200, "application/json", text.encode()
            return 200, "text/html; charset=utf-8", render_html(server.snapshot(), server.history).encode()
        if path == "/":
            return 200, "text/html; charset=utf-8", _INDEX
        return 404, "text/plain; charset=utf-8", b"not found: try /metrics, /status or /status?json\n"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics %s: " + format, self.client_address[0], *args)


_INDEX = (
    b'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>prefork exporter</title></head>'
    b'<body><h1>prefork exporter</h1><ul><li><a href="/status">/status</a>: the pool, as a page</li>'
    b'<li><a href="/status?json">/status?json</a>: the pool, as JSON</li>'
    b'<li><a href="/metrics">/metrics</a>: Prometheus metrics</li></ul></body></html>\n'
)
