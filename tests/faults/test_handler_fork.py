"""A handler that calls ``os.fork()`` and returns in both processes: the child is not the
worker the master forked, so it never serves; it exits and keeps no listening socket."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable

import psutil
import pytest

from tests.conftest import CLIServer, request_line, wait_for

Serve = Callable[..., CLIServer]


@pytest.mark.parametrize("worker_class", ["sync", "thread"])
@pytest.mark.timeout(40)
def test_a_process_forked_by_a_handler_never_serves(serve_cli: Serve, worker_class: str) -> None:
    server = serve_cli("tests.handlers:ForkingHandler", "--workers", "1", "--worker-class", worker_class)
    (worker,) = server.wait_workers(1)
    parent, child = map(int, request_line(server.address, b"fork\n").split())
    assert parent == worker
    time.sleep(0.5)  # the child is back in the worker's code by now
    answers = {int(request_line(server.address, b"who\n")) for _ in range(30)}
    assert answers == {worker}  # never the child

    def child_gone() -> bool:
        try:
            return psutil.Process(child).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(child_gone, timeout=5)
    port = server.address[1]
    server.signal(signal.SIGTERM)
    assert server.wait(10) == 0
    with socket.socket() as probe:  # nothing left listening: the port can be bound again
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
        probe.listen()
