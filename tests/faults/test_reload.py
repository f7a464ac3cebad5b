"""Item 9: 10 HUP reloads and 3 USR2 upgrades under load fail no request."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest

from tests.conftest import CLIServer, wait_for
from tests.faults.figures import distribution, report
from tests.faults.load import LoadProcess
from tests.faults.procs import alive, children, is_worker, wait_gone, wait_pool

Serve = Callable[..., CLIServer]
ECHO = "tests.faults.handlers:EchoHandler"
WORKERS = 2


@pytest.mark.timeout(60)
def test_ten_hup_reloads_under_load_fail_no_request(serve_cli: Serve) -> None:
    server = serve_cli(ECHO, "--workers", str(WORKERS))
    workers = wait_pool(server.pid, WORKERS)
    first = set(workers)
    durations = []
    with LoadProcess(server.address, concurrency=8, max_seconds=40) as load:
        load.wait_started()
        for _ in range(10):
            start = time.monotonic()
            server.signal(signal.SIGHUP)
            workers = wait_pool(server.pid, WORKERS, timeout=10, without=workers)
            durations.append(time.monotonic() - start)
            time.sleep(0.1)
        result = load.stop()
    assert server.proc.poll() is None
    assert not workers & first
    report(
        "hup_reloads_failed_requests",
        result.failed,
        "== 0 over 10 HUP reloads",
        ok=result.ok,
        failures=dict(result.failures),
        reload_s=distribution(durations),
    )
    assert result.failed == 0
    assert result.ok > 100


@pytest.mark.timeout(90)
def test_three_usr2_upgrades_under_load_fail_no_request(serve_cli: Serve) -> None:
    server = serve_cli(ECHO, "--workers", str(WORKERS))
    wait_pool(server.pid, WORKERS)
    master = server.pid
    masters = [master]
    durations = []
    with LoadProcess(server.address, concurrency=8, max_seconds=60) as load:
        load.wait_started()
        for _ in range(3):
            start = time.monotonic()
            old = master
            os.kill(old, signal.SIGUSR2)
            master = new_master(old)
            wait_gone(old, timeout=20)  # it finished its requests and left
            wait_pool(master, WORKERS, timeout=10)
            durations.append(time.monotonic() - start)
            masters.append(master)
            time.sleep(0.2)
        result = load.stop()
    assert server.proc.wait(5) == 0  # the first master left cleanly
    assert alive(master) and len(set(masters)) == 4
    assert os.getpgid(master) == server.pid  # teardown's killpg reaches it
    report(
        "usr2_upgrades_failed_requests",
        result.failed,
        "== 0 over 3 USR2 upgrades",
        ok=result.ok,
        failures=dict(result.failures),
        upgrade_s=distribution(durations),
    )
    assert result.failed == 0
    assert result.ok > 100


def new_master(old: int, timeout: float = 20.0) -> int:
    """The pid of the master that ``old`` forked and exec'd on USR2 (its child that is no worker)."""

    def find() -> int | None:
        others = [pid for pid in children(old) if not is_worker(pid) and alive(pid)]
        return others[0] if len(others) == 1 else None

    return int(wait_for(find, timeout))
