"""Real WSGI applications served by the ``prefork`` command (``python -m prefork module:app``):
a Flask app, a single-file Django project and an app inside :func:`wsgiref.validate.validator`
(tests/wsgi_apps), driven by real clients (requests, urllib, http.client, curl) through both
worker classes: ``-k sync`` (one request per connection) and ``-k thread`` (keep-alive).

Covered: forms, JSON, chunked and ``Expect: 100-continue`` uploads, generator responses that
reach the client while the app still produces them, files through ``wsgi.file_wrapper``,
HEAD, 404 and 500 pages (the worker serving on after them), ``close()`` of the app's iterable
(also when the client goes away), ``--root-path``, forwarded headers, the request limits,
``--keepalive``, the target forms ``module:app``, ``path/file.py:app`` and
``'module:create_app()'``. Server bugs these apps showed are tested at the end.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import ROOT, CLIServer, missing_component, wait_for
from tests.wsgi_apps import FILE_WRAPPER_HEADER, FILE_WRAPPER_RETURNED_HEADER

pytestmark = pytest.mark.timeout(60)

Serve = Callable[..., CLIServer]

FLASK = "tests.wsgi_apps.flask_app:app"
DJANGO = "tests.wsgi_apps.django_app:application"
VALIDATED = "tests.wsgi_apps.validated:app"
WORKER_FLAGS = {"sync": ["-k", "sync"], "thread": ["-k", "thread", "--threads", "4"]}
worker_classes = pytest.mark.parametrize("worker", sorted(WORKER_FLAGS))
TIMEOUT = 10.0  # seconds any one client call may take


class App:
    """One served app: its server, base URL and the files it was given."""

    def __init__(self, server: CLIServer, served: Path, marks: Path) -> None:
        self.server = server
        self.served = served
        self.marks = marks
        self.host, self.port = server.address
        self.url = f"http://{self.host}:{self.port}"

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=TIMEOUT, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.post(self.url + path, timeout=TIMEOUT, **kwargs)


@pytest.fixture
def served(tmp_path: Path) -> Path:
    """A file for the apps' file endpoints: 300 KiB and a bit (several sendfile rounds)."""
    path = tmp_path / "served.bin"
    path.write_bytes(os.urandom(300 * 1024 + 123))
    return path


@pytest.fixture
def serve_app(serve_cli: Serve, served: Path, tmp_path: Path) -> Callable[..., App]:
    """Start ``python -m prefork TARGET -w 1 [worker flags] FLAGS`` serving ``served``."""
    marks = tmp_path / "marks"
    marks.mkdir()

    def start(target: str, worker: str = "sync", *flags: str) -> App:
        env = {**os.environ, "WSGI_APPS_FILE": str(served), "WSGI_APPS_MARKS": str(marks)}
        server = serve_cli(target, "--workers", "1", *WORKER_FLAGS[worker], *flags, env=env)
        server.wait_workers(1)
        return App(server, served, marks)

    return start


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    if shutil.which("curl") is None:
        missing_component("curl")
    return subprocess.run(
        ["curl", "-sS", "--max-time", str(TIMEOUT), *args],
        capture_output=True,
        timeout=TIMEOUT + 5,
        stdin=subprocess.DEVNULL,
        check=True,
    )


