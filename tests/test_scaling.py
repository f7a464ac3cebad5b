"""The dynamic pool's rules (prefork.scaling): pure, with a fake clock; and a real pool that
grows under load and shrinks when idle."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from prefork.scaling import (
    CHECK_INTERVAL,
    MAX_SPAWN_RATE,
    SHRINK_INTERVAL,
    SPAWN_PERIOD,
    PoolLoad,
    PoolScaler,
)
from prefork.scoreboard import Scoreboard
from tests.conftest import ROOT, wait_for

BUSY = PoolLoad(idle=0, starting=0, queued=0)
QUEUED = PoolLoad(idle=0, starting=0, queued=5)


def run(scaler: PoolScaler, size: int, load: PoolLoad, start: float, seconds: float) -> tuple[int, list[str]]:
    """Check every CHECK_INTERVAL for ``seconds`` from ``start`` with the same load; the size
    after, and each change's reason."""
    reasons = []
    now = start
    while now < start + seconds:
        size, why = scaler.decide(now, size, load)
        if why:
            reasons.append(why)
        now += CHECK_INTERVAL
    return size, reasons


def test_a_short_pool_grows_1_2_4_each_second_up_to_its_maximum() -> None:
    scaler = PoolScaler(1, 8)
    sizes = []
    size, now = 1, 100.0
    for _ in range(16):  # 4 s of checks
        size, _ = scaler.decide(now, size, QUEUED)
        sizes.append(size)
        now += CHECK_INTERVAL
    assert sizes[0] == 2  # at once: no idle worker and connections queued
    assert sizes[int(SPAWN_PERIOD / CHECK_INTERVAL)] == 4
    assert sizes[int(2 * SPAWN_PERIOD / CHECK_INTERVAL)] == 8  # 1 + 1 + 2 + 4, capped at 8
    assert max(sizes) == 8


def test_one_short_check_without_a_queue_is_not_enough_to_grow() -> None:
    scaler = PoolScaler(1, 8)
    assert scaler.decide(0.0, 2, BUSY) == (2, "")
    size, why = scaler.decide(CHECK_INTERVAL, 2, BUSY)
    assert (size, why) == (3, "no idle worker")


def test_a_booting_worker_or_an_idle_one_means_not_short() -> None:
    scaler = PoolScaler(1, 8)
    for load in (PoolLoad(0, 1, 50), PoolLoad(1, 0, 50)):
        assert run(scaler, 2, load, 0.0, 3.0) == (2, [])


def test_the_spawn_rate_doubles_up_to_32_and_falls_back_once_not_short() -> None:
    scaler = PoolScaler(1, 1000)
    size, _ = run(scaler, 1, QUEUED, 0.0, 8 * SPAWN_PERIOD)
    assert size == 1 + 1 + 2 + 4 + 8 + 16 + 32 + 32 + 32
    assert scaler.rate == MAX_SPAWN_RATE
    run(scaler, size, PoolLoad(1, 0, 0), 100.0, 2 * SPAWN_PERIOD)
    assert scaler.rate == 1


def test_an_idle_pool_shrinks_one_worker_per_interval_down_to_its_minimum() -> None:
    scaler = PoolScaler(2, 8)
    size, reasons = run(scaler, 8, PoolLoad(idle=8, starting=0), 0.0, 10 * SHRINK_INTERVAL)
    assert size == 2
    assert reasons[0] == f"8 workers idle for {SHRINK_INTERVAL:g} s"
    assert len(reasons) == 6
    size, _ = run(scaler, 8, PoolLoad(idle=8, starting=0), 1000.0, SHRINK_INTERVAL - CHECK_INTERVAL)
    assert size == 8  # not within one interval


