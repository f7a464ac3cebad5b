"""Item 9: 1,000 worker restarts leave the master's memory and descriptors as they were, and
no zombie."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import psutil
import pytest

from tests.conftest import CLIServer, wait_for
from tests.faults.figures import report
from tests.faults.load import Load
from tests.faults.procs import pool, wait_pool, zombies

Serve = Callable[..., CLIServer]
RESTARTS = 1000
WARMUP = 100
RSS_GROWTH_LIMIT = 1024 * 1024  # bytes
MIB = 1024 * 1024

# how workers are made to restart after each request -> CLI arguments
WAYS = {
    "max_requests": ("tests.faults.handlers:EchoHandler", "--max-requests", "1"),
    "exit": ("tests.faults.handlers:ExitAfterAnswerHandler",),
}


def settled(server: CLIServer) -> tuple[int, list[str]]:
    """Wait until the pool is whole, nothing is left to reap and the master's descriptors hold
    still (a worker can be running before the master has opened its pidfd); return the
    master's RSS and what its descriptors point to."""

    def steady() -> tuple[int, list[str]] | None:
        wait_pool(server.pid, 2)
        if zombies(server.pid):
            return None
        first = descriptors(server.pid)
        time.sleep(0.1)
        rss = psutil.Process(server.pid).memory_info().rss
        if descriptors(server.pid) != first or len(pool(server.pid)) != 2:
            return None
        return rss, first

    return wait_for(steady, timeout=10)  # type: ignore[no-any-return]


def descriptors(pid: int) -> list[str]:
    """What the open descriptors of ``pid`` point to, sorted (``anon_inode:[pidfd]``, ...)."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return sorted(found)


def kind(target: str) -> str:
    """A descriptor's target without the inode number that changes with each pipe or socket."""
    return target.partition(":[")[0]


def restart(server: CLIServer, count: int) -> int:
    """Send ``count`` requests (each one ends its worker); return the failures."""
    with Load(server.address, concurrency=4, timeout=10, max_seconds=120) as load:
        load.wait_ok(count, timeout=120)
    return load.result.failed


@pytest.mark.long
@pytest.mark.timeout(180)
@pytest.mark.parametrize("way", list(WAYS))
def test_a_thousand_restarts_leak_nothing_in_the_master(serve_cli: Serve, way: str) -> None:
    server = serve_cli(*WAYS[way], "--workers", "2")
    wait_pool(server.pid, 2)
    failed = restart(server, WARMUP)  # the master's allocations reach their steady state
    rss, fds = settled(server)
    start = time.monotonic()
    failed += restart(server, RESTARTS)
    took = time.monotonic() - start
    rss_after, fds_after = settled(server)
    growth = rss_after - rss
    report(
        f"restarts_{way}_master_rss_growth_bytes",
        growth,
        f"<= {RSS_GROWTH_LIMIT} over {RESTARTS} restarts; fds unchanged; no zombie",
        fds_before=len(fds),
        fds_after=len(fds_after),
        rss_mib=round(rss / MIB, 1),
        seconds=round(took, 1),
        failed_requests=failed,
    )
    assert growth <= RSS_GROWTH_LIMIT
    assert sorted(map(kind, fds_after)) == sorted(map(kind, fds)), (fds, fds_after)
    assert server.proc.poll() is None