def blocks(data: bytes, size: int = 8192) -> Iterator[bytes]:
    """``data`` in pieces: a generator body, which requests sends chunked."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def digest(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def read_line(response: http.client.HTTPResponse) -> bytes:
    """Read up to and including the next newline, taking only what has arrived (read1)."""
    line = b""
    while not line.endswith(b"\n"):
        piece = response.read1(1)
        if not piece:
            break
        line += piece
    return line


def assert_streamed(app: App, path: str, count: int) -> None:
    """GET ``path`` (``count`` lines, each saying when the app made it, made seconds apart):
    the first line reaches the client before the app made the last."""
    conn = app.connection()
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200
        first = read_line(response)
        first_arrived = time.time()
        rest = response.read()
    finally:
        conn.close()
    lines = (first + rest).decode().splitlines()
    assert [line.split(" made at ")[0] for line in lines] == [f"chunk {n} of {count}" for n in range(count)]
    last_made = float(lines[-1].rpartition(" made at ")[2])
    assert first_arrived < last_made, "the first chunk came only after the app made the last"


def assert_log_clean(app: App) -> None:
    log = app.server.log
    for sign in ("Traceback", "AssertionError", "WSGIWarning", "garbage collected without being closed"):
        assert sign not in log, log


# --- Flask -------------------------------------------------------------------------------


@worker_classes
def test_flask_form_and_json(serve_app: Callable[..., App], worker: str) -> None:
    app = serve_app(FLASK, worker)
    with requests.Session() as session:
        answer = session.post(app.url + "/form", data={"name": "préfork", "tag": ["a", "b"]}, timeout=TIMEOUT)
        assert answer.status_code == 200
        assert answer.json()["form"] == {"name": ["préfork"], "tag": ["a", "b"]}
        assert answer.json()["content_type"] == "application/x-www-form-urlencoded"
        document: dict[str, Any] = {"list": [1, 2, 3], "nested": {"ok": True}, "text": "é" * 1000}
        answer = session.post(app.url + "/json", json=document, timeout=TIMEOUT)
        assert answer.status_code == 200
        assert answer.json() == {"received": document, "content_type": "application/json"}
    form = urllib.parse.urlencode({"via": "urllib"}).encode()
    with urllib.request.urlopen(app.url + "/form", data=form, timeout=TIMEOUT) as response:
        assert json.load(response)["form"] == {"via": ["urllib"]}
    assert_log_clean(app)


@worker_classes
@pytest.mark.parametrize("how", ["stream", "get_data"])
def test_flask_chunked_upload(serve_app: Callable[..., App], worker: str, how: str) -> None:
    app = serve_app(FLASK, worker)
    data = os.urandom(1024 * 1024 + 17)
    answer = app.post(f"/upload?how={how}", data=blocks(data))
    assert answer.status_code == 200
    # werkzeug reads a body without a Content-Length only when wsgi.input_terminated is set
    assert answer.json() == {
        **digest(data),
        "content_length": None,
        "transfer_encoding": "chunked",
    }
    answer = app.post(f"/upload?how={how}", data=data)  # the same with a Content-Length
    assert answer.json() == {**digest(data), "content_length": str(len(data)), "transfer_encoding": None}


@worker_classes
def test_expect_100_continue(serve_app: Callable[..., App], worker: str) -> None:
    """The client sends the body only after the server's ``100 Continue``."""
    app = serve_app(FLASK, worker)
    data = os.urandom(100_000)
    head = (
        f"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
        "Content-Type: application/octet-stream\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((app.host, app.port), timeout=TIMEOUT) as sock:
        sock.sendall(head.encode())
        interim = b""
        while b"\r\n\r\n" not in interim:
            piece = sock.recv(1)
            assert piece, f"the connection closed after {interim!r}"
            interim += piece
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
        sock.sendall(data)
        final = b""
        while piece := sock.recv(65536):
            final += piece
    status, _, body = final.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200 "), final
    assert json.loads(body)["sha256"] == digest(data)["sha256"]


@worker_classes
def test_curl_form_upload_and_download(serve_app: Callable[..., App], worker: str, tmp_path: Path) -> None:
    app = serve_app(FLASK, worker)
    answer = json.loads(curl("--data-urlencode", "q=a b&c", f"{app.url}/form").stdout)
    assert answer["form"] == {"q": ["a b&c"]}
    # chunked, and curl waits for 100 Continue (--expect100-timeout: longer than the test's)
    upload = curl(
        "--data-binary",
        f"@{app.served}",
        "-H",
        "Content-Type: application/octet-stream",
        "-H",
        "Transfer-Encoding: chunked",
        "-H",
        "Expect: 100-continue",
        "--expect100-timeout",
        "30",
        f"{app.url}/upload",
    )
    assert json.loads(upload.stdout) == {
        **digest(app.served.read_bytes()),
        "content_length": None,
        "transfer_encoding": "chunked",
    }
    out = tmp_path / "downloaded"
    done = curl("-o", str(out), "-w", "%{http_code} %{size_download}", f"{app.url}/file")
    assert done.stdout.decode() == f"200 {app.served.stat().st_size}"
    assert out.read_bytes() == app.served.read_bytes()


@worker_classes
@pytest.mark.parametrize("target", [FLASK, DJANGO, VALIDATED])
def test_generator_response_streams(serve_app: Callable[..., App], worker: str, target: str) -> None:
    app = serve_app(target, worker)
    assert_streamed(app, "/stream?n=4&delay=0.4", 4)
    assert_log_clean(app)


@worker_classes
@pytest.mark.parametrize("target", [FLASK, DJANGO, VALIDATED])
def test_file_response(serve_app: Callable[..., App], worker: str, target: str) -> None:
    app = serve_app(target, worker)
    expected = app.served.read_bytes()
    answer = app.get("/file")
    assert answer.status_code == 200
    assert answer.content == expected
    assert answer.headers["Content-Length"] == str(len(expected))
    if target != VALIDATED:  # the validator hides the wrapper from the server: its iterable path
        assert answer.headers[FILE_WRAPPER_HEADER].startswith("prefork."), answer.headers
        assert answer.headers[FILE_WRAPPER_RETURNED_HEADER] == "yes"
    with urllib.request.urlopen(app.url + "/file", timeout=TIMEOUT) as response:
        assert response.read() == expected
    head = requests.head(app.url + "/file", timeout=TIMEOUT)
    assert head.status_code == 200
    assert head.headers["Content-Length"] == str(len(expected))
    assert head.content == b""
    assert_log_clean(app)


@pytest.mark.parametrize(("target", "words"), [(FLASK, "boom from the flask app"), (DJANGO, None)])
def test_404_and_500_pages_and_the_worker_serves_on(
    serve_app: Callable[..., App], target: str, words: str | None
) -> None:
    app = serve_app(target, "sync")
    pid = app.get("/pid").text
    assert int(pid) in app.server.worker_pids()
    missing = app.get("/no/such/page")
    assert missing.status_code == 404
    assert "Not Found" in missing.text
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(app.url + "/boom", timeout=TIMEOUT)
    assert raised.value.code == 500
    assert b"Server Error" in raised.value.read()
    raised.value.close()
    if words is not None:  # Flask logs the traceback to wsgi.errors
        app.server.wait_logged(words)
    assert app.get("/pid").text == pid  # the same worker, serving on
    assert app.server.worker_pids() == {int(pid)}


@worker_classes
def test_app_exception_is_a_500_and_the_worker_serves_on(serve_app: Callable[..., App], worker: str) -> None:
    app = serve_app(VALIDATED, worker)
    pids = app.server.worker_pids()
    answer = app.get("/raise")
    assert answer.status_code == 500
    app.server.wait_logged("RuntimeError: raised by the validated app on purpose")
    assert app.get("/sized?size=3").content == b"sss"
    assert app.server.worker_pids() == pids


# --- Django ------------------------------------------------------------------------------


@worker_classes
def test_django_form_json_and_upload(serve_app: Callable[..., App], worker: str) -> None:
    app = serve_app(DJANGO, worker)
    with requests.Session() as session:
        answer = session.post(app.url + "/form", data={"name": "préfork", "tag": ["a", "b"]}, timeout=TIMEOUT)
        assert answer.status_code == 200
        assert answer.json() == {"form": {"name": ["préfork"], "tag": ["a", "b"]}}
        document: dict[str, Any] = {"list": [1, 2, 3], "text": "é" * 1000}
        answer = session.post(app.url + "/json", json=document, timeout=TIMEOUT)
        assert answer.json() == {"received": document, "content_type": "application/json"}
        data = os.urandom(3 * 1024 * 1024 + 5)  # over FILE_UPLOAD_MAX_MEMORY_SIZE: a temporary file
        answer = session.post(app.url + "/upload", files={"file": ("blob.bin", data)}, timeout=TIMEOUT)
        assert answer.json() == {**digest(data), "name": "blob.bin"}
        raw = os.urandom(200_000)
        answer = session.post(app.url + "/upload", data=raw, timeout=TIMEOUT)
        assert answer.json() == {**digest(raw), "name": None}
        csrf = session.post(app.url + "/env", data={"a": "1"}, timeout=TIMEOUT)  # not exempt
        assert csrf.status_code == 403
    assert_log_clean(app)


# --- targets and settings ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "made_by"),
    [
        (FLASK, "module attribute"),
        ("tests/wsgi_apps/flask_app.py:app", "module attribute"),
        ("tests.wsgi_apps.flask_app:create_app()", "create_app()"),
        ("tests/wsgi_apps/flask_app.py:create_app()", "create_app()"),
    ],
)
def test_flask_target_forms(serve_app: Callable[..., App], target: str, made_by: str) -> None:
    app = serve_app(target)
    assert app.get("/whoami").text == made_by
    assert app.server.wait_listening().startswith("http://")


