"""The examples (``examples/*.py``), each started for real and tried with a real client.

Each example runs in its own process group on 127.0.0.1 port 0, through the ``prefork``
command (``serve_cli``) or as a script (``serve_script``), with 2 workers; the address comes
from the master's ``Listening at ...`` log line. Where an answer names the worker's pid, a test
checks that two different workers answered: a connection left silent holds the worker that
accepted it (a sync worker serves one connection at a time; psutil tells which worker has it),
so a request on a second connection can only be served by the other worker.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import xmlrpc.client
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import psutil
import pytest

from tests.conftest import (
    ROOT,
    CLIServer,
    ServerProcess,
    group_processes,
    live_children,
    request_line,
    wait_for,
)

EXAMPLES = ROOT / "examples"
#: Seconds any client waits on a socket.
TIMEOUT = 5.0
WORKERS = 2
PID = re.compile(rb"worker pid (\d+)")


class ScriptServer(ServerProcess):
    """``python examples/SCRIPT ARGS`` in its own process group."""

    def __init__(self, script: str, args: list[str]) -> None:
        super().__init__([sys.executable, str(EXAMPLES / script), *args])


@pytest.fixture
def serve_script() -> Iterator[Callable[..., ScriptServer]]:
    """Start ``python examples/SCRIPT ARGS`` and wait until it listens; kill its group after."""
    started: list[ScriptServer] = []

    def start(script: str, *args: str) -> ScriptServer:
        server = ScriptServer(script, list(args))
        started.append(server)
        server.wait_listening()
        return server

    yield start
    for server in started:
        server.destroy()


# -- clients -------------------------------------------------------------------------------


def accepted_by(server_pid: int, client: socket.socket) -> int | None:
    """The pid of the worker of ``server_pid`` that has accepted ``client``'s connection."""
    client_address = client.getsockname()
    for worker in live_children(server_pid):
        # net_connections() is psutil >= 6's name for connections()
        connections = getattr(worker, "net_connections", None) or worker.connections
        with contextlib.suppress(psutil.NoSuchProcess):
            if any(c.raddr and tuple(c.raddr) == client_address for c in connections(kind="tcp")):
                return worker.pid
    return None


