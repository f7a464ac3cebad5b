"""Item 8: a handler exception, SystemExit, KeyboardInterrupt, os._exit, a segfault or a closed
stdout in a worker never takes down the master or the other workers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest

from tests.conftest import CLIServer, request_line, wait_for
from tests.faults.figures import report
from tests.faults.procs import alive, pool

Serve = Callable[..., CLIServer]
HANDLER = "tests.faults.handlers:FaultHandler"
RECOVERY_LIMIT = 1.0  # seconds from the faulty request's end until the pool is whole again

# fault line -> (the worker survives it, what the master's log says when it does not)
FAULTS = {
    "raise": (True, "RuntimeError: handler failed on purpose"),
    "stdout": (True, "ValueError: I/O operation on closed file"),
    "sysexit": (False, "exited with status 9"),
    "kbint": (False, "KeyboardInterrupt"),
    "osexit": (False, "exited with status 7"),
    "segv": (False, "was killed by SIGSEGV"),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_crashing_request_spares_the_master_and_the_other_workers(serve_cli: Serve, fault: str) -> None:
    survives, logged = FAULTS[fault]
    server = serve_cli(HANDLER, "--workers", "2")
    before = server.wait_workers(2)
    address = server.address
    # A request in flight on one worker while the other one meets the fault.
    held: list[bytes] = []
    holder = threading.Thread(target=lambda: held.append(request_line(address, b"sleep 1.0\n", 10)))
    holder.start()
    time.sleep(0.3)
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(fault.encode() + b"\n")
        assert sock.recv(100) == b""  # the faulty request gets no answer, only its connection closed
    start = time.monotonic()

    def whole() -> set[int] | None:
        pids = pool(server.pid)
        return pids if len(pids) == 2 and (survives or pids != before) else None

    after = set(wait_for(whole, timeout=10, interval=0.002))
    recovery = time.monotonic() - start
    holder.join(10)
    assert held and held[0].endswith(b" sleep 1.0\n"), held
    bystander = int(held[0].split()[0])
    assert bystander in before
    assert server.proc.poll() is None, "the master died"
    assert bystander in after, "the bystander worker was replaced"
    assert (after == before) is survives
    assert alive(bystander)
    wait_for(lambda: logged in server.log)
    for _ in range(4):  # the pool serves
        assert request_line(address, b"fine\n").endswith(b" fine\n")
    assert pool(server.pid) == after
    report(
        f"crash_{fault}_pool_whole_s",
        round(recovery, 3),
        f"<= {RECOVERY_LIMIT} s; master and bystander worker unharmed",
        worker_survived=survives,
    )
    assert recovery <= RECOVERY_LIMIT
