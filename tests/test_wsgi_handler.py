"""prefork.wsgi.handler, through the ``prefork`` command: a WSGI application served over
HTTP/1.1 by real sync and thread workers, talked to with raw sockets and http.client."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import trustme

from tests.conftest import CLIServer, wait_for

APP = "tests/wsgi_test_app.py:app"
APP_FILE = Path(__file__).with_name("wsgi_test_app.py")


def start(*args: str) -> CLIServer:
    server = CLIServer([APP, "--bind", "127.0.0.1:0", "-w", "1", *args])
    server.wait_listening()
    server.wait_workers(1)  # booted before the first test looks at what it started
    return server


@pytest.fixture(scope="module")
def sync_server() -> Iterator[CLIServer]:
    server = start("-k", "sync", "--limit-request-line", "200", "--limit-request-fields", "10")
    yield server
    server.destroy()


@pytest.fixture(scope="module")
def thread_server() -> Iterator[CLIServer]:
    server = start("-k", "thread", "--threads", "4", "--keepalive", "1", "--root-path", "/mount")
    yield server
    server.destroy()


def exchange(server: CLIServer, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a new connection, then read until the server closes it."""
    with socket.create_connection(server.address, timeout=timeout) as sock:
        sock.sendall(data)
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    raise AssertionError("the server did not close the connection")


