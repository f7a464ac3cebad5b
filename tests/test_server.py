"""The socketserver contract of PreforkMixIn and the Prefork*Server classes, through the API.

Each server runs in this process: ``serve_forever()`` in a thread (so also from a non-main
thread, where no signal handlers are installed) and ``shutdown()`` from the test's thread.
Workers are real forked processes serving real loopback or Unix sockets.
"""

from __future__ import annotations

import http.client
import itertools
import os
import signal
import socket
import socketserver
import ssl
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
import setproctitle
import trustme

from prefork import (
    PreforkHTTPServer,
    PreforkMixIn,
    PreforkTCPServer,
    PreforkUDPServer,
    PreforkUnixDatagramServer,
    PreforkUnixHTTPServer,
    PreforkUnixStreamServer,
    WorkerBootError,
    config,
    sockets,
)
from prefork.workers import SyncWorker
from tests.conftest import address, live_children, request_line, wait_for
from tests.handlers import CrashHandler, HelloHTTPHandler, PidDatagramHandler, PidEchoHandler


def worker_pids() -> set[int]:
    """Live worker processes of this (the master) process."""
    kids = live_children(os.getpid())
    titles = {k.pid: " ".join(k.cmdline()).strip() for k in kids}
    return {
        pid for pid, title in titles.items() if "prefork: worker" in title and not title.endswith("booting")
    }


