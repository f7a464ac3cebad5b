"""The master's supervision, through real ``python -m prefork`` processes and real signals."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.conftest import CLIServer, group_processes, request_line, wait_for

Serve = Callable[..., CLIServer]
ECHO = "tests/handlers.py:PidEchoHandler"


def replaced(server: CLIServer, old: set[int], count: int) -> set[int]:
    """Wait until ``count`` workers run and none of ``old`` is among them."""

    def done() -> set[int] | None:
        pids = server.worker_pids()
        return pids if len(pids) == count and not pids & old else None

    return set(wait_for(done))


@dataclass
class LoadResult:
    served: int = 0
    failures: list[BaseException] = field(default_factory=list)


@contextmanager
def load(address: tuple[str, int]) -> Iterator[LoadResult]:
    """Send one request after another to ``address`` from a thread, 0.2 s before the block
    and 0.2 s after it; count the answers and the failures."""
    result = LoadResult()
    stop = threading.Event()

    def send() -> None:
        while not stop.is_set():
            try:
                assert request_line(address, b"r\n").endswith(b" r\n")
                result.served += 1
            except (OSError, AssertionError) as exc:
                result.failures.append(exc)

    client = threading.Thread(target=send)
    client.start()
    try:
        time.sleep(0.2)
        yield result
        time.sleep(0.2)
    finally:
        stop.set()
        client.join(10)


def test_kill_9_of_a_worker_is_replaced(serve_cli: Serve) -> None:
    server = serve_cli(ECHO, "--workers", "2")
    pids = server.wait_workers(2)
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    after = replaced(server, {victim}, 2)
    assert pids - {victim} <= after
    assert request_line(server.address, b"still\n").endswith(b" still\n")
    server.wait_logged("was killed by SIGKILL; replacing it")


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
    server.wait_logged("did not stop in time; killing it")


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
    with load(server.address) as result:
        server.signal(signal.SIGHUP)
        new = replaced(server, old, 2)
    assert result.failures == []
    assert result.served > 20
    assert not new & old
    server.wait_logged("Received SIGHUP, reloading")


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
    server.wait_logged("the pool is at its minimum of 1 worker")
    assert request_line(server.address, b"one\n") == f"{last} one\n".encode()


def test_usr2_hands_the_sockets_to_a_new_master_and_refuses_no_request(serve_cli: Serve) -> None:
    server = serve_cli(ECHO, "--workers", "2")
    old_workers = server.wait_workers(2)
    address = server.address
    with load(address) as result:
        server.signal(signal.SIGUSR2)
        assert server.wait(15) == 0  # the old master retires once the new pool is ready
    masters = [p for p in group_processes(server.pid) if "prefork: master" in " ".join(p.cmdline())]
    assert len(masters) == 1 and masters[0].pid != server.pid
    new_workers = {p.pid for p in masters[0].children()}
    assert len(new_workers) == 2 and not new_workers & old_workers
    pid = int(request_line(address, b"x\n").split()[0])
    assert pid in new_workers
    assert result.failures == []
    assert result.served > 20
    server.wait_logged("Received SIGUSR2, upgrading")
    server.wait_logged(f"stopping the old master (pid {server.pid})")


def test_a_failed_upgrade_leaves_the_old_master_serving(serve_cli: Serve, tmp_path: Path) -> None:
    handler = tmp_path / "handler.py"
    handler.write_text("from tests.handlers import PidEchoHandler as Handler\n")
    server = serve_cli(str(handler), "--workers", "1", "--preload")
    (pid,) = server.wait_workers(1)
    handler.write_text("raise ImportError('broken on purpose')\n")
    server.signal(signal.SIGUSR2)
    wait_for(lambda: "before taking over; still serving" in server.log)
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


def test_after_a_kill_9_of_the_master_a_restart_binds_once_the_busy_worker_is_done(serve_cli: Serve) -> None:
    """The busy worker of a killed master holds the port until its request ends; the new
    master's bind is retried (5 tries, 1 s apart) and succeeds once the request is done."""
    server = serve_cli("tests.handlers:PidEchoHandler", "--workers", "2")
    server.wait_workers(2)
    host, port = server.address
    busy = socket.create_connection((host, port), timeout=10)
    busy.sendall(b"sleep 2.5\n")
    time.sleep(0.3)
    os.kill(server.pid, signal.SIGKILL)
    server.wait(5)
    restarted = serve_cli(
        "tests.handlers:PidEchoHandler", "--bind", f"{host}:{port}", "--workers", "1", wait=False
    )
    assert busy.makefile("rb").readline().endswith(b" sleep 2.5\n")  # the request in flight was served
    busy.close()
    restarted.wait_workers(1, timeout=15)
    assert request_line((host, port), b"again\n").endswith(b" again\n")
    assert "retrying in 1 s" in restarted.log


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


