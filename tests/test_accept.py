"""Accept strategies (``--accept shared|reuseport``) and how workers wait for connections.

The servers run ``python -m prefork tests/test_accept.py:LineHandler``: this module is also the
handler module, and ``PREFORK_TEST_ACCEPT_WAIT`` in its environment picks the worker's
waiting mechanism (``SyncWorker.accept_wait``) in the server process.
"""

from __future__ import annotations

import os
import signal
import socket
import socketserver
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from prefork import sockets
from prefork.workers import SyncWorker
from tests.conftest import CLIServer, wait_for

Serve = Callable[..., CLIServer]
TARGET = "tests/test_accept.py:LineHandler"

if os.environ.get("PREFORK_TEST_ACCEPT_WAIT"):  # in the server process only
    SyncWorker.accept_wait = os.environ["PREFORK_TEST_ACCEPT_WAIT"]


class LineHandler(socketserver.StreamRequestHandler):
    """Answers each line with ``PID EMPTY_ACCEPTS``; ``hold`` keeps the connection (and so
    the sync worker) for more lines, anything else closes it after the answer."""

    def handle(self) -> None:
        worker = self.server.worker  # type: ignore[attr-defined]
        for line in self.rfile:
            self.wfile.write(f"{os.getpid()} {worker.empty_accepts}\n".encode())
            self.wfile.flush()
            if line.strip() != b"hold":
                return


def connect(address: tuple[str, int], line: bytes, timeout: float = 5.0) -> socket.socket:
    """Open a connection to ``address`` and send ``line``; return the socket."""
    sock = socket.create_connection(address, timeout=timeout)
    sock.sendall(line)
    return sock


