"""The ``thread`` worker class: a bounded pool of threads in each worker (as gunicorn's gthread).

Servers run through the API (``serving()``, the master in a thread of this process) or the CLI
(``serve_cli``, for signals to the master); workers are real processes on loopback, port 0.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import psutil
import pytest

from prefork import PreforkHTTPServer, PreforkTCPServer
from prefork.figures import WorkerState, WorkerStats
from prefork.workers import ThreadWorker
from prefork.workers.waiting import ACCEPT_WAITS
from tests.conftest import CLIServer, address, request_line, wait_for
from tests.handlers import CrashHandler, PidEchoHandler, SlowHandler
from tests.test_server import serving, worker_pids

Serve = Callable[..., CLIServer]


def at_once(send: Callable[[], bytes], count: int) -> tuple[list[bytes], float]:
    """Call ``send()`` from ``count`` threads at once; the answers and the seconds it took."""
    answers: list[bytes] = []
    threads = [threading.Thread(target=lambda: answers.append(send())) for _ in range(count)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert len(answers) == count, answers
    return answers, time.monotonic() - start


def slow(to: tuple[str, int], seconds: float) -> Callable[[], bytes]:
    return lambda: request_line(to, f"{seconds}\n".encode(), timeout=10)


@pytest.fixture(params=ACCEPT_WAITS)
def accept_wait(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each way of waiting for the listening sockets in turn, for the thread workers this test
    forks (the class attribute, inherited by the fork)."""
    monkeypatch.setattr(ThreadWorker, "accept_wait", request.param)
    return str(request.param)


def busy_slot(server: PreforkTCPServer) -> WorkerStats:
    """Wait until a worker of ``server`` has a request in flight; its scoreboard slot."""
    assert server.scoreboard is not None
    slots = server.scoreboard.slots
    busy: list[WorkerStats] = wait_for(lambda: [s for s in slots() if s.state is WorkerState.BUSY])
    return busy[0]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far."""
    user, system = psutil.Process(pid).cpu_times()[:2]
    return float(user + system)


def exited(pid: int) -> bool:
    """Process ``pid`` is gone (or a zombie)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_one_worker_serves_as_many_slow_requests_at_once_as_it_has_threads() -> None:
    server = PreforkTCPServer(("127.0.0.1", 0), SlowHandler, workers=1, worker_class="thread", threads=4)
    with serving(server, workers=1):
        (pid,) = worker_pids()
        answers, elapsed = at_once(slow(address(server), 0.6), 4)
    assert answers == [f"done {pid}\n".encode()] * 4
    assert elapsed < 1.5  # about 0.6 s, not 4 x 0.6 s


def test_a_worker_with_every_thread_busy_leaves_the_next_request_to_another_worker() -> None:
    server = PreforkTCPServer(("127.0.0.1", 0), SlowHandler, workers=2, worker_class="thread", threads=2)
    with serving(server, workers=2):
        answers, elapsed = at_once(slow(address(server), 0.6), 4)
        per_worker = Counter(answer.split()[1] for answer in answers)
        assert sorted(per_worker.values()) == [2, 2]  # never 3 on a worker with 2 threads
        assert elapsed < 1.5
        answers, elapsed = at_once(slow(address(server), 0.6), 5)
        assert max(Counter(answer.split()[1] for answer in answers).values()) == 3
        assert 1.1 < elapsed < 2.5  # the 5th waited for a free thread: 2 x 0.6 s, not 3 x


def test_a_worker_with_every_thread_busy_leaves_a_waiting_connection_alone_until_one_is_free(
    accept_wait: str,
) -> None:
    server = PreforkTCPServer(("127.0.0.1", 0), SlowHandler, workers=1, worker_class="thread", threads=1)
    with serving(server, workers=1):
        (pid,) = worker_pids()
        held = threading.Thread(target=slow(address(server), 1.0))
        held.start()
        busy_slot(server)
        with socket.create_connection(address(server), timeout=5) as waiting:
            waiting.sendall(b"0\n")  # in the backlog: the listening socket stays readable
            before = cpu_seconds(pid)
            time.sleep(0.5)
            assert cpu_seconds(pid) - before < 0.1  # the worker does not spin on it
            assert waiting.makefile("rb").readline() == f"done {pid}\n".encode()  # thread free
        held.join(5)