def test_one_busy_moment_restarts_the_shrink_interval() -> None:
    scaler = PoolScaler(1, 8)
    run(scaler, 4, PoolLoad(4, 0), 0.0, SHRINK_INTERVAL - 1)
    assert scaler.decide(SHRINK_INTERVAL - 1, 4, PoolLoad(1, 0)) == (4, "")  # one spare only
    size, _ = run(scaler, 4, PoolLoad(4, 0), SHRINK_INTERVAL, SHRINK_INTERVAL - CHECK_INTERVAL)
    assert size == 4


def test_a_steady_light_load_does_not_make_the_pool_flap() -> None:
    """A pool of 2 with one worker often busy: neither short (an idle worker) nor with more
    than one spare at every check: it stays."""
    scaler = PoolScaler(1, 8)
    loads = [PoolLoad(1, 0, 0), PoolLoad(2, 0, 0)] * 100
    size, now = 2, 0.0
    for load in loads:
        size, why = scaler.decide(now, size, load)
        assert not why
        now += CHECK_INTERVAL


def test_a_pool_outside_moved_bounds_is_brought_within() -> None:
    scaler = PoolScaler(1, 8)
    scaler.set_bounds(1, 3)
    assert scaler.decide(0.0, 6, PoolLoad(0, 0)) == (3, "outside its bounds")
    scaler.set_bounds(4, 6)
    assert scaler.decide(1.0, 3, PoolLoad(3, 0)) == (4, "outside its bounds")


# A dynamic pool served by a real master, its shrink interval shortened to 1 s for the test;
# the handler sleeps 0.2 s per line.
SCRIPT = textwrap.dedent(
    """
    import logging, socketserver, sys, time
    import prefork.scaling
    logging.basicConfig(level=logging.INFO)
    prefork.scaling.SHRINK_INTERVAL = 1.0
    from prefork import PreforkTCPServer

    class Slow(socketserver.StreamRequestHandler):
        def handle(self):
            for line in self.rfile:
                time.sleep(0.2)
                self.wfile.write(line)

    server = PreforkTCPServer(
        ("127.0.0.1", 0), Slow, workers=1, min_workers=1, max_workers=4,
        scoreboard_file=sys.argv[1], control_socket="off",
    )
    print(server.server_address[1], flush=True)
    server.serve_forever(poll_interval=0.05)
    """
)


def _workers(path: str) -> int:
    """Workers in the scoreboard at ``path`` (-1 before the master created it)."""
    try:
        with Scoreboard.open(path) as board:
            return len(board.slots())
    except FileNotFoundError:
        return -1


@pytest.mark.timeout(60)
def test_a_dynamic_pool_grows_under_load_and_shrinks_back_when_idle(tmp_path: os.PathLike[str]) -> None:
    board = os.path.join(tmp_path, "scoreboard")
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, board],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        wait_for(lambda: _workers(board) == 1, timeout=10)
        stop = threading.Event()

        def client() -> None:  # keeps one request in flight, one line at a time
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                while not stop.is_set():
                    sock.sendall(b"x\n")
                    sock.recv(16)

        clients = [threading.Thread(target=client) for _ in range(4)]
        for thread in clients:
            thread.start()
        try:
            wait_for(lambda: _workers(board) == 4, timeout=10)  # 1 -> 2 -> 4 (max)
            with Scoreboard.open(board) as scoreboard:
                figures = scoreboard.pool()
                assert (figures.min_workers, figures.max_workers) == (1, 4)
        finally:
            stop.set()
            for thread in clients:
                thread.join(10)
        wait_for(lambda: _workers(board) == 1, timeout=15)  # one per second, to min_workers
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert "Dynamic pool (no idle worker" in err and "increasing the pool to 4 workers" in err
    assert "idle for 1 s), decreasing the pool to 1 worker." in err


def test_a_thread_pool_is_short_only_with_connections_queued() -> None:
    scaler = PoolScaler(1, 8, queue_only=True)
    assert run(scaler, 2, BUSY, 0.0, 3.0) == (2, [])  # its slots busy, its threads maybe free
    assert scaler.decide(10.0, 2, QUEUED) == (3, "no idle worker, 5 connections queued")
