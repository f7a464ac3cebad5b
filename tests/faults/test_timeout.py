"""Item 9: a handler that hangs is killed within request_timeout + 1 s, its Python stack is in
the log, and the pool is whole again; idle workers are never killed."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest

from tests.conftest import CLIServer, wait_for
from tests.faults.figures import report
from tests.faults.procs import alive, wait_pool

Serve = Callable[..., CLIServer]
HANDLER = "tests.faults.handlers:HangHandler"
TIMEOUT = 1.0

# how it hangs -> what the dumped stack must show (None: SIGABRT is blocked, no dump)
HANGS = {"sleep": "in hang_in_sleep", "spin": "in hang_in_loop", "blocked": None}
# SIGABRT blocked: only the SIGKILL sent ABORT_GRACE (0.5 s) after the SIGABRT ends it, so it
# too dies within request_timeout + 1 s, with room for a busy machine.


@pytest.mark.timeout(30)
@pytest.mark.parametrize("hang", list(HANGS))
def test_a_hung_request_is_killed_with_its_stack_logged(serve_cli: Serve, hang: str) -> None:
    frame = HANGS[hang]
    server = serve_cli(HANDLER, "--workers", "2", "--timeout", str(TIMEOUT))
    before = wait_pool(server.pid, 2)
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(hang.encode() + b"\n")
        sent = time.monotonic()
        try:
            answer = sock.recv(100)
        except ConnectionResetError:
            answer = b""
        killed_after = time.monotonic() - sent
    assert answer == b""
    after = wait_pool(server.pid, 2, timeout=10, without=before - {p for p in before if alive(p)})
    gone = before - after
    assert len(gone) == 1, (before, after)  # the hung worker, and only it: the idle one lives on
    assert "has been busy on one request" in server.log
    if frame is not None:
        wait_for(lambda: frame in server.log)
        log = server.log
        assert "Fatal Python error: Aborted" in log and "Current thread" in log
    else:
        wait_for(lambda: "did not stop in time; killing it" in server.log)
    limit = TIMEOUT + 1.0
    report(
        f"hang_{hang}_killed_after_s",
        round(killed_after, 3),
        f"<= request_timeout + 1 s = {limit:g} s",
        stack_logged=frame is not None,
    )
    assert killed_after <= limit