def answer(sock: socket.socket) -> tuple[int, int]:
    """Read one ``PID EMPTY_ACCEPTS`` answer."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(100)
        if not chunk:
            raise ConnectionError(f"EOF after {data!r}")
        data += chunk
    pid, empty = data.split()
    return int(pid), int(empty)


def ask(address: tuple[str, int]) -> int:
    """One request on a new connection; return the pid of the worker that answered."""
    with connect(address, b"q\n") as sock:
        return answer(sock)[0]


def hold_every_worker(
    address: tuple[str, int], count: int
) -> tuple[dict[int, socket.socket], list[socket.socket]]:
    """Pin each of the ``count`` workers to one ``hold`` connection. Returns the held
    connections by worker pid, and the connections opened meanwhile that are still queued
    (with reuseport, a connection may be hashed to a busy worker's socket)."""
    held: dict[int, socket.socket] = {}
    queued: list[socket.socket] = []
    deadline = time.monotonic() + 10
    while len(held) < count:
        assert time.monotonic() < deadline, f"only {len(held)} of {count} workers answered"
        sock = connect(address, b"hold\n", timeout=0.3)
        try:
            pid, _ = answer(sock)
        except TimeoutError:
            sock.settimeout(5)
            queued.append(sock)  # waits behind a held connection; answered later
            continue
        sock.settimeout(5)
        held[pid] = sock
    return held, queued


def listening_fds(pid: int, port: int) -> int:
    """How many listening TCP sockets on ``port`` process ``pid`` holds."""
    return sum(
        1
        for conn in psutil.Process(pid).net_connections("tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
    )


def listening_inodes(pid: int, port: int) -> set[int]:
    """The inodes of the listening TCP sockets on ``port`` that process ``pid`` holds."""
    return {
        os.stat(f"/proc/{pid}/fd/{conn.fd}").st_ino
        for conn in psutil.Process(pid).net_connections("tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
    }


@pytest.mark.parametrize("strategy", ["shared", "reuseport"])
def test_each_strategy_serves_from_every_worker(serve_cli: Serve, strategy: str) -> None:
    server = serve_cli(TARGET, "--workers", "2", "--accept", strategy)
    pids = server.wait_workers(2)
    held, queued = hold_every_worker(server.address, 2)  # a busy worker leaves it to the other
    assert set(held) == pids
    for sock in [*held.values(), *queued]:
        sock.close()
    if strategy == "reuseport":  # connections are hashed over the workers' own sockets
        assert {ask(server.address) for _ in range(40)} == pids  # 2**-39 to fail by chance
        inodes = [listening_inodes(pid, server.address[1]) for pid in pids]
        assert all(len(found) == 1 for found in inodes)
        assert len(set.union(*inodes)) == 2  # each worker accepts on its own socket
        assert listening_fds(server.pid, server.address[1]) == 2  # the original, and worker 1's


@pytest.mark.parametrize("strategy", ["shared", "reuseport"])
def test_kill_9_of_a_worker_loses_no_queued_connection(serve_cli: Serve, strategy: str) -> None:
    server = serve_cli(TARGET, "--workers", "2", "--accept", strategy)
    server.wait_workers(2)
    held, queued = hold_every_worker(server.address, 2)
    queued += [connect(server.address, b"q\n") for _ in range(30)]  # in the backlog(s)
    victim, survivor = sorted(held)
    os.kill(victim, signal.SIGKILL)  # its held connection is the in-flight one: it may fail
    wait_for(lambda: len(server.worker_pids() - {survivor}) == 1 and victim not in server.worker_pids())
    held[survivor].close()
    try:
        answered = 0
        for sock in queued:  # in order: each worker's queue is FIFO
            answered += bool(answer(sock))
            sock.close()  # a "hold" connection would keep its worker
    finally:
        for sock in [*held.values(), *queued]:
            sock.close()
    assert answered == len(queued)
    server.wait_logged("was killed by SIGKILL; replacing it")


def test_reuseport_resize_and_reload_strand_no_connection(serve_cli: Serve) -> None:
    server = serve_cli(TARGET, "--workers", "3", "--accept", "reuseport")
    pids = server.wait_workers(3)
    port = server.address[1]
    assert listening_fds(server.pid, port) == 3
    server.signal(signal.SIGTTOU)
    wait_for(lambda: listening_fds(server.pid, port) == 2)
    two = server.wait_workers(2)
    assert {ask(server.address) for _ in range(30)} == two  # every connection is answered
    server.signal(signal.SIGHUP)
    wait_for(lambda: not server.worker_pids() & pids and len(server.worker_pids()) == 2, timeout=10)
    assert len({ask(server.address) for _ in range(30)}) == 2
    assert listening_fds(server.pid, port) == 2  # worker 1's socket was kept for its replacement
    server.signal(signal.SIGTTIN)
    server.wait_workers(3)
    wait_for(lambda: listening_fds(server.pid, port) == 3)
    assert len({ask(server.address) for _ in range(40)}) == 3


def test_reuseport_falls_back_to_shared_for_unix_sockets(serve_cli: Serve, unix_path: str) -> None:
    server = serve_cli(TARGET, "--workers", "2", "--accept", "reuseport", "--bind", f"unix:{unix_path}")
    server.wait_workers(2)
    server.wait_logged("is not a TCP or UDP socket; using shared sockets")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(unix_path)
        sock.sendall(b"q\n")
        assert answer(sock)[0] in server.worker_pids()


def test_tcp_migrate_req_is_read_and_warned_about_once(serve_cli: Serve, tmp_path: Path) -> None:
    (tmp_path / "off").write_text("0\n")
    (tmp_path / "on").write_text("1\n")
    assert sockets.tcp_migrate_req(str(tmp_path / "off")) is False
    assert sockets.tcp_migrate_req(str(tmp_path / "on")) is True
    assert sockets.tcp_migrate_req(str(tmp_path / "missing")) is None
    server = serve_cli(TARGET, "--workers", "2", "--accept", "reuseport")
    server.wait_workers(2)
    warnings = server.log.count("net.ipv4.tcp_migrate_req=0")
    assert warnings == (1 if sockets.tcp_migrate_req() is False else 0)
    shared = serve_cli(TARGET, "--workers", "2")
    shared.wait_workers(2)
    assert "tcp_migrate_req" not in shared.log


def wakeups(pids: set[int]) -> dict[int, int]:
    """Voluntary context switches of each process: how often it slept and was woken."""
    return {pid: psutil.Process(pid).num_ctx_switches().voluntary for pid in pids}


@pytest.mark.parametrize("wait", ["exclusive", "select"])
def test_one_connection_wakes_one_worker(serve_cli: Serve, wait: str) -> None:
    """With EPOLLEXCLUSIVE, a connection wakes one idle worker; with a level-triggered
    selector, every idle worker wakes (though epoll mostly hides it: the others find the
    queue empty before returning to user space, so few see accept() fail)."""
    env = {**os.environ, "PREFORK_TEST_ACCEPT_WAIT": wait}
    server = serve_cli(TARGET, "--workers", "4", env=env)
    pids = server.wait_workers(4)
    time.sleep(0.3)  # every worker waits
    before = wakeups(pids)
    served: set[int] = set()
    for _ in range(20):
        served.add(ask(server.address))
        time.sleep(0.02)
    after = wakeups(pids)
    woken = sum(after[pid] - before[pid] for pid in pids)  # a served request: 1 or 2 wake-ups
    if wait == "exclusive":
        assert len(served) < 4  # the first idle waiter registered takes them all
        assert woken < 50
    else:
        assert woken >= 75  # each of the 4 workers wakes for each of the 20 connections


def test_blocking_accept_stops_on_term(serve_cli: Serve) -> None:
    """The ``blocking`` wait sleeps in accept(); TERM must still stop idle workers at once."""
    env = {**os.environ, "PREFORK_TEST_ACCEPT_WAIT": "blocking"}
    server = serve_cli(TARGET, "--workers", "2", env=env)
    server.wait_workers(2)
    assert len({ask(server.address) for _ in range(10)}) >= 1
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait(5) == 0
    assert time.monotonic() - started < 2
    assert "did not stop in time" not in server.log