def test_request_timeout_aborts_a_hung_worker_with_its_stack_in_the_log(serve_cli: Serve) -> None:
    server = serve_cli("tests/handlers.py:HangHandler", "--workers", "2", "--timeout", "0.5")
    pids = server.wait_workers(2)
    with socket.create_connection(server.address) as client:
        client.sendall(b"hang\n")
        start = time.monotonic()
        assert client.recv(100) == b""
        elapsed = time.monotonic() - start
    assert 0.4 < elapsed < 1.5
    wait_for(lambda: len(server.worker_pids()) == 2 and len(server.worker_pids() - pids) == 1)
    wait_for(lambda: "was killed by SIGABRT after the request timeout; replacing it" in server.log)
    server.wait_logged("has been busy on one request for")
    server.wait_logged("Fatal Python error: Aborted")
    assert "in hang_forever" in server.log  # the frame where it hung
    assert request_line(server.address, b"ok\n").endswith(b" ok\n")


def test_idle_workers_are_not_killed_by_the_request_timeout(serve_cli: Serve) -> None:
    server = serve_cli(ECHO, "--workers", "1", "--timeout", "0.2")
    (pid,) = server.wait_workers(1)
    time.sleep(1.0)
    assert server.worker_pids() == {pid}


def test_a_worker_over_max_worker_memory_finishes_its_request_and_is_replaced(serve_cli: Serve) -> None:
    server = serve_cli("tests/handlers.py:LeakHandler", "--workers", "1", "--max-worker-memory", "120M")
    (pid,) = server.wait_workers(1)
    assert request_line(server.address, b"150\n") == f"{pid} 1\n".encode()  # answered in full
    (new,) = replaced(server, {pid}, 1)
    assert request_line(server.address, b"1\n") == f"{new} 1\n".encode()
    server.wait_logged("over max_worker_memory (120.0 MiB); recycling it")


def test_max_requests_recycling_is_logged_as_such(serve_cli: Serve) -> None:
    server = serve_cli(ECHO, "--workers", "1", "--max-requests", "2")
    (pid,) = server.wait_workers(1)
    for _ in range(2):
        request_line(server.address, b"r\n")
    replaced(server, {pid}, 1)
    wait_for(lambda: "recycled after 2 requests" in server.log)
    assert "replacing it" not in server.log


def test_a_worker_that_hangs_while_booting_is_a_boot_failure(serve_cli: Serve, tmp_path: Path) -> None:
    target = tmp_path / "hang_boot.py"
    target.write_text(
        "import time, setproctitle\n"
        "from tests.handlers import PidEchoHandler as Handler\n"
        "while 'prefork: worker' in setproctitle.getproctitle():\n"  # the import in a worker never ends
        "    time.sleep(1)\n"
    )
    server = serve_cli(str(target), "--workers", "1", "--timeout", "0.3", wait=False)
    assert server.wait(30) == 3
    server.wait_logged("did not boot within 0.3 s")


def test_a_failed_reload_keeps_the_serving_workers(serve_cli: Serve, tmp_path: Path) -> None:
    target = tmp_path / "reloadable.py"
    target.write_text("from tests.handlers import PidEchoHandler as Handler\n")
    server = serve_cli(str(target), "--workers", "1")
    (pid,) = server.wait_workers(1)
    target.write_text("raise RuntimeError('broken on purpose')\n")
    server.signal(signal.SIGHUP)
    wait_for(lambda: "Reload failed" in server.log, timeout=20)
    server.wait_logged("broken on purpose")
    assert server.proc.poll() is None
    assert request_line(server.address, b"still\n") == f"{pid} still\n".encode()


@pytest.mark.timeout(60)
def test_a_lost_worker_whose_replacement_cannot_boot_leaves_a_degraded_pool(
    serve_cli: Serve, tmp_path: Path
) -> None:
    """After a failed reload (the file on disk broken), an old worker dies: its replacement
    cannot import the file either. The master retries with backoff (at most every 5 s), says
    once that the pool is degraded, never says "Reload failed" again, and keeps serving; the
    pool is whole again once the file is fixed."""
    target = tmp_path / "degraded.py"
    target.write_text("from tests.handlers import PidEchoHandler as Handler\n")
    server = serve_cli(str(target), "--workers", "2")
    first = server.wait_workers(2)
    target.write_text("raise RuntimeError('broken on purpose')\n")
    server.signal(signal.SIGHUP)
    wait_for(lambda: "Reload failed" in server.log, timeout=20)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    time.sleep(6.0)
    (survivor,) = first - {victim}
    assert request_line(server.address, b"still\n") == f"{survivor} still\n".encode()
    assert server.log.count("Reload failed") == 1
    assert server.log.count("the pool is degraded: 1 workers serve on") == 1
    failures = server.log.count("failed to boot (")
    assert failures <= 5 + 12, failures  # the reload's 5, then a backoff up to 5 s (not 400 in 10 s)
    target.write_text("from tests.handlers import PidEchoHandler as Handler\n")
    wait_for(lambda: len(server.workers()) == 2, timeout=15)
