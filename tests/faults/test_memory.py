"""Item 9: a handler that leaks memory gets its worker recycled at max_worker_memory; the
request in progress finishes, no request fails."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.conftest import CLIServer, request_line
from tests.faults.figures import report
from tests.faults.procs import alive, wait_pool

Serve = Callable[..., CLIServer]
HANDLER = "tests.faults.handlers:LeakHandler"
LIMIT_MIB = 64
CHECK_EVERY = 1.0  # the master reads workers' RSS about once a second
RECYCLE_LIMIT = CHECK_EVERY + 1.0  # seconds from crossing the limit to the worker's exit
MIB = 1024 * 1024


@pytest.mark.timeout(60)
def test_a_leaking_worker_is_recycled_at_max_worker_memory(serve_cli: Serve) -> None:
    server = serve_cli(HANDLER, "--workers", "1", "--max-worker-memory", f"{LIMIT_MIB}M")
    (leaker,) = wait_pool(server.pid, 1)
    crossed_at = exited_at = 0.0
    peak = 0
    answers = 0
    deadline = time.monotonic() + 30
    while not exited_at:
        assert time.monotonic() < deadline, f"worker {leaker} never recycled; peak {peak / MIB:.0f} MiB"
        answer = request_line(server.address, b"leak\n", timeout=10)
        pid, rss = (int(field) for field in answer.split())  # every request is answered
        answers += 1
        if pid == leaker:
            peak = max(peak, rss)
            if rss > LIMIT_MIB * MIB and not crossed_at:
                crossed_at = time.monotonic()
        if crossed_at and not alive(leaker):
            exited_at = time.monotonic()
        time.sleep(0.25)
    (fresh,) = wait_pool(server.pid, 1, without={leaker})
    assert "over max_worker_memory" in server.log
    assert request_line(server.address, b"again\n").startswith(f"{fresh} ".encode())
    delay = exited_at - crossed_at
    report(
        "leak_recycled_after_crossing_s",
        round(delay, 3),
        f"<= {RECYCLE_LIMIT:g} s (max_worker_memory {LIMIT_MIB} MiB, checked every ~{CHECK_EVERY:g} s)",
        peak_rss_mib=round(peak / MIB, 1),
        requests=answers,
    )
    assert delay <= RECYCLE_LIMIT