@contextmanager
def serving(server: PreforkMixIn, workers: int | None = None) -> Iterator[PreforkMixIn]:
    """Run ``server.serve_forever()`` in a thread until the block ends, then shut it down."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        if workers is not None:
            wait_for(lambda: len(worker_pids()) == workers)
        yield server
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
        assert not thread.is_alive()


def concurrent_pids(send: Callable[[], bytes], count: int = 4) -> set[bytes]:
    """Call ``send()`` (returns ``b"PID ..."``) from ``count`` threads at once; the pids that
    answered. Each request holds its worker 0.2 s, so an idle worker must take the next one."""
    answers: list[bytes] = []
    threads = [threading.Thread(target=lambda: answers.append(send())) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(answers) == count
    return {answer.split()[0] for answer in answers}


def test_tcp_stream_handler_served_by_several_workers() -> None:
    server = PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler, workers=2)
    with serving(server, workers=2):
        answer = request_line(address(server), b"hello\n")
        assert answer.split(b" ", 1)[1] == b"hello\n"
        pids = concurrent_pids(lambda: request_line(address(server), b"sleep 0.2\n"))
        assert len(pids) == 2
        assert {int(p) for p in pids} <= worker_pids()


def test_tcp_base_request_handler() -> None:
    class Raw(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data = self.request.recv(1024)
            self.request.sendall(f"{os.getpid()} ".encode() + data.upper())

    server = PreforkTCPServer(("127.0.0.1", 0), Raw, workers=2)
    with serving(server, workers=2):
        answer = request_line(address(server), b"raw bytes\n")
        assert answer.split(b" ", 1)[1] == b"RAW BYTES\n"
        assert int(answer.split()[0]) in worker_pids()


def test_udp_datagram_handler() -> None:
    server = PreforkUDPServer(("127.0.0.1", 0), PidDatagramHandler, workers=2)
    with serving(server, workers=2):

        def send(data: bytes = b"sleep 0.2") -> bytes:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.settimeout(5)
                client.sendto(data, server.server_address)
                return client.recvfrom(1024)[0]

        assert send(b"ping").endswith(b" ping")
        assert len(concurrent_pids(send)) == 2


def test_unix_stream_server(unix_path: str) -> None:
    server = PreforkUnixStreamServer(unix_path, PidEchoHandler, workers=2)
    with serving(server, workers=2):
        assert request_line(unix_path, b"over unix\n").endswith(b" over unix\n")


def test_http_on_a_unix_socket_serves_base_http_request_handlers(unix_path: str) -> None:
    class Logging(HelloHTTPHandler):
        def do_GET(self) -> None:
            self.log_message("%s", "logged")  # BaseHTTPRequestHandler's: uses client_address[0]
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            assert self.address_string() == "unix"

    server = PreforkUnixHTTPServer(unix_path, Logging, workers=1, allow="10.0.0.0/8")
    with serving(server, workers=1):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(unix_path)
            sock.sendall(b"GET /x HTTP/1.0\r\nHost: localhost\r\n\r\n")
            reply = sock.makefile("rb").read()
    assert reply.startswith(b"HTTP/1.0 200 "), reply  # allow does not apply to Unix clients
    assert reply.endswith(b"\n")


def test_unix_datagram_server(unix_path: str, tmp_path: Path) -> None:
    server = PreforkUnixDatagramServer(unix_path, PidDatagramHandler, workers=2)
    client_path = unix_path + ".client"
    with serving(server, workers=2), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.bind(client_path)  # a Unix datagram client needs an address to get the reply
        client.settimeout(5)
        try:
            client.sendto(b"dgram", unix_path)
            assert client.recv(1024).endswith(b" dgram")
        finally:
            os.unlink(client_path)


def test_http_server_with_base_http_request_handler() -> None:
    server = PreforkHTTPServer(("127.0.0.1", 0), HelloHTTPHandler, workers=2)
    with serving(server, workers=2):

        def get() -> bytes:
            conn = http.client.HTTPConnection(*address(server), timeout=5)
            try:
                conn.request("GET", "/?sleep=0.2")
                response = conn.getresponse()
                assert response.status == 200
                return response.read().split(b" ", 1)[1]
            finally:
                conn.close()

        assert len(concurrent_pids(get)) == 2


def test_verify_request_false_closes_without_processing() -> None:
    class Refusing(PreforkTCPServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            return False

    server = Refusing(("127.0.0.1", 0), PidEchoHandler, workers=1)
    with serving(server, workers=1):
        assert request_line(address(server), b"hi\n") == b""  # closed, nothing written


class RefusingBase(socketserver.TCPServer):
    def verify_request(self, request: Any, client_address: Any) -> bool:
        return False


def test_verify_request_of_a_base_class_after_the_mixin_is_still_called() -> None:
    """The workers skip verify_request() only where it is trivially True: an override in
    a server base class to the right of the mixin is called."""

    class Refusing(PreforkMixIn, RefusingBase):
        pass

    server = Refusing(("127.0.0.1", 0), PidEchoHandler, workers=1)
    with serving(server, workers=1):
        assert request_line(address(server), b"hi\n") == b""


def test_verify_request_set_on_the_instance_or_networks_set_in_post_fork_are_applied() -> None:
    """socketserver calls an instance's own verify_request; allow and deny may be set in
    post_fork(): the worker decides whether to skip the call only after post_fork()."""
    server = PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler, workers=1)
    server.verify_request = lambda request, client_address: False  # type: ignore[method-assign]
    with serving(server, workers=1):
        assert request_line(address(server), b"hi\n") == b""

    class DenyingAfterFork(PreforkTCPServer):
        def post_fork(self, worker: Any) -> None:
            self.deny = config.DENY.validate("127.0.0.0/8")

    server = DenyingAfterFork(("127.0.0.1", 0), PidEchoHandler, workers=1)
    with serving(server, workers=1):
        assert request_line(address(server), b"hi\n") == b""


def test_verify_request_is_trivial_only_without_networks_or_overrides() -> None:
    class Refusing(PreforkMixIn, RefusingBase):
        pass

    class Overriding(PreforkTCPServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            return True

    with PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler) as plain:
        assert plain.verify_request_is_trivial()
        plain.deny = config.DENY.validate("10.0.0.0/8")
        assert not plain.verify_request_is_trivial()
    for cls in (Refusing, Overriding):
        with cls(("127.0.0.1", 0), PidEchoHandler) as server:
            assert not server.verify_request_is_trivial(), cls


def test_an_extended_process_request_is_still_called(tmp_path: Path) -> None:
    """The workers call the worker class's process_request() themselves only where the
    server's is the mixin's: an extension (calling super()) in the class or on the
    instance still runs, in the worker."""
    marks = tmp_path / "marks"

    class Extending(PreforkTCPServer):
        def process_request(self, request: Any, client_address: Any) -> None:
            with open(marks, "a") as out:
                out.write(f"{os.getpid()}\n")
            super().process_request(request, client_address)

    with PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler) as plain:
        assert plain.process_request_is_plain()
    server = Extending(("127.0.0.1", 0), PidEchoHandler, workers=1)
    assert not server.process_request_is_plain()
    with serving(server, workers=1):
        pid = request_line(address(server), b"hi\n").split()[0]
    assert marks.read_text().split() == [pid.decode()]


def test_handle_error_runs_in_the_worker_which_keeps_serving(tmp_path: Path) -> None:
    errors = tmp_path / "errors"

    class Recording(PreforkTCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            with errors.open("a") as f:
                f.write(f"{os.getpid()}\n")

    server = Recording(("127.0.0.1", 0), CrashHandler, workers=1)
    with serving(server, workers=1):
        (worker,) = worker_pids()
        assert request_line(address(server), b"raise\n") == b""
        wait_for(errors.exists)
        assert errors.read_text() == f"{worker}\n"
        assert request_line(address(server), b"fine\n") == f"{worker} ok\n".encode()


def test_handle_request_forks_one_child_like_forking_mixin() -> None:
    with PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler) as server:
        result: list[bytes] = []
        client = threading.Thread(target=lambda: result.append(request_line(address(server), b"once\n")))
        client.start()
        server.timeout = 5
        server.handle_request()
        client.join(5)
        pid = int(result[0].split()[0])
        assert pid != os.getpid()
        assert result[0].endswith(b" once\n")
    # server_close() waited for the child: it is neither running nor a zombie
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_handle_request_system_exit_stays_in_the_child() -> None:
    class Exiting(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            raise SystemExit(5)

    with PreforkTCPServer(("127.0.0.1", 0), Exiting) as server:
        client = threading.Thread(target=request_line, args=(server.server_address, b"x\n"))
        client.start()
        server.timeout = 5
        server.handle_request()  # SystemExit never reaches the master
        client.join(5)


def test_shutdown_from_another_thread_stops_every_worker() -> None:
    server = PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler, workers=3)
    with serving(server, workers=3):
        pids = worker_pids()
    assert not worker_pids()
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaped: no zombie


def test_serve_forever_can_run_again_after_shutdown() -> None:
    server = PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler, workers=1)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    wait_for(lambda: len(worker_pids()) == 1)
    server.shutdown()
    thread.join(10)
    with serving(server, workers=1):
        assert request_line(address(server), b"again\n").endswith(b" again\n")


def test_server_close_stops_a_running_pool_and_closes_the_socket() -> None:
    server = PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler, workers=2)
    closed_address = address(server)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    wait_for(lambda: len(worker_pids()) == 2)
    server.server_close()
    thread.join(10)
    assert not thread.is_alive()
    assert not worker_pids()
    assert server.socket.fileno() == -1
    with pytest.raises(ConnectionRefusedError), socket.create_connection(closed_address, timeout=2):
        pass


def test_context_manager_closes_the_server() -> None:
    with PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler) as server:
        assert server.socket.fileno() >= 0
    assert server.socket.fileno() == -1


def test_settings_are_class_attributes_overridden_per_instance() -> None:
    class Four(PreforkTCPServer):
        workers = 4
        graceful_timeout = 5.0

    with (
        Four(("127.0.0.1", 0), PidEchoHandler) as default,
        Four(("127.0.0.1", 0), PidEchoHandler, workers=2, proc_name="mine") as custom,
    ):
        assert (default.workers, default.graceful_timeout, default.proc_name) == (4, 5.0, None)
        assert (custom.workers, custom.graceful_timeout, custom.proc_name) == (2, 5.0, "mine")
        assert default.request_queue_size == 2048  # a production backlog, not socketserver's 5
        assert default.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)


@pytest.mark.parametrize(
    ("setting", "value"),
    [("workers", 0), ("workers", "many"), ("graceful_timeout", -1), ("worker_class", "nope")],
)
def test_bad_setting_raises_value_error_before_binding(setting: str, value: Any) -> None:
    with pytest.raises(ValueError, match=setting):
        PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler, **{setting: value})


def test_bad_class_attribute_raises_from_serve_forever() -> None:
    class Broken(PreforkTCPServer):
        workers = -3

    with Broken(("127.0.0.1", 0), PidEchoHandler) as server, pytest.raises(ValueError, match="workers"):
        server.serve_forever()


def test_process_titles_name_master_and_workers() -> None:
    before = setproctitle.getproctitle()
    server = PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler, workers=2, proc_name="titles")
    with serving(server, workers=2):
        titles = sorted(" ".join(psutil.Process(p).cmdline()).strip() for p in worker_pids())
        assert titles == ["prefork: worker 0 [titles]", "prefork: worker 1 [titles]"]
        assert setproctitle.getproctitle().strip() == "prefork: master [titles]"
    assert setproctitle.getproctitle() == before  # the embedding program's title is back


def test_post_fork_runs_in_each_worker(tmp_path: Path) -> None:
    class Hooked(PreforkTCPServer):
        def post_fork(self, worker: Any) -> None:
            (tmp_path / f"{worker.number}-{os.getpid()}").touch()

    server = Hooked(("127.0.0.1", 0), PidEchoHandler, workers=2)
    with serving(server, workers=2):
        pids = worker_pids()
        wait_for(lambda: len(list(tmp_path.iterdir())) == 2)
        assert {int(p.name.split("-")[1]) for p in tmp_path.iterdir()} == pids


def test_boot_failure_loop_stops_the_pool_and_raises() -> None:
    class FailsToBoot(PreforkTCPServer):
        def post_fork(self, worker: Any) -> None:
            raise RuntimeError("cannot open the database")

    with FailsToBoot(("127.0.0.1", 0), PidEchoHandler, workers=3) as server:
        with pytest.raises(WorkerBootError, match="5 times in a row: RuntimeError: cannot open the database"):
            server.serve_forever(poll_interval=0.1)
    assert not worker_pids()


def test_handle_request_after_serve_forever_waits_for_a_request_again() -> None:
    server = PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler, workers=1)
    with serving(server, workers=1):
        pass
    try:
        assert server.socket.gettimeout() is None  # blocking again, as socketserver left it
    finally:
        server.server_close()


def test_other_children_of_the_process_are_not_reaped() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(42)
    server = PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler, workers=1)
    with serving(server, workers=1):
        request_line(address(server), b"x\n")
    _, status = os.waitpid(pid, 0)  # still ours to reap, with its status
    assert os.waitstatus_to_exitcode(status) == 42


def test_deny_and_allow_close_refused_clients_unprocessed_and_count_them() -> None:
    server = PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler, workers=1, deny=["127.0.0.2/32"])
    other = PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler, workers=1, allow="10.0.0.0/8,::1")
    with serving(server, workers=1):
        assert request_line(address(server), b"in\n").endswith(b" in\n")
        with socket.create_connection(address(server), source_address=("127.0.0.2", 0)) as client:
            client.sendall(b"out\n")
            assert client.recv(100) == b""  # closed unprocessed
        assert server.scoreboard is not None
        wait_for(lambda: [s.denied for s in server.scoreboard.slots()] == [1])  # type: ignore[union-attr]
    with serving(other, workers=1):
        assert request_line(address(other), b"out\n") == b""


def test_socket_timeout_frees_a_worker_from_a_silent_client() -> None:
    server = PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler, workers=1, socket_timeout=0.3)
    with serving(server, workers=1), socket.create_connection(address(server)) as silent:
        time.sleep(0.1)  # the only worker is now reading from the silent client
        start = time.monotonic()
        assert request_line(address(server), b"next\n").endswith(b" next\n")
        assert time.monotonic() - start < 2
        assert silent.recv(100) == b""


def test_unix_socket_mode_is_applied_after_binding(unix_path: str) -> None:
    server = PreforkUnixStreamServer(unix_path, PidEchoHandler, workers=1, unix_socket_mode="600")
    try:
        assert stat.S_IMODE(os.stat(unix_path).st_mode) == 0o600
    finally:
        server.server_close()


def test_an_inherited_listening_socket_is_adopted_instead_of_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    monkeypatch.setenv(sockets.INHERITED_FDS_ENV, f"{os.getpid()}:{listener.fileno()}")
    server = PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler, workers=1)
    listener.detach()  # the server owns the descriptor now
    assert os.environ[sockets.INHERITED_FDS_ENV] == f"{os.getpid()}:"
    with serving(server, workers=1):
        assert server.server_address == server.socket.getsockname()
        assert request_line(address(server), b"adopted\n").endswith(b" adopted\n")


def test_max_requests_with_jitter_recycles_workers() -> None:
    server = PreforkTCPServer(
        ("127.0.0.1", 0), PidEchoHandler, workers=1, max_requests=3, max_requests_jitter=2
    )
    with serving(server, workers=1):
        pids = [request_line(address(server), b"r\n").split()[0] for _ in range(12)]
    runs = [len(list(group)) for _, group in itertools.groupby(pids)]
    assert len(runs) >= 3
    assert all(3 <= run <= 5 for run in runs[:-1]), runs


def test_pidfile_and_umask_while_serving(tmp_path: Path) -> None:
    pidfile = tmp_path / "master.pid"
    server = PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler, workers=1, pidfile=str(pidfile), umask=0o027)
    before = os.umask(0o022)
    try:
        with serving(server, workers=1):
            assert pidfile.read_text() == f"{os.getpid()}\n"
            assert os.umask(0o027) == 0o027
    finally:
        os.umask(before)
    assert not pidfile.exists()


class SettingsHandler(socketserver.StreamRequestHandler):
    """Answers with the type and value of every setting, as the worker's server holds them."""

    def handle(self) -> None:
        self.rfile.readline()
        held = {s.name: getattr(self.server, s.name) for s in config.SETTINGS}
        self.wfile.write(
            repr(sorted((name, type(v).__name__, v) for name, v in held.items())).encode() + b"\n"
        )