def get(server: CLIServer, path: str, headers: str = "") -> bytes:
    return exchange(server, f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def head_and_body(response: bytes) -> tuple[str, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body


def connect(server: CLIServer) -> http.client.HTTPConnection:
    host, port = server.address
    return http.client.HTTPConnection(host, port, timeout=5)


# -- the sync worker: a request per connection --------------------------------------------------


def test_sync_answers_one_request_with_connection_close(sync_server: CLIServer) -> None:
    response = get(sync_server, "/", "Connection: keep-alive\r\n")
    head, body = head_and_body(response)
    assert head.startswith("HTTP/1.1 200 OK") and body == b"Hello, world!\n"
    assert "Connection: close" in head and "Content-Length: 14" in head and "\r\nDate: " in head


def test_sync_environ_is_complete(sync_server: CLIServer) -> None:
    data = b"GET /environ?a=1&b=%20 HTTP/1.1\r\nHost: example.test\r\nX-Thing: 1\r\nX-Thing: 2\r\n\r\n"
    environ = json.loads(head_and_body(exchange(sync_server, data))[1])
    host, port = sync_server.address
    assert environ["REQUEST_METHOD"] == "GET" and environ["PATH_INFO"] == "/environ"
    assert environ["QUERY_STRING"] == "a=1&b=%20" and environ["SCRIPT_NAME"] == ""
    assert environ["SERVER_NAME"] == host and environ["SERVER_PORT"] == str(port)
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1" and environ["REMOTE_ADDR"] == "127.0.0.1"
    assert environ["HTTP_HOST"] == "example.test" and environ["HTTP_X_THING"] == "1,2"
    assert environ["wsgi.url_scheme"] == "http" and environ["wsgi.version"] == [1, 0]
    assert environ["wsgi.multiprocess"] is True and environ["wsgi.multithread"] is False
    assert environ["wsgi.run_once"] is False and "CONTENT_LENGTH" not in environ


def test_path_info_is_percent_decoded_as_latin_1(sync_server: CLIServer) -> None:
    environ = json.loads(head_and_body(get(sync_server, "/environ/%C3%A9%2F"))[1])
    assert environ["PATH_INFO"] == "/environ/\u00c3\u00a9/"


def test_a_header_with_an_underscore_is_dropped(sync_server: CLIServer) -> None:
    environ = json.loads(head_and_body(get(sync_server, "/environ", "X_Forwarded_For: 6.6.6.6\r\n"))[1])
    assert "HTTP_X_FORWARDED_FOR" not in environ


def test_a_chunked_upload_is_decoded(sync_server: CLIServer) -> None:
    body = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"
    data = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    assert head_and_body(exchange(sync_server, data))[1] == b"hello, world"


def test_readline_and_iteration_of_wsgi_input(sync_server: CLIServer) -> None:
    body = b"one\ntwo\nthree"
    data = b"POST /echo-lines?size=2 HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\n" + body
    assert json.loads(head_and_body(exchange(sync_server, data))[1]) == ["on", "e\n", "two\n", "three"]


def test_expect_100_continue_gets_an_interim_response_when_the_body_is_read(sync_server: CLIServer) -> None:
    with socket.create_connection(sync_server.address, timeout=5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        response = sock.recv(65536)
    assert response.startswith(b"HTTP/1.1 200 OK") and response.endswith(b"hello")


def test_an_application_that_does_not_read_sends_no_100_continue(sync_server: CLIServer) -> None:
    data = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    assert exchange(sync_server, data).startswith(b"HTTP/1.1 200 OK")


def test_head_has_the_headers_and_no_body(sync_server: CLIServer) -> None:
    response = exchange(sync_server, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    head, body = head_and_body(response)
    assert head.startswith("HTTP/1.1 200 OK") and "Content-Length: 14" in head and body == b""


def test_a_file_wrapper_goes_by_sendfile(sync_server: CLIServer) -> None:
    head, body = head_and_body(get(sync_server, "/file"))
    assert head.startswith("HTTP/1.1 200 OK"), head + body.decode(errors="replace")
    assert body == APP_FILE.read_bytes()
    assert f"Content-Length: {APP_FILE.stat().st_size}" in head


def test_a_file_short_of_its_content_length_closes_the_connection(thread_server: CLIServer) -> None:
    data = b"GET /short-file HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"
    response = exchange(thread_server, data)  # closed after the first: no second response
    assert response.count(b"HTTP/1.1 200 OK") == 1 and response.endswith(APP_FILE.read_bytes())


def test_no_100_continue_once_the_head_is_out(thread_server: CLIServer) -> None:
    with socket.create_connection(thread_server.address, timeout=5) as sock:
        sock.sendall(
            b"POST /yield-then-read HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        first = sock.recv(65536)
        sock.sendall(b"hello")  # as a client does when no 100 came
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
    response = first + rest
    assert b"100 Continue" not in response and response.startswith(b"HTTP/1.1 200 OK")
    assert head_and_body(response)[1] == b"reading...hello"  # Connection: close: not chunked


def test_a_body_never_asked_for_closes_with_connection_close(thread_server: CLIServer) -> None:
    # Expect: 100-continue and an application that does not read: the body will never come.
    with socket.create_connection(thread_server.address, timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    assert response.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in response


@pytest.mark.parametrize("framing", [b"Content-Length: %d" % (2 << 20), b"Transfer-Encoding: chunked"])
def test_a_large_unread_body_closes_with_connection_close(thread_server: CLIServer, framing: bytes) -> None:
    # Beyond what the server drains (2 MiB), or a chunked body of unknown size.
    with socket.create_connection(thread_server.address, timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n\r\n")
        response = sock.recv(65536)
    assert response.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in response


def test_the_write_callable(sync_server: CLIServer) -> None:
    assert head_and_body(get(sync_server, "/write"))[1] == b"written and returned\n"


def test_no_content_has_no_body_and_no_length(sync_server: CLIServer) -> None:
    head, body = head_and_body(get(sync_server, "/no-content"))
    assert head.startswith("HTTP/1.1 204") and "Content-Length" not in head and body == b""


def test_content_length_of_the_application_is_kept(sync_server: CLIServer) -> None:
    assert head_and_body(get(sync_server, "/long"))[1] == b"four"
    head, body = head_and_body(get(sync_server, "/short"))
    assert "Content-Length: 100" in head and body == b"only this"  # then the connection closed


def test_hop_by_hop_headers_of_the_application_are_dropped(sync_server: CLIServer) -> None:
    head, body = head_and_body(get(sync_server, "/hop"))
    assert "Transfer-Encoding" not in head and "X-Kept: 1" in head and body == b"hop\n"


def test_an_application_error_is_500_and_the_worker_goes_on(sync_server: CLIServer) -> None:
    pid = head_and_body(get(sync_server, "/pid"))[1]
    response = get(sync_server, "/error")
    assert status_of(response) == 500 and b"Connection: close" in response
    sync_server.wait_logged("RuntimeError: the application failed")
    assert "Traceback" in sync_server.log
    assert head_and_body(get(sync_server, "/pid"))[1] == pid


def test_a_header_with_a_line_break_is_500_not_sent(sync_server: CLIServer) -> None:
    response = get(sync_server, "/bad-header")
    assert status_of(response) == 500 and b"evil" not in response


def test_close_is_called_after_a_body_and_after_an_error(sync_server: CLIServer) -> None:
    before = int(head_and_body(get(sync_server, "/close-count"))[1])
    assert head_and_body(get(sync_server, "/closes"))[1] == b"ab"
    response = get(sync_server, "/error-after")  # the head was out: the connection is cut
    assert response.startswith(b"HTTP/1.1 200 OK") and response.endswith(b"first\n")
    assert int(head_and_body(get(sync_server, "/close-count"))[1]) == before + 2


def test_a_streamed_response_goes_out_as_it_is_produced(sync_server: CLIServer) -> None:
    with socket.create_connection(sync_server.address, timeout=5) as sock:
        sock.sendall(b"GET /stream?n=3&delay=0.5 HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(65536)
        arrived = time.monotonic()
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
        done = time.monotonic()
    assert b"chunk 0\n" in first and b"chunk 2" not in first
    assert done - arrived > 0.8 and rest.endswith(b"chunk 2\n")
    assert b"Transfer-Encoding" not in first  # sync: the body ends with the connection


# -- limits and refused requests: answered, then the connection closed ---------------------------

REFUSED = {
    "request line over limit_request_line": (b"GET /" + b"a" * 300 + b" HTTP/1.1\r\n\r\n", 414),
    "fields over limit_request_fields": (
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(11)) + b"\r\n",
        431,
    ),
    "field over limit_request_field_size": (b"GET / HTTP/1.1\r\nX: " + b"v" * 9000 + b"\r\n\r\n", 431),
    "content-length with transfer-encoding": (
        b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "two content-lengths": (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    "obsolete line folding": (b"GET / HTTP/1.1\r\nX-A: b\r\n c\r\n\r\n", 400),
    "invalid header name": (b"GET / HTTP/1.1\r\nX A: b\r\n\r\n", 400),
    "space before the colon": (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    "transfer-encoding not chunked": (
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "bad chunk": (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    "bare LF": (b"GET / HTTP/1.1\nHost: x\n\n", 400),
    "HTTP/2.0": (b"GET / HTTP/2.0\r\n\r\n", 505),
}


@pytest.mark.parametrize("data,status", REFUSED.values(), ids=REFUSED.keys())
def test_a_refused_request_is_answered_and_closed(sync_server: CLIServer, data: bytes, status: int) -> None:
    response = exchange(sync_server, data)
    assert status_of(response) == status, response
    assert b"Connection: close" in response


@pytest.mark.parametrize("data,status", list(REFUSED.values())[3:], ids=list(REFUSED)[3:])
def test_a_refused_request_ends_a_kept_alive_connection(
    thread_server: CLIServer, data: bytes, status: int
) -> None:
    response = exchange(thread_server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + data)
    assert response.startswith(b"HTTP/1.1 200 OK") and response.count(b"HTTP/1.1 ") == 2
    assert status_of(response[response.index(b"HTTP/1.1 ", 10) :]) == status


# -- the thread worker: keep-alive ----------------------------------------------------------------


def test_thread_keeps_the_connection_alive(thread_server: CLIServer) -> None:
    conn = connect(thread_server)
    try:
        pids = set()
        for _ in range(3):
            conn.request("GET", "/mount/pid")
            response = conn.getresponse()
            assert response.status == 200 and response.getheader("Connection") is None
            pids.add(response.read())
        sock = conn.sock
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"Hello, world!\n" and conn.sock is sock
    finally:
        conn.close()


def test_thread_environ(thread_server: CLIServer) -> None:
    conn = connect(thread_server)
    try:
        conn.request("GET", "/mount/environ")
        environ = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    assert environ["wsgi.multithread"] is True
    assert environ["SCRIPT_NAME"] == "/mount" and environ["PATH_INFO"] == "/environ"


def test_pipelined_requests_are_answered_in_order(thread_server: CLIServer) -> None:
    data = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /mount/pid HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    response = exchange(thread_server, data)
    assert response.count(b"HTTP/1.1 200 OK") == 3
    assert response.index(b"abc") < response.index(b"Hello, world!")


def test_a_body_left_unread_is_drained_before_the_next_request(thread_server: CLIServer) -> None:
    data = (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n"
        + b"z" * 10000
        + b"GET /mount/pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    response = exchange(thread_server, data)
    assert response.count(b"HTTP/1.1 200 OK") == 2


def test_a_streamed_response_is_chunked_on_a_kept_alive_connection(thread_server: CLIServer) -> None:
    conn = connect(thread_server)
    try:
        conn.request("GET", "/stream?n=4")
        response = conn.getresponse()
        assert response.getheader("Transfer-Encoding") == "chunked"
        assert response.read() == b"chunk 0\nchunk 1\nchunk 2\nchunk 3\n"
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"Hello, world!\n"
    finally:
        conn.close()


def test_an_idle_kept_alive_connection_is_closed_after_keepalive(thread_server: CLIServer) -> None:
    with socket.create_connection(thread_server.address, timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server
        assert 0.8 < time.monotonic() - started < 3


def test_http_1_0_keep_alive_is_said(thread_server: CLIServer) -> None:
    with socket.create_connection(thread_server.address, timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        response = sock.recv(65536)
        assert b"Connection: keep-alive" in response
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        wait_for(lambda: True)
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
    assert rest.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in rest


def test_the_application_error_closes_a_kept_alive_connection(thread_server: CLIServer) -> None:
    response = exchange(
        thread_server, b"GET /error HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert status_of(response) == 500 and response.count(b"HTTP/1.1 ") == 1


# -- the command: targets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target,body",
    [
        ("tests/wsgi_test_app.py:create_app()", b"Hello from a factory\n"),
        ("tests/wsgi_test_app.py:create_app('Hi')", b"Hi from a factory\n"),
        ("tests.wsgi_test_app:create_app(greeting='Hey')", b"Hey from a factory\n"),
        ("tests.wsgi_test_app", b"Hello, world!\n"),
    ],
)
def test_a_factory_or_module_target(target: str, body: bytes) -> None:
    server = CLIServer([target, "--bind", "127.0.0.1:0", "-w", "1"])
    try:
        server.wait_listening()
        assert head_and_body(get(server, "/"))[1] == body
    finally:
        server.destroy()


@pytest.mark.parametrize(
    "target,words",
    [
        ("tests/wsgi_test_app.py:broken_factory()", "broken_factory() raised RuntimeError: no app today"),
        ("tests/wsgi_test_app.py:not_callable", "neither a socketserver.BaseRequestHandler"),
        ("tests/wsgi_test_app.py:not_callable()", "is not callable"),
        ("tests/wsgi_test_app.py:create_app(os.getcwd())", "a factory's arguments must be literals"),
        ("tests/wsgi_test_app.py:missing", "has no attribute 'missing'"),
    ],
)
@pytest.mark.parametrize("preload", [False, True])
def test_a_bad_wsgi_target_is_one_line_and_exit_2(target: str, words: str, preload: bool) -> None:
    server = CLIServer([target, "--bind", "127.0.0.1:0", *(["--preload"] if preload else [])])
    try:
        assert server.wait(20) == 2
        server.wait_logged(words)
        errors = [line for line in server.lines if line.strip()]
        assert len(errors) == 1 and errors[0].startswith("prefork: error:"), errors
    finally:
        server.destroy()


def test_a_wsgi_app_on_a_unix_socket(unix_path: str) -> None:
    server = CLIServer([APP, "--bind", f"unix:{unix_path}", "-w", "1"])
    try:
        server.wait_listening()
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(unix_path)
            sock.sendall(b"GET /environ HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        environ = json.loads(head_and_body(data)[1])
        assert environ["REMOTE_ADDR"] == "unix" and environ["SERVER_NAME"] == "localhost"
    finally:
        server.destroy()


def test_the_workers_rss_stays_flat_over_a_large_streamed_response(thread_server: CLIServer) -> None:
    (worker,) = thread_server.workers()
    before = psutil.Process(worker.pid).memory_info().rss
    peak = before
    with socket.create_connection(thread_server.address, timeout=10) as sock:
        sock.sendall(b"GET /big?mib=64 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = 0
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
            if received % (8 << 20) < len(chunk):
                peak = max(peak, psutil.Process(worker.pid).memory_info().rss)
    assert received > 64 << 20
    assert peak - before < 5 << 20, (before, peak)
    assert os.getpid() != worker.pid


def test_a_kept_alive_connection_waiting_is_no_busy_request() -> None:
    server = start("-k", "thread", "--threads", "2", "--timeout", "1", "--keepalive", "3")
    try:
        (pid,) = server.worker_pids()
        conn = connect(server)
        try:
            conn.request("GET", "/pid")
            assert conn.getresponse().read() == str(pid).encode()
            time.sleep(2)  # silent beyond request_timeout, within keepalive
            conn.request("GET", "/pid")
            assert conn.getresponse().read() == str(pid).encode()
        finally:
            conn.close()
        assert server.worker_pids() == {pid} and "aborting it" not in server.log
    finally:
        server.destroy()


def test_request_timeout_bounds_each_request_not_a_kept_alive_connection() -> None:
    server = start("-k", "thread", "--threads", "2", "--timeout", "1", "--keepalive", "1")
    try:
        (pid,) = server.worker_pids()
        conn = connect(server)
        try:
            deadline = time.monotonic() + 2.5  # requests on one connection, beyond request_timeout
            while time.monotonic() < deadline:
                conn.request("GET", "/pid")
                assert conn.getresponse().read() == str(pid).encode()
                time.sleep(0.05)
        finally:
            conn.close()
        assert server.worker_pids() == {pid}
        assert "timed out" not in server.log and "request_timeout" not in server.log
    finally:
        server.destroy()


# -- behind the edge: TLS and the PROXY protocol ------------------------------------------------


@pytest.mark.parametrize("worker", ["sync", "thread"])
def test_tls_makes_the_scheme_https_and_keeps_alive(tmp_path: Path, worker: str) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    server = start("-k", worker, "--certfile", str(cert), "--keyfile", str(key))
    try:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        host, port = server.address
        conn = http.client.HTTPSConnection(host, port, timeout=5, context=context)
        try:
            conn.request("GET", "/environ")
            environ = json.loads(conn.getresponse().read())
            conn.request("GET", "/")  # a second request: kept alive (thread) or reconnected (sync)
            assert conn.getresponse().read() == b"Hello, world!\n"
        finally:
            conn.close()
        assert environ["wsgi.url_scheme"] == "https"
        assert environ["wsgi.multithread"] is (worker == "thread")
    finally:
        server.destroy()


def test_remote_addr_from_a_proxy_protocol_header() -> None:
    server = start("--proxy-protocol", "v1")
    try:
        data = b"PROXY TCP4 192.0.2.1 127.0.0.1 5000 80\r\nGET /environ HTTP/1.1\r\nHost: x\r\n\r\n"
        environ = json.loads(head_and_body(exchange(server, data))[1])
        assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("192.0.2.1", "5000")
    finally:
        server.destroy()


def test_x_forwarded_for_only_from_forwarded_allow_ips() -> None:
    headers = "X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n"
    trusting, distrusting = start(), start("--forwarded-allow-ips", "10.0.0.0/8")
    try:
        environ = json.loads(head_and_body(get(trusting, "/environ", headers))[1])
        assert (environ["REMOTE_ADDR"], environ["wsgi.url_scheme"]) == ("203.0.113.9", "https")
        environ = json.loads(head_and_body(get(distrusting, "/environ", headers))[1])
        assert (environ["REMOTE_ADDR"], environ["wsgi.url_scheme"]) == ("127.0.0.1", "http")
    finally:
        trusting.destroy()
        distrusting.destroy()


# -- the access log: a line per request --------------------------------------------------------


@pytest.mark.parametrize("worker", ["sync", "thread"])
def test_the_access_log_has_a_line_per_request(tmp_path: Path, worker: str) -> None:
    log = tmp_path / "access.log"
    server = start("-k", worker, "--access-log", str(log))
    try:
        conn = connect(server)
        try:
            for path in ("/", "/stream?n=2", '/missing?q="x"'):
                conn.request("GET", path)
                conn.getresponse().read()
        finally:
            conn.close()
        get(server, "/error")
        wait_for(lambda: log.exists() and log.read_text().count("\n") >= 5)
        lines = log.read_text().splitlines()
    finally:
        server.destroy()
    # (A line is written once its response is out: two connections' lines may cross.)
    assert '"GET / HTTP/1.1" 200 14 served ' in lines[0]
    assert '"GET /stream?n=2 HTTP/1.1" 200 16 served ' in lines[1]
    assert sum('"GET /missing?q=\\"x\\" HTTP/1.1" 200 14 served ' in line for line in lines) == 1
    assert sum('"GET /error HTTP/1.1" 500 0 error ' in line for line in lines) == 1
    # The connection of /error, ended in an error, has its own line.
    assert sum(" error " in line and '"' not in line for line in lines) == 1
    assert len(lines) == 5, lines


def test_the_access_log_says_the_status_sent(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    server = start("--access-log", str(log))
    try:
        assert status_of(get(server, "/bad-header")) == 500  # start_response was called with 200
        assert status_of(exchange(server, b"GET / HTTP/1.1\r\n\r\n")) == 400  # no Host
        data = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
        assert status_of(exchange(server, data)) == 400  # the body refused while the app reads it
        wait_for(lambda: log.exists() and log.read_text().count(" 400 ") >= 2)
        text = log.read_text()
    finally:
        server.destroy()
    assert '"GET /bad-header HTTP/1.1" 500 0 error ' in text
    assert '"-" 400 0 served ' in text
    assert '"POST /echo HTTP/1.1" 400 0 served ' in text


def test_the_access_log_in_json(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    server = start("--access-log", str(log), "--log-format", "json")
    try:
        get(server, "/")
        wait_for(lambda: log.exists() and log.read_text().endswith("\n"))
        entry = json.loads(log.read_text().splitlines()[0])
    finally:
        server.destroy()
    assert (entry["request"], entry["status"], entry["bytes"]) == ("GET / HTTP/1.1", 200, 14)


def test_hup_serves_the_edited_application(tmp_path: Path) -> None:
    app = tmp_path / "edited_app.py"
    source = (
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'VERSION']\n"
    )
    app.write_text(source.replace("VERSION", "one"))
    server = CLIServer([f"{app}:app", "--bind", "127.0.0.1:0", "-w", "1"])
    try:
        server.wait_listening()
        old = server.wait_workers(1)
        assert head_and_body(get(server, "/"))[1] == b"one"
        app.write_text(source.replace("VERSION", "number two"))
        later = time.time() + 2  # a cached .pyc of the same second and size would be reused
        os.utime(app, (later, later))
        server.signal(signal.SIGHUP)
        wait_for(lambda: server.worker_pids() and not server.worker_pids() & old, timeout=10)
        server.wait_workers(1)
        assert head_and_body(get(server, "/"))[1] == b"number two"
    finally:
        server.destroy()