def test_the_next_connection_goes_to_the_worker_with_a_thread_free(accept_wait: str) -> None:
    server = PreforkTCPServer(("127.0.0.1", 0), SlowHandler, workers=2, worker_class="thread", threads=1)
    with serving(server, workers=2):
        answers: list[bytes] = []
        held = threading.Thread(target=lambda: answers.append(slow(address(server), 2.0)()))
        held.start()
        busy = busy_slot(server).pid
        (other,) = worker_pids() - {busy}
        for _ in range(3):
            start = time.monotonic()
            assert slow(address(server), 0)() == f"done {other}\n".encode()
            assert time.monotonic() - start < 1  # not left waiting for the busy worker
        held.join(5)
        assert answers == [f"done {busy}\n".encode()]


class KeepAliveHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 (keep-alive): GET -> ``PID CLIENT_PORT``."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = f"{os.getpid()} {self.client_address[1]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def get(conn: http.client.HTTPConnection) -> bytes:
    conn.request("GET", "/")
    response = conn.getresponse()
    assert response.status == 200
    return response.read()


def test_keep_alive_connections_each_hold_a_thread_of_one_worker() -> None:
    server = PreforkHTTPServer(
        ("127.0.0.1", 0), KeepAliveHandler, workers=1, worker_class="thread", threads=2
    )
    with serving(server, workers=1):
        (pid,) = worker_pids()
        first, second, third = (http.client.HTTPConnection(*address(server), timeout=5) for _ in range(3))
        try:
            for conn in (first, second):
                answers = {get(conn) for _ in range(3)}
                assert answers == {f"{pid} {conn.sock.getsockname()[1]}".encode()}  # one connection
            assert {get(first), get(second)} == {  # both still open, served side by side
                f"{pid} {first.sock.getsockname()[1]}".encode(),
                f"{pid} {second.sock.getsockname()[1]}".encode(),
            }
            third.timeout = 0.5
            third.connect()
            third.sock.settimeout(0.5)
            third.request("GET", "/")
            try:  # both threads are held by open connections: the third waits in the backlog
                third.getresponse()
                raise AssertionError("a third connection was served by a worker with 2 threads")
            except TimeoutError:
                pass
            first.close()
            third.sock.settimeout(5)
            response = third.getresponse()
            assert response.read() == f"{pid} {third.sock.getsockname()[1]}".encode()
        finally:
            for conn in (first, second, third):
                conn.close()


def test_a_handler_exception_is_logged_in_its_thread_and_the_worker_goes_on(tmp_path: Path) -> None:
    errors = tmp_path / "errors"