def http_get(address: tuple[str, int], path: str = "/") -> tuple[int, bytes]:
    """GET ``path`` on a new connection; return the status and the body."""
    connection = http.client.HTTPConnection(*address, timeout=TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def pid_in(body: bytes) -> int:
    match = PID.search(body)
    assert match, body
    return int(match.group(1))


def check_two_workers_answer_http(server_pid: int, address: tuple[str, int], path: str = "/") -> None:
    """Hold one worker with a connection that has sent only the start of its request (a
    silent one is not even accepted: HTTP servers defer accept), so that another one must
    answer a GET; then the held one answers on that connection. Both answers must name their
    worker."""
    with socket.create_connection(address, timeout=TIMEOUT) as held:
        held.sendall(b"GET " + path.encode())
        held_pid = wait_for(lambda: accepted_by(server_pid, held), timeout=TIMEOUT)
        status, body = http_get(address, path)
        assert status == 200
        assert pid_in(body) != held_pid
        held.sendall(b" HTTP/1.0\r\nHost: test\r\n\r\n")
        response = http.client.HTTPResponse(held)
        response.begin()
        assert response.status == 200
        assert pid_in(response.read()) == held_pid


def check_tcp_echo(address: tuple[str, int]) -> None:
    """Two connections open at once are echoed line by line (so by two workers), and each
    gets back all it sent, a last line without newline included, before the server closes."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.create_connection(address, timeout=TIMEOUT)) for _ in range(2)]
        files = [stack.enter_context(sock.makefile("rb")) for sock in socks]
        for n, sock in enumerate(socks):
            sock.sendall(b"hello %d\n" % n)
        for n, file in enumerate(files):
            assert file.readline() == b"hello %d\n" % n
        for n, (sock, file) in enumerate(zip(socks, files, strict=True)):
            sock.sendall(b"second line\nno newline %d" % n)
            sock.shutdown(socket.SHUT_WR)
            assert file.read() == b"second line\nno newline %d" % n


def check_udp_echo(address: tuple[str, int]) -> None:
    """Each datagram comes back, whole, from the server's address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        for n in range(5):
            payload = b"datagram %d " % n + bytes(range(256))
            sock.sendto(payload, address)
            data, source = sock.recvfrom(65536)
            assert (data, source) == (payload, address)


# -- echo.py -------------------------------------------------------------------------------


def test_echo_through_the_cli(serve_cli: Callable[..., CLIServer]) -> None:
    server = serve_cli("examples/echo.py:EchoHandler", "--workers", str(WORKERS))
    assert server.wait_listening().startswith("tcp://127.0.0.1:")
    server.wait_workers(WORKERS)
    check_tcp_echo(server.address)


def test_echo_bounds_a_line(serve_cli: Callable[..., CLIServer]) -> None:
    server = serve_cli("examples/echo.py:EchoHandler", "--workers", "1")
    server.wait_workers(1)
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(b"x" * 70_000 + b"\n")
        reply = sock.makefile("rb").read()  # the worker answers and closes
    assert reply == b"error: line too long\n"
    assert request_line(server.address, b"still here\n") == b"still here\n"


def test_echo_as_a_script(serve_script: Callable[..., ScriptServer]) -> None:
    server = serve_script("echo.py", "0", "--workers", str(WORKERS))
    assert f"with {WORKERS} sync workers" in server.log
    server.wait_workers(WORKERS)
    check_tcp_echo(server.address)


# -- udp_echo.py ---------------------------------------------------------------------------


@pytest.mark.parametrize("bind", [[], ["--bind", "udp://127.0.0.1:0"]], ids=["implied", "udp-url"])
def test_udp_echo_through_the_cli(serve_cli: Callable[..., CLIServer], bind: list[str]) -> None:
    """A DatagramRequestHandler makes the CLI serve UDP, as ``udp://`` does."""
    server = serve_cli("examples/udp_echo.py:EchoHandler", "--workers", str(WORKERS), *bind)
    assert server.wait_listening().startswith("udp://127.0.0.1:")
    server.wait_workers(WORKERS)
    check_udp_echo(server.address)


def test_udp_echo_as_a_script(serve_script: Callable[..., ScriptServer]) -> None:
    server = serve_script("udp_echo.py", "0", "--workers", str(WORKERS))
    assert server.wait_listening().startswith("udp://127.0.0.1:")
    server.wait_workers(WORKERS)
    check_udp_echo(server.address)


# -- http_hello.py -------------------------------------------------------------------------


def test_http_hello_through_the_cli(serve_cli: Callable[..., CLIServer]) -> None:
    server = serve_cli("examples/http_hello.py:HelloHandler", "--workers", str(WORKERS))
    assert server.wait_listening().startswith("http://127.0.0.1:")
    status, body = http_get(server.address, "/any/path")
    assert status == 200
    assert body.startswith(b"Hello, world! (worker pid ")
    check_two_workers_answer_http(server.pid, server.address)


def test_http_hello_as_a_script(serve_script: Callable[..., ScriptServer]) -> None:
    server = serve_script("http_hello.py", "0", "--workers", str(WORKERS))
    connection = http.client.HTTPConnection(*server.address, timeout=TIMEOUT)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type") == "text/plain; charset=utf-8"
        assert pid_in(response.read()) in server.wait_workers(WORKERS)
    finally:
        connection.close()
    check_two_workers_answer_http(server.pid, server.address)


# -- static_files.py -----------------------------------------------------------------------


def test_static_files_as_a_script(serve_script: Callable[..., ScriptServer], tmp_path: Path) -> None:
    content = b"static bytes\x00\x01\xff\n" * 1000
    (tmp_path / "data.bin").write_bytes(content)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "index.html").write_bytes(b"<p>sub index</p>\n")
    server = serve_script("static_files.py", str(tmp_path), "0", "--workers", str(WORKERS))
    server.wait_workers(WORKERS)
    assert http_get(server.address, "/data.bin") == (200, content)
    assert http_get(server.address, "/sub/") == (200, b"<p>sub index</p>\n")
    status, listing = http_get(server.address, "/")
    assert status == 200
    assert b"data.bin" in listing
    assert http_get(server.address, "/missing.txt")[0] == 404
    assert http_get(server.address, "/../" + tmp_path.name + "/data.bin")[0] == 404  # not outside DIR


def test_static_files_refuses_a_missing_directory(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "static_files.py"), str(tmp_path / "nope"), "0"],
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert b"is not a directory" in proc.stderr


def test_cli_serves_the_current_directory(serve_cli: Callable[..., CLIServer]) -> None:
    """What static_files.py's docstring says: the CLI alone serves the current directory."""
    server = serve_cli("http.server:SimpleHTTPRequestHandler", "--workers", str(WORKERS))
    expected = (EXAMPLES / "static_files.py").read_bytes()
    assert http_get(server.address, "/examples/static_files.py") == (200, expected)


