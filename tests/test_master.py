"""The master's supervision, through real ``python -m prefork`` processes and real signals."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable

import psutil
import pytest

from tests.conftest import CLIServer, request_line, wait_for

Serve = Callable[..., CLIServer]
ECHO = "tests/handlers.py:PidEchoHandler"


def replaced(server: CLIServer, old: set[int], count: int) -> set[int]:
    """Wait until ``count`` workers run and none of ``old`` is among them."""

    def done() -> set[int] | None:
        pids = server.worker_pids()
        return pids if len(pids) == count and not pids & old else None

    return set(wait_for(done))


def test_kill_9_of_a_worker_is_replaced(serve_cli: Serve) -> None:
    server = serve_cli(ECHO, "--workers", "2")
    pids = server.wait_workers(2)
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    after = replaced(server, {victim}, 2)
    assert pids - {victim} <= after
    assert request_line(server.address, b"still\n").endswith(b" still\n")
    assert "was killed by SIGKILL; replacing it" in server.log


@pytest.mark.parametrize(
    ("line", "how"),
    [(b"exit\n", "exited with status 7"), (b"sysexit\n", "status 9"), (b"segv\n", "was killed by SIGSEGV")],
)
def test_a_worker_that_dies_from_its_request_is_replaced(serve_cli: Serve, line: bytes, how: str) -> None:
    server = serve_cli("tests/handlers.py:CrashHandler", "--workers", "1")
    (before,) = server.wait_workers(1)
    assert request_line(server.address, line) == b""
    (after,) = replaced(server, {before}, 1)
    assert request_line(server.address, b"hi\n") == f"{after} ok\n".encode()
    assert how in server.log


def test_term_lets_the_request_in_flight_finish(serve_cli: Serve) -> None:
    server = serve_cli("tests/handlers.py:SlowHandler", "--workers", "1")
    server.wait_workers(1)
    answers: list[bytes] = []
    client = threading.Thread(target=lambda: answers.append(request_line(server.address, b"1.0\n")))
    client.start()
    time.sleep(0.3)  # the request is being processed
    server.signal(signal.SIGTERM)
    client.join(5)
    assert answers and answers[0].startswith(b"done ")
    assert server.wait(5) == 0


def test_term_stops_an_idle_pool_promptly(serve_cli: Serve) -> None:
    server = serve_cli(ECHO, "--workers", "3")
    pids = server.wait_workers(3)
    start = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait(5) == 0
    assert time.monotonic() - start < 2  # idle workers notice a stop at once (measured: ms)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)


def test_graceful_timeout_bounds_a_stuck_request(serve_cli: Serve) -> None:
    server = serve_cli("tests/handlers.py:SlowHandler", "--workers", "1", "--graceful-timeout", "0.5")
    server.wait_workers(1)
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(b"30\n")
        time.sleep(0.3)
        start = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.wait(5) == 0
        assert time.monotonic() - start < 3
        assert sock.recv(100) == b""  # cut off by SIGKILL after the graceful timeout
    assert "did not stop in time; killing it" in server.log


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT])
def test_int_and_quit_stop_at_once(serve_cli: Serve, sig: signal.Signals) -> None:
    server = serve_cli("tests/handlers.py:SlowHandler", "--workers", "2")
    server.wait_workers(2)
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(b"30\n")
        time.sleep(0.3)
        start = time.monotonic()
        server.signal(sig)
        assert server.wait(5) == 0
        assert time.monotonic() - start < 2


def test_hup_replaces_every_worker_and_refuses_no_request(serve_cli: Serve) -> None:
    server = serve_cli(ECHO, "--workers", "2")
    old = server.wait_workers(2)
    failures: list[BaseException] = []
    served = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal served
        while not stop.is_set():
            try:
                assert request_line(server.address, b"r\n").endswith(b" r\n")
                served += 1
            except (OSError, AssertionError) as exc:
                failures.append(exc)

    client = threading.Thread(target=load)
    client.start()
    try:
        time.sleep(0.2)
        server.signal(signal.SIGHUP)
        new = replaced(server, old, 2)
        time.sleep(0.2)
    finally:
        stop.set()
        client.join(10)
    assert failures == []
    assert served > 20
    assert not new & old
    assert "Received SIGHUP, reloading" in server.log


def test_ttin_and_ttou_resize_the_pool_never_below_one(serve_cli: Serve) -> None:
    server = serve_cli(ECHO, "--workers", "2")
    server.wait_workers(2)
    server.signal(signal.SIGTTIN)
    server.wait_workers(3)
    for _ in range(4):
        server.signal(signal.SIGTTOU)
        time.sleep(0.05)
    (last,) = server.wait_workers(1)
    titles = " ".join(psutil.Process(last).cmdline())
    assert "prefork: worker 0 " in titles  # TTOU retires the highest-numbered workers
    assert "the pool is at its minimum of 1 worker" in server.log
    assert request_line(server.address, b"one\n") == f"{last} one\n".encode()


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGUSR2])
def test_usr1_and_usr2_do_not_kill_the_master_yet(serve_cli: Serve, sig: signal.Signals) -> None:
    server = serve_cli(ECHO, "--workers", "1")
    (pid,) = server.wait_workers(1)
    server.signal(sig)
    wait_for(lambda: "not implemented yet; ignored" in server.log)
    assert server.proc.poll() is None
    assert request_line(server.address, b"up\n") == f"{pid} up\n".encode()


def test_workers_exit_within_a_second_when_the_master_is_killed(serve_cli: Serve) -> None:
    server = serve_cli(ECHO, "--workers", "2")
    pids = server.wait_workers(2)
    os.kill(server.pid, signal.SIGKILL)
    server.wait(5)

    def gone() -> bool:
        return not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)

    wait_for(gone, timeout=1.0)


def test_idle_workers_use_no_cpu(serve_cli: Serve) -> None:
    server = serve_cli(ECHO, "--workers", "2")
    procs = [psutil.Process(p) for p in server.wait_workers(2)]
    time.sleep(0.2)
    before = [sum(p.cpu_times()[:2]) for p in procs]
    time.sleep(1.0)
    after = [sum(p.cpu_times()[:2]) for p in procs]
    assert all(b - a < 0.02 for a, b in zip(before, after, strict=True))


def test_boot_failure_loop_exits_non_zero_naming_the_cause() -> None:
    code = (
        "import logging, prefork, tests.handlers as h\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "class S(prefork.PreforkTCPServer):\n"
        "    def post_fork(self, worker): raise ImportError('no module named app')\n"
        "S(('127.0.0.1', 0), h.PidEchoHandler, workers=2).serve_forever(0.1)\n"
    )
    import subprocess

    from tests.conftest import ROOT

    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "Workers failed to boot 5 times in a row: ImportError: no module named app" in done.stderr
    assert "retrying in 0.1 s" in done.stderr and "retrying in 0.8 s" in done.stderr
    assert "failed to boot (worker exited" not in done.stderr  # every round names the cause