    class Recording(PreforkTCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            with errors.open("a") as f:
                f.write(f"{os.getpid()} {threading.current_thread().name}\n")

    server = Recording(("127.0.0.1", 0), CrashHandler, workers=1, worker_class="thread", threads=2)
    with serving(server, workers=1):
        (pid,) = worker_pids()
        for _ in range(3):  # more failures than threads: no thread died of one
            assert request_line(address(server), b"raise\n") == b""
        wait_for(lambda: errors.exists() and len(errors.read_text().splitlines()) == 3)
        for line in errors.read_text().splitlines():
            assert line.startswith(f"{pid} prefork-worker-0-thread-")
        assert request_line(address(server), b"fine\n") == f"{pid} ok\n".encode()
        assert worker_pids() == {pid}


def test_system_exit_in_a_handler_thread_makes_the_worker_exit_and_be_replaced() -> None:
    server = PreforkTCPServer(("127.0.0.1", 0), CrashHandler, workers=1, worker_class="thread", threads=2)
    with serving(server, workers=1):
        (pid,) = worker_pids()
        assert request_line(address(server), b"sysexit\n") == b""
        (new,) = wait_for(lambda: (pids := worker_pids()) and pid not in pids and pids)
        assert request_line(address(server), b"fine\n") == f"{new} ok\n".encode()


def test_term_lets_the_requests_in_flight_finish(serve_cli: Serve) -> None:
    server = serve_cli("tests.handlers:SlowHandler", "-w", "1", "-k", "thread", "--threads", "3")
    (pid,) = server.wait_workers(1)
    answers: list[bytes] = []
    clients = [threading.Thread(target=lambda: answers.append(slow(server.address, 0.8)())) for _ in range(3)]
    for client in clients:
        client.start()
    time.sleep(0.3)  # all three are in flight
    server.signal(signal.SIGTERM)
    for client in clients:
        client.join(10)
    assert answers == [f"done {pid}\n".encode()] * 3
    assert server.wait() == 0


def test_when_the_master_dies_a_thread_worker_finishes_its_requests_within_graceful_timeout(
    serve_cli: Serve,
) -> None:
    flags = ["-w", "1", "-k", "thread", "--threads", "2", "--graceful-timeout", "1"]
    server = serve_cli("tests.handlers:SlowHandler", *flags)
    (pid,) = server.wait_workers(1)
    answers: dict[float, bytes] = {}

    def ask(seconds: float) -> None:
        answers[seconds] = slow(server.address, seconds)()

    clients = [threading.Thread(target=ask, args=(seconds,)) for seconds in (0.6, 5.0)]
    for client in clients:
        client.start()
    time.sleep(0.3)  # both are in flight
    os.kill(server.pid, signal.SIGKILL)
    server.wait(5)
    start = time.monotonic()
    for client in clients:
        client.join(10)
    assert answers == {0.6: f"done {pid}\n".encode(), 5.0: b""}  # cut off after graceful_timeout
    assert time.monotonic() - start < 3
    wait_for(lambda: exited(pid))
    server.wait_logged("the master died; exiting")  # the log's reader may lag the exit
    server.wait_logged("1 requests still in flight after graceful_timeout")


def test_request_timeout_aborts_the_worker_of_a_hung_thread(serve_cli: Serve) -> None:
    flags = ["-w", "1", "--worker-class", "thread", "--threads", "2", "--timeout", "0.5"]
    server = serve_cli("tests/handlers.py:HangHandler", *flags)
    (pid,) = server.wait_workers(1)
    with socket.create_connection(server.address) as client:
        client.settimeout(5)
        client.sendall(b"hang\n")
        time.sleep(0.1)
        assert request_line(server.address, b"ok\n") == f"{pid} ok\n".encode()  # the other thread
        start = time.monotonic()
        assert client.recv(100) == b""
        assert time.monotonic() - start < 2
    wait_for(lambda: "after the request timeout; replacing it" in server.log)
    assert "in hang_forever" in server.log  # the hung thread's stack
    (new,) = server.wait_workers(1)
    assert new != pid
    assert request_line(server.address, b"ok\n") == f"{new} ok\n".encode()


def test_the_scoreboard_is_busy_while_a_request_is_in_flight_and_counts_them() -> None:
    server = PreforkTCPServer(("127.0.0.1", 0), SlowHandler, workers=1, worker_class="thread", threads=3)
    with serving(server, workers=1):
        scoreboard = server.scoreboard
        assert scoreboard is not None
        (slot,) = scoreboard.slots()
        assert slot.state is WorkerState.IDLE
        clients = [threading.Thread(target=slow(address(server), s)) for s in (0.6, 1.2)]
        for client in clients:
            client.start()
        busy = wait_for(lambda: [s for s in scoreboard.slots() if s.state is WorkerState.BUSY])
        assert busy[0].request_started > 0
        time.sleep(0.8)  # the first finished, the second is still in flight
        (slot,) = scoreboard.slots()
        assert slot.state is WorkerState.BUSY
        assert slot.busy_for() > 0
        for client in clients:
            client.join(10)
        (slot,) = wait_for(lambda: [s for s in scoreboard.slots() if s.state is WorkerState.IDLE])
        assert slot.requests == 2
        assert slot.request_started == 0.0


def test_max_requests_recycles_a_thread_worker() -> None:
    server = PreforkTCPServer(
        ("127.0.0.1", 0), PidEchoHandler, workers=1, worker_class="thread", threads=2, max_requests=3
    )
    with serving(server, workers=1):
        pids = [request_line(address(server), b"r\n").split()[0] for _ in range(7)]
    assert pids[0] == pids[1] == pids[2] != pids[3]
    assert pids[3] == pids[4] == pids[5] != pids[6]


def test_cli_thread_worker_class(serve_cli: Serve) -> None:
    server = serve_cli("tests.handlers:PidEchoHandler", "-k", "thread", "--threads", "3", "-w", "2")
    pids = server.wait_workers(2)
    assert "2 thread workers" in server.log
    answer = request_line(server.address, b"hi\n")
    assert int(answer.split()[0]) in pids
    assert answer.endswith(b" hi\n")
