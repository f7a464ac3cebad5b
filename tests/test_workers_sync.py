"""The sync worker's loop: after a request it accepts again without waiting while connections
are queued (``SyncWorker.accept_batch`` requests in a row at most), as gunicorn's sync worker."""

from __future__ import annotations

import os
import signal
import socket
import socketserver
import time
from typing import Any

import pytest

from prefork import PreforkTCPServer
from prefork.workers import SyncWorker
from tests.test_server import serving


class WaitCountHandler(socketserver.StreamRequestHandler):
    """Answers one line with ``PID WAITS``: its worker's pid and how many times the worker has
    waited for connections so far; ``hold`` first keeps the worker busy 0.3 s, so that the
    next connections queue up."""

    def handle(self) -> None:
        line = self.rfile.readline()
        if line.strip() == b"hold":
            time.sleep(0.3)
        worker: Any = self.server.worker  # type: ignore[attr-defined]
        self.wfile.write(f"{os.getpid()} {worker.waits}\n".encode())


def counting_wait(self: Any, *args: Any, **kwargs: Any) -> Any:
    """SyncWorker.wait_for_listeners, counting its calls in the worker's ``waits``."""
    self.waits = getattr(self, "waits", 0) + 1
    return ORIGINAL_WAIT(self, *args, **kwargs)


ORIGINAL_WAIT = SyncWorker.wait_for_listeners


def one_worker() -> Any:
    """A pool of one sync worker serving WaitCountHandler, in this process (``serving()``)."""
    server = PreforkTCPServer(("127.0.0.1", 0), WaitCountHandler, workers=1, socket_timeout=5)
    return serving(server, workers=1)


def hold_and_queue(address: tuple[str, int], queued: int) -> list[socket.socket]:
    """Hold the only worker with one connection, then queue ``queued`` more meanwhile; return
    all of them, the held one first."""
    held = socket.create_connection(address, timeout=5)
    held.sendall(b"hold\n")
    time.sleep(0.1)  # the worker is now busy in the held request
    conns = [socket.create_connection(address, timeout=5) for _ in range(queued)]
    for conn in conns:
        conn.sendall(b"q\n")
    return [held, *conns]


def answers(conns: list[socket.socket]) -> list[tuple[int, int]]:
    """The ``(pid, waits)`` answer of each connection, in order; closes them."""
    out = []
    for conn in conns:
        with conn:
            pid, waits = conn.makefile("rb").readline().split()
            out.append((int(pid), int(waits)))
    return out


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("batch", "most_waits"), [(16, 2), (1, 10)])
def test_a_busy_worker_accepts_queued_connections_without_waiting_for_each(
    monkeypatch: pytest.MonkeyPatch, batch: int, most_waits: int
) -> None:
    monkeypatch.setattr(SyncWorker, "wait_for_listeners", counting_wait)
    monkeypatch.setattr(SyncWorker, "accept_batch", batch)
    with one_worker() as server:
        seen = answers(hold_and_queue(server.server_address, queued=10))
        new_waits = seen[-1][1] - seen[0][1]  # waits while serving the 10 queued connections
        if batch > 1:
            assert new_waits <= most_waits, seen
        else:  # without batching: a wait before each request
            assert new_waits >= most_waits, seen


@pytest.mark.timeout(30)
def test_term_during_a_batch_stops_after_the_request_in_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SyncWorker, "wait_for_listeners", counting_wait)
    with one_worker() as server:
        conns = hold_and_queue(server.server_address, queued=5)
        assert server.scoreboard is not None
        pid = next(s.pid for s in server.scoreboard.slots() if s.pid)
        os.kill(pid, signal.SIGTERM)  # while it holds the first request, with 5 queued
        seen = answers(conns)
        assert seen[0][0] == pid  # the request in progress was finished, not cut off
        assert all(other != pid for other, _ in seen[1:]), seen  # the queued: its replacement