def test_django_by_file_path(serve_app: Callable[..., App]) -> None:
    app = serve_app("tests/wsgi_apps/django_app.py:application", "thread")
    assert app.get("/env").json()["reversed"] == "/env"
    assert app.get("/file").content == app.served.read_bytes()


@pytest.mark.parametrize("target", [FLASK, DJANGO, VALIDATED])
def test_root_path_is_script_name(serve_app: Callable[..., App], target: str) -> None:
    app = serve_app(target, "thread", "--root-path", "/prefix")
    report = app.get("/prefix/env").json()
    if target == VALIDATED:
        assert (report["SCRIPT_NAME"], report["PATH_INFO"]) == ("/prefix", "/env")
        return
    assert (report["script_name"], report["path_info"]) == ("/prefix", "/env")
    if target == FLASK:
        assert report["root_path"] == "/prefix"
        assert report["url"] == f"{app.url}/prefix/env"
    else:
        assert report["path"] == "/prefix/env"
        assert report["reversed"] == "/prefix/env"  # Django builds URLs under SCRIPT_NAME


@pytest.mark.parametrize(
    ("allow", "believed"), [([], True), (["--forwarded-allow-ips", "10.0.0.0/8"], False)]
)
def test_forwarded_headers(serve_app: Callable[..., App], allow: list[str], believed: bool) -> None:
    """From loopback (believed by default) X-Forwarded-Proto and -For make the scheme and
    REMOTE_ADDR; from a peer not allowed they change nothing."""
    app = serve_app(VALIDATED, "sync", *allow)
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}
    report = app.get("/env", headers=headers).json()
    if believed:
        assert (report["wsgi.url_scheme"], report["REMOTE_ADDR"]) == ("https", "203.0.113.7")
    else:
        assert (report["wsgi.url_scheme"], report["REMOTE_ADDR"]) == ("http", "127.0.0.1")
    assert_log_clean(app)