def test_settings_given_as_class_attribute_strings_are_converted_for_the_pool(tmp_path: Path) -> None:
    strings = {
        "workers": "2",
        "min_workers": "2",
        "max_workers": "3",
        "worker_class": "sync",
        "threads": "3",
        "accept": "shared",
        "graceful_timeout": "5",
        "shutdown_delay": "0",
        "request_timeout": "20",
        "max_requests": "1000",
        "max_requests_jitter": "5",
        "max_worker_memory": "512M",
        "gc_freeze": "off",
        "scoreboard_file": str(tmp_path / "scoreboard"),
        "request_queue_size": "64",
        "socket_timeout": "4",
        "read_min_rate": "1000",
        "read_deadline": "15",
        "defer_accept": "auto",
        "allow": "127.0.0.0/8,192.0.2.0/24,::1",  # 192.0.2.1: the client the PROXY header names
        "deny": "10.0.0.0/8",
        "unix_socket_mode": "600",
        "proc_name": "strings",
        "pidfile": str(tmp_path / "pid"),
        "user": str(os.getuid()),
        "group": str(os.getgid()),
        "umask": "022",
        "control_socket": str(tmp_path / "control.sock"),
        "metrics": "127.0.0.1:0",
        "log_format": "text",
        "access_log": str(tmp_path / "access.log"),
        "certfile": str(tmp_path / "cert.pem"),
        "keyfile": str(tmp_path / "key.pem"),
        "ca_certs": str(tmp_path / "ca.pem"),
        "cert_reqs": "optional",
        "ciphers": "ECDHE+AESGCM",
        "tls_min_version": "1.2",
        "proxy_protocol": "v1",
        "proxy_allow": "127.0.0.0/8",
        "keepalive": "3",
        "limit_request_line": "1000",
        "limit_request_fields": "20",
        "limit_request_field_size": "2000",
        "root_path": "/api/",
        "forwarded_allow_ips": "10.0.0.0/8",
        "forwarded_header": "forwarded",
    }
    assert set(strings) == {s.name for s in config.SETTINGS}, "a new setting needs a string form here"
    ca = trustme.CA()
    ca.cert_pem.write_to_path(strings["ca_certs"])
    issued = ca.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(strings["certfile"])
    issued.private_key_pem.write_to_path(strings["keyfile"])
    cls = type("StringSettingsServer", (PreforkTCPServer,), dict(strings))
    server = cls(("127.0.0.1", 0), SettingsHandler)
    with serving(server, workers=2):
        client = ssl.create_default_context()
        ca.configure_trust(client)
        with socket.create_connection(address(server), timeout=5) as raw:
            raw.sendall(b"PROXY TCP4 192.0.2.1 127.0.0.1 5000 80\r\n")
            with client.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
                conn.sendall(b"settings\n")
                answer = conn.makefile("rb").readline()  # served: the master did not crash
        expected = {s.name: s.validate(value) for s, value in ((s, strings[s.name]) for s in config.SETTINGS)}
        for name, value in expected.items():
            assert getattr(server, name) == value, name  # the master holds the converted values
        assert answer.decode().strip() == repr(
            sorted((name, type(v).__name__, v) for name, v in expected.items())
        )
        assert expected["max_worker_memory"] == 512 * 2**20 and expected["workers"] == 2