# -- xmlrpc_server.py ----------------------------------------------------------------------


class TimeoutTransport(xmlrpc.client.Transport):
    """xmlrpc.client's HTTP transport, with a timeout on its sockets."""

    def make_connection(self, host: tuple[str, dict[str, str]] | str) -> http.client.HTTPConnection:
        connection = super().make_connection(host)
        connection.timeout = TIMEOUT
        return connection


def test_xmlrpc_server_as_a_script(serve_script: Callable[..., ScriptServer]) -> None:
    server = serve_script("xmlrpc_server.py", "0", "--workers", str(WORKERS))
    host, port = server.address
    url = f"http://{host}:{port}/"
    with xmlrpc.client.ServerProxy(url, transport=TimeoutTransport()) as proxy:
        assert proxy.add(2, 3) == 5
        assert proxy.pid() in server.wait_workers(WORKERS)
        assert set(cast(list[str], proxy.system.listMethods())) >= {"add", "pid"}
        with pytest.raises(xmlrpc.client.Fault, match="not supported"):
            proxy.no_such_function()
        # Two different workers answer: one is held by a connection opened first that has
        # sent only the start of its request (a silent one is not accepted: defer_accept).
        with socket.create_connection(server.address, timeout=TIMEOUT) as held:
            held.sendall(b"POST /RPC2 HTTP/1.0\r\n")
            held_pid = wait_for(lambda: accepted_by(server.pid, held), timeout=TIMEOUT)
            assert proxy.pid() != held_pid
            body = xmlrpc.client.dumps((), "pid").encode()
            held.sendall(b"Content-Type: text/xml\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            response = http.client.HTTPResponse(held)
            response.begin()
            assert xmlrpc.client.loads(response.read())[0] == (held_pid,)


# -- wsgi_app.py ---------------------------------------------------------------------------


def test_wsgi_app_as_a_script(serve_script: Callable[..., ScriptServer]) -> None:
    server = serve_script("wsgi_app.py", "0", "--workers", str(WORKERS))
    assert server.wait_listening().startswith("http://127.0.0.1:")
    connection = http.client.HTTPConnection(*server.address, timeout=TIMEOUT)
    try:
        connection.request("GET", "/some/path")
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/plain; charset=utf-8"
    assert body.startswith(b"Hello from WSGI (worker pid ")
    assert body.endswith(b"path /some/path\n")
    assert pid_in(body) in server.wait_workers(WORKERS)
    check_two_workers_answer_http(server.pid, server.address)
    wait_for(lambda: " served " in server.log)  # the access log


def test_wsgi_app_through_the_cli(serve_cli: Callable[..., CLIServer]) -> None:
    server = serve_cli("examples/wsgi_app.py:app", "-k", "thread", "--workers", str(WORKERS))
    connection = http.client.HTTPConnection(*server.address, timeout=TIMEOUT)
    try:
        bodies = []
        for path in ("/a", "/b"):  # one kept-alive connection
            connection.request("GET", path)
            bodies.append(connection.getresponse().read())
    finally:
        connection.close()
    assert bodies[0].endswith(b"path /a\n") and bodies[1].endswith(b"path /b\n")
    assert pid_in(bodies[0]) == pid_in(bodies[1]) in server.wait_workers(WORKERS)


# -- every script --------------------------------------------------------------------------

SCRIPTS = ["echo.py", "udp_echo.py", "http_hello.py", "static_files.py", "xmlrpc_server.py", "wsgi_app.py"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
@pytest.mark.parametrize("script", SCRIPTS)
def test_script_stops_on_signal(
    serve_script: Callable[..., ScriptServer], tmp_path: Path, script: str, sig: signal.Signals
) -> None:
    """``kill -TERM`` to the master (graceful) or Ctrl-C (INT to the process group, fast) stops a
    script and its workers, with status 0."""
    directory = [str(tmp_path)] if script == "static_files.py" else []
    server = serve_script(script, *directory, "0", "--workers", str(WORKERS))
    server.wait_workers(WORKERS)
    if sig == signal.SIGINT:
        os.killpg(server.pid, sig)  # as Ctrl-C in a terminal: to the whole process group
    else:
        server.signal(sig)
    assert server.wait() == 0, server.log
    server.wait_logged(f"Received {sig.name}")  # the reader thread may lag the exit
    assert not group_processes(server.pid)  # the script stopped its workers itself


def test_every_example_is_tested() -> None:
    assert sorted(SCRIPTS) == sorted(p.name for p in EXAMPLES.glob("*.py"))