# --- connections -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "headers", "path", "status"),
    [
        (["--limit-request-line", "100"], {}, "/pid?" + "x" * 100, 414),
        (["--limit-request-fields", "5"], {f"X-Field-{n}": "v" for n in range(10)}, "/pid", 431),
        (["--limit-request-field-size", "100"], {"X-Big": "v" * 200}, "/pid", 431),
    ],
)
def test_request_limits(
    serve_app: Callable[..., App], flags: list[str], headers: dict[str, str], path: str, status: int
) -> None:
    app = serve_app(FLASK, "thread", *flags)
    assert app.get(path, headers=headers).status_code == status
    assert app.get("/pid").status_code == 200  # within the limits


@pytest.mark.parametrize(("keepalive", "closes_within"), [("0", 0.0), ("0.5", 3.0)])
def test_keepalive_setting(serve_app: Callable[..., App], keepalive: str, closes_within: float) -> None:
    """``--keepalive 0``: every response closes its connection; else an idle kept-alive
    connection is closed after about that many seconds."""
    app = serve_app(FLASK, "thread", "--keepalive", keepalive)
    with socket.create_connection((app.host, app.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        received = b""
        while piece := sock.recv(65536):
            received += piece
        waited = time.monotonic() - started
    head = received.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 200 ")
    assert (b"connection: close" in head) is (keepalive == "0")
    assert waited < closes_within + 1.0
    if keepalive != "0":
        assert waited >= float(keepalive) * 0.8


def test_sync_worker_closes_every_connection(serve_app: Callable[..., App]) -> None:
    app = serve_app(FLASK, "sync")
    conn = app.connection()
    try:
        conn.request("GET", "/pid")
        response = conn.getresponse()
        assert response.getheader("Connection") == "close"
        assert response.read()
        assert conn.sock is None  # http.client saw the close
    finally:
        conn.close()


def test_thread_worker_keeps_connections_alive(serve_app: Callable[..., App]) -> None:
    """One connection carries requests whose bodies the app read, did not read, or got
    chunked, a HEAD, and then more requests."""
    app = serve_app(FLASK, "thread")
    conn = app.connection()
    try:
        conn.request("GET", "/pid")
        response = conn.getresponse()
        pid = response.read()
        assert response.getheader("Connection") != "close"
        assert conn.sock is not None
        local = conn.sock.getsockname()
        steps: list[tuple[str, str, Any, dict[str, str], int]] = [
            ("POST", "/ignore-body", os.urandom(65536), {}, 200),
            ("POST", "/ignore-body", blocks(os.urandom(65536)), {"Transfer-Encoding": "chunked"}, 200),
            ("POST", "/upload", blocks(b"x" * 10_000), {"Transfer-Encoding": "chunked"}, 200),
            ("HEAD", "/file", None, {}, 200),
            ("GET", "/no-such", None, {}, 404),
        ]
        for method, path, body, headers, status in steps:
            conn.request(
                method, path, body=body, headers=headers, encode_chunked="Transfer-Encoding" in headers
            )
            response = conn.getresponse()
            assert (method, path, response.status) == (method, path, status)
            response.read()
            ignored_chunked = path == "/ignore-body" and "Transfer-Encoding" in headers
            if ignored_chunked and conn.sock is None:
                # A chunked body the app did not read, not all arrived when the response
                # started: the server said Connection: close (its rest is of unknown size).
                assert response.getheader("Connection") == "close"
            conn.request("GET", "/pid")
            response = conn.getresponse()
            assert response.read() == pid, f"after {method} {path}"
            assert conn.sock is not None
            if ignored_chunked:
                local = conn.sock.getsockname()
            assert conn.sock.getsockname() == local, f"reconnected after {path}"
    finally:
        conn.close()


# --- PEP 3333, checked by wsgiref.validate -----------------------------------------------


@worker_classes
def test_validated_app(serve_app: Callable[..., App], worker: str) -> None:
    """Every request passes wsgiref's validator: no AssertionError, no warning in the log."""
    app = serve_app(VALIDATED, worker)
    report = app.get("/env/caf%C3%A9?a=1&b=%20x&c=caf%C3%A9").json()
    assert report["REQUEST_METHOD"] == "GET"
    assert report["QUERY_STRING"] == "a=1&b=%20x&c=caf%C3%A9"  # as sent, not decoded
    assert report["SCRIPT_NAME"] == ""
    assert report["PATH_INFO"] == "/env/café".encode().decode("latin-1")  # decoded, bytes as latin-1
    assert report["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert report["wsgi.version"] == [1, 0]
    assert report["wsgi.url_scheme"] == "http"
    assert report["wsgi.multithread"] is (worker == "thread")
    assert isinstance(report["wsgi.multiprocess"], bool)
    assert report["wsgi.run_once"] is False
    assert report["has_file_wrapper"] is True
    chunked = app.post("/env", data=blocks(b"abc"), headers={"Content-Type": "text/plain"}).json()
    assert "CONTENT_LENGTH" not in chunked
    assert chunked["HTTP_TRANSFER_ENCODING"] == "chunked"
    assert chunked["wsgi.input_terminated"] is True

    body = b"line one\n" + b"a longer second line, over seven bytes\n" * 300 + b"\nno newline at the end"
    for how in ("read", "all", "readline", "readline-size", "readlines", "iter"):
        answer = app.post(f"/echo?how={how}", data=body)
        assert (how, answer.status_code, answer.content == body) == (how, 200, True)
        if how != "all":  # read(CONTENT_LENGTH) needs one
            answer = app.post(f"/echo?how={how}", data=blocks(body, 1000))
            assert (how, "chunked", answer.content == body) == (how, "chunked", True)
    empty = app.post("/echo?how=read", data=b"")
    assert (empty.status_code, empty.content) == (200, b"")

    answer = app.get("/stream?n=3")
    assert [line.split(" made at ")[0] for line in answer.text.splitlines()] == [
        f"chunk {n} of 3" for n in range(3)
    ]
    assert app.get("/closing?token=done&n=3").text == "line 0 of 3\nline 1 of 3\nline 2 of 3\n"
    wait_for(lambda: (app.marks / "closed-done").exists())
    assert app.get("/file").content == app.served.read_bytes()
    head = requests.head(app.url + "/sized?size=1000", timeout=TIMEOUT)
    assert (head.status_code, head.headers["Content-Length"], head.content) == (200, "1000", b"")
    head = requests.head(app.url + "/stream?n=2", timeout=TIMEOUT)
    assert (head.status_code, head.content) == (200, b"")
    assert app.get("/sized?size=1000").content == b"s" * 1000
    assert app.get("/write").text == "written with write()\n"
    assert app.get("/nowhere").status_code == 404
    assert_log_clean(app)


@worker_classes
def test_close_is_called_when_the_client_goes_away(serve_app: Callable[..., App], worker: str) -> None:
    """PEP 3333: the server calls the iterable's close() however the request ends."""
    app = serve_app(VALIDATED, worker)
    with socket.create_connection((app.host, app.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /closing?token=gone&n=500&delay=0.01 HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while b"line 0 of 500" not in received:
            piece = sock.recv(65536)
            assert piece, received
            received += piece
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close: a reset
    wait_for(lambda: (app.marks / "closed-gone").exists(), timeout=10)
    assert app.get("/sized?size=2").content == b"ss"  # and the worker serves on
    assert "garbage collected without being closed" not in app.server.log
    assert "AssertionError" not in app.server.log


def test_apps_import_without_a_server() -> None:
    """The app modules import in a plain interpreter (what the workers do first)."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import tests.wsgi_apps.flask_app, tests.wsgi_apps.django_app, tests.wsgi_apps.validated",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


# --- found with these apps: pipelining, a second Date, a HEAD's false length (all fixed) ---


def test_pipelined_requests_are_all_answered(serve_app: Callable[..., App]) -> None:
    """Requests sent in one write are answered in order, the last one too."""
    app = serve_app(VALIDATED, "thread")
    requests_text = b"".join(
        b"GET /sized?size=%d HTTP/1.1\r\nHost: x\r\n%s\r\n"
        % (size, b"Connection: close\r\n" if size == 3 else b"")
        for size in (1, 2, 3)
    )
    received = b""
    with socket.create_connection((app.host, app.port), timeout=TIMEOUT) as sock:
        sock.sendall(requests_text)
        while piece := sock.recv(65536):
            received += piece
    bodies = [part.partition(b"\r\n\r\n")[2] for part in received.split(b"HTTP/1.1 ")[1:]]
    assert bodies == [b"s", b"ss", b"sss"], received


@worker_classes
def test_a_date_from_the_app_is_not_repeated(serve_app: Callable[..., App], worker: str) -> None:
    app = serve_app(FLASK, worker)
    conn = app.connection()
    try:
        conn.request("GET", "/file")
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    assert len(response.msg.get_all("Date") or []) == 1, response.msg.items()


@worker_classes
def test_head_of_a_streamed_response_says_no_false_length(serve_app: Callable[..., App], worker: str) -> None:
    app = serve_app(FLASK, worker)
    length = len(app.get("/stream?n=3").content)
    head = requests.head(app.url + "/stream?n=3", timeout=TIMEOUT)
    assert head.status_code == 200
    assert head.headers.get("Content-Length") in (None, str(length)), head.headers