def test_a_worker_stops_on_term_even_when_its_python_handler_does_not_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CPython 3.13.0 sometimes leaves a worker's Python-level TERM handler uncalled (seen in
    workers forked by ``serve_forever()`` in a thread: ``shutdown()`` then waited the whole
    graceful_timeout); the signal's wake-up byte still arrives, and the worker acts on it."""
    monkeypatch.setattr(SyncWorker, "handle_term", lambda self, signum, frame: None)
    server = PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler, workers=2)
    with serving(server, workers=2):
        assert request_line(address(server), b"ping\n").endswith(b"ping\n")
        started = time.monotonic()  # serving() shuts the pool down on leaving
    assert time.monotonic() - started < 5.0  # not graceful_timeout (30 s)


# -- the ForkingMixIn contract -------------------------------------------------------------------


def test_active_children_are_the_pool_and_empty_after_server_close() -> None:
    server = PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler, workers=2)
    assert server.active_children == set()
    with serving(server, workers=2):
        assert server.active_children == worker_pids()
    assert server.active_children == set()


def test_handle_request_children_count_in_active_children_and_max_children_bounds_them() -> None:
    class Slow(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            time.sleep(0.5)

    with PreforkTCPServer(("127.0.0.1", 0), Slow) as server:
        assert (server.max_children, server.block_on_close) == (40, True)  # as ForkingMixIn's
        server.max_children = 1
        server.timeout = 5
        clients = [socket.create_connection(address(server), timeout=5) for _ in range(2)]
        server.handle_request()
        (first,) = server.active_children
        started = time.monotonic()
        server.handle_request()  # waits for the first child: at most 1 at once
        assert time.monotonic() - started >= 0.3
        assert first not in server.active_children and len(server.active_children) == 1
        for client in clients:
            client.close()
    assert server.active_children == set()


def test_timeout_is_forking_mixins_and_handle_request_times_out() -> None:
    assert PreforkTCPServer.timeout == socketserver.ForkingMixIn.timeout == 300
    timed_out: list[bool] = []

    class Waiting(PreforkTCPServer):
        def handle_timeout(self) -> None:
            timed_out.append(True)
            super().handle_timeout()

    with Waiting(("127.0.0.1", 0), PidEchoHandler) as server:
        server.timeout = 0.1
        server.handle_request()
    assert timed_out == [True]


def test_a_base_class_handle_error_is_not_shadowed_by_the_mixin(tmp_path: Path) -> None:
    errors = tmp_path / "errors"

    class Base(socketserver.TCPServer):
        allow_reuse_address = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            with errors.open("a") as f:
                f.write(f"{os.getpid()}\n")

    class Server(PreforkMixIn, Base):
        pass

    forking: Any = type("Forking", (socketserver.ForkingMixIn, Base), {})
    assert forking.handle_error is Base.handle_error  # what ForkingMixIn users get
    server = Server(("127.0.0.1", 0), CrashHandler, workers=1)
    with serving(server, workers=1):
        (worker,) = worker_pids()
        assert request_line(address(server), b"raise\n") == b""
        wait_for(errors.exists)
        assert errors.read_text() == f"{worker}\n"


def test_a_base_server_bind_without_a_socket_is_kept() -> None:
    """A server class whose own server_bind() binds no socket (a mock, as CPython's
    test_wsgiref has) still builds with the mixin in front."""

    class NoSocket(socketserver.BaseServer):
        def server_bind(self) -> None:
            self.bound = True

    class Server(PreforkMixIn, NoSocket):
        def __init__(self) -> None:
            super().__init__(("127.0.0.1", 0), PidEchoHandler)
            self.server_bind()

    assert Server().bound


@pytest.mark.timeout(30)
def test_a_stop_by_signal_ends_the_server_and_shutdown_does_not() -> None:
    """TERM (here to the test process, running serve_forever() in its main thread) closes the
    master's listening socket, so that connections are refused; serve_forever() then says so.
    shutdown() keeps it: the server serves again."""
    server = PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler, workers=1)
    with server:
        timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
        timer.start()
        server.serve_forever(poll_interval=0.05)  # returns once TERM has stopped the pool
        timer.join()
        assert server.socket.fileno() == -1
        with pytest.raises(ValueError, match="listening socket is closed"):
            server.serve_forever()
    server = PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler, workers=1)
    with server:
        for _ in range(2):
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
            thread.start()
            wait_for(lambda: len(worker_pids()) == 1)
            assert request_line(address(server), b"again\n").endswith(b" again\n")
            server.shutdown()
            thread.join(10)
            assert server.socket.fileno() != -1
