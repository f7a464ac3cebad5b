"""The scoreboard: slots in shared memory, written by workers and read by the master."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from prefork import PreforkTCPServer
from prefork.errors import PreforkError
from prefork.figures import DURATION_BUCKETS, WorkerState
from prefork.scoreboard import HEADER_SIZE, SLOT_SIZE, Scoreboard, pack_done, pack_started
from tests.conftest import address, request_line, wait_for
from tests.handlers import PidEchoHandler
from tests.test_server import serving


def inline_writers(
    board: Scoreboard, slot: int
) -> tuple[Callable[[float], None], Callable[[WorkerState, float, int, float], None]]:
    """The request path's two writes of ``slot``, as a worker makes them inline."""
    memory, started_at, state_at, done_at = board.request_stores(slot)

    def started(now: float) -> None:
        memory[started_at] = pack_started(now)
        memory[state_at] = WorkerState.BUSY

    def finished(state: WorkerState, started: float, requests: int, busy: float) -> None:
        memory[done_at] = pack_done(state, started, requests, busy)

    return started, finished


def test_slots_are_assigned_written_and_released() -> None:
    with Scoreboard(4) as board:
        assert board.slots() == []
        first, second = board.assign(0, 0), board.assign(1, 0)
        assert (first, second) == (0, 1)
        board.set_pid(0, 1234)
        board.booted(0, 1234)
        board.request_started(0)
        busy = board.read(0)
        assert busy.state is WorkerState.BUSY and busy.pid == 1234 and busy.booted_at > 0
        assert 0 <= busy.busy_for() < 1
        board.request_finished(0, 7)
        board.count_denied(0)
        done = board.read(0)
        assert (done.state, done.requests, done.denied, done.busy_for()) == (WorkerState.IDLE, 7, 1, 0.0)
        assert [s.slot for s in board.slots()] == [0, 1]
        board.release(0)
        assert [s.slot for s in board.slots()] == [1]
        assert board.assign(2, 1) == 0  # a freed slot is reused


def test_request_stores_write_what_the_methods_write() -> None:
    with Scoreboard(4) as by_method, Scoreboard(4) as by_writer:
        for board in (by_method, by_writer):
            board.assign(0, 0)
            board.assign(1, 0)
        started, finished = inline_writers(by_writer, 1)

        by_method.request_started(1)
        started(time.monotonic())
        busy, written = by_method.read(1), by_writer.read(1)
        assert written.state is WorkerState.BUSY and 0 <= written.busy_for() < 1
        assert written._replace(request_started=busy.request_started) == busy
        by_method.request_finished(1, 5, WorkerState.STOPPING)
        finished(WorkerState.STOPPING, 0.0, 5, 0.0)
        assert by_writer.read(1) == by_method.read(1)
        assert by_writer.read(1).requests == 5
        assert by_writer.read(0) == by_method.read(0)  # the other slot is untouched


def test_counters_fold_into_the_totals_when_a_worker_is_retired() -> None:
    with Scoreboard(4) as board:
        for number in (0, 1):
            board.assign(number, 0)
        board.request_finished(0, 3, WorkerState.IDLE, 0.5)
        durations = board.durations(0)
        durations[0] += 2
        durations[len(DURATION_BUCKETS)] += 1  # over the last bound: +Inf
        durations.release()
        board.count_error(0)
        board.count_denied(1)
        board.request_finished(1, 4, WorkerState.IDLE, 0.25)
        folded: list[int] = []
        retired = board.retire(0, folded.append)
        assert folded == [0] and retired.requests == 3 and retired.errors == 1
        assert board.read(0).state is WorkerState.EMPTY and board.read(0).requests == 0
        totals = board.read(-1)
        assert (totals.requests, totals.errors, totals.denied, totals.busy_seconds) == (3, 1, 0, 0.5)
        assert totals.durations == (2, *[0] * (len(DURATION_BUCKETS) - 1), 1)
        assert board.assign(2, 1) == 0  # reused, zeroed: the totals keep the old counts
        assert board.read(0).requests == 0 and board.read(-1).requests == 3
        assert board.consistent(lambda: board.read(-1).requests + sum(s.requests for s in board.slots())) == 7


def test_pool_figures_are_kept_in_the_header() -> None:
    with Scoreboard(4) as board:
        figures = board.pool()
        assert (figures.listen_queue_length, figures.listen_queue_limit) == (None, None)
        assert set(figures.restarts.values()) == {0} and figures.boot_failures == 0
        board.set_pool(1234, 2, 8, 1.5e9)
        board.set_listen_queue(3, 128)
        board.count_restart("max_requests")
        board.count_restart("max_requests")
        board.count_restart("crash")
        board.count_boot_failure()
        figures = board.pool()
        assert (figures.master_pid, figures.generation, figures.workers_wanted) == (1234, 2, 8)
        assert figures.started_at == 1.5e9 and (figures.listen_queue_length, figures.listen_queue_limit) == (
            3,
            128,
        )
        assert figures.restarts["max_requests"] == 2 and figures.restarts["crash"] == 1
        assert figures.boot_failures == 1
        with pytest.raises(ValueError):
            board.count_restart("boredom")


def test_all_slots_taken_gives_none() -> None:
    with Scoreboard(2) as board:
        assert board.assign(0, 0) == 0 and board.assign(1, 0) == 1
        assert board.assign(2, 0) is None


def test_a_scoreboard_file_is_readable_by_another_process_and_removed(tmp_path: Path) -> None:
    path = str(tmp_path / "board")
    board = Scoreboard(8, path)
    assert os.path.getsize(path) == HEADER_SIZE + 9 * SLOT_SIZE
    slot = board.assign(3, 2)
    assert slot is not None
    board.set_pid(slot, 42)
    pid = os.fork()
    if pid == 0:  # another process: open the file and check what it reads
        try:
            with Scoreboard.open(path) as view:
                (stats,) = view.slots()
                os._exit(0 if (stats.pid, stats.number, stats.generation) == (42, 3, 2) else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    board.close()
    assert not os.path.exists(path)


def test_a_new_scoreboard_file_replaces_the_old_one_without_touching_its_memory(tmp_path: Path) -> None:
    path = str(tmp_path / "board")
    old = Scoreboard(2, path)
    old.assign(0, 0)
    new = Scoreboard(2, path)  # as the new master of a USR2 upgrade
    assert [s.number for s in old.slots()] == [0]
    old.close()  # not its file any more: left in place
    assert os.path.exists(path)
    new.close()
    assert not os.path.exists(path)


def test_a_scoreboard_file_replaces_symlinks_and_never_writes_where_they_point(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious, not to be truncated\n")
    path = tmp_path / "board"
    predictable = [tmp_path / f"board.{pid}.tmp" for pid in range(os.getpid() - 50, os.getpid() + 51)]
    for link in [*predictable, path]:
        link.symlink_to(victim)
    with Scoreboard(4, str(path)) as board:
        assert board.assign(0, 0) == 0
        assert victim.read_text() == "precious, not to be truncated\n"
        assert all(link.is_symlink() and link.resolve() == victim for link in predictable)
        assert not path.is_symlink() and path.stat().st_size == HEADER_SIZE + 5 * SLOT_SIZE
        with Scoreboard.open(str(path)) as view:
            assert [s.slot for s in view.slots()] == [0]
        names = set(os.listdir(tmp_path)) - {"victim", "board"} - {link.name for link in predictable}
        assert names == set()  # no temporary left
    assert not path.exists()


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_a_scoreboard_file_has_mode_0644_less_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        board = Scoreboard(2, str(tmp_path / "board"))
    finally:
        os.umask(old)
    with board:
        assert stat.S_IMODE((tmp_path / "board").stat().st_mode) == mode


@pytest.mark.parametrize("failing", ["ftruncate", "replace"])
def test_a_scoreboard_file_that_cannot_be_created_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(PreforkError, match=r"cannot create scoreboard file .*: No space left on device"):
        Scoreboard.for_pool(1, str(tmp_path / "board"))
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in a read-only directory")
def test_a_scoreboard_file_in_a_read_only_directory_raises_and_leaves_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir(mode=0o555)
    with pytest.raises(PermissionError):
        Scoreboard(2, str(directory / "board"))
    assert os.listdir(directory) == []


def test_open_refuses_a_file_that_is_not_a_scoreboard(tmp_path: Path) -> None:
    path = tmp_path / "other"
    path.write_bytes(b"x" * 128)
    with pytest.raises(ValueError, match="not a prefork scoreboard"):
        Scoreboard.open(str(path))


def test_workers_report_state_requests_and_denied_connections() -> None:
    server = PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler, workers=1, deny="10.0.0.0/8")
    with serving(server, workers=1):
        board = server.scoreboard
        assert board is not None
        (idle,) = wait_for(lambda: [s for s in board.slots() if s.state is WorkerState.IDLE])
        assert idle.booted_at <= time.time() and idle.requests == 0
        for _ in range(3):
            request_line(address(server), b"one\n")
        with socket.create_connection(address(server)) as client:
            client.sendall(b"sleep 0.5\n")
            (busy,) = wait_for(lambda: [s for s in board.slots() if s.state is WorkerState.BUSY])
            assert busy.pid == idle.pid and busy.busy_for() >= 0
            assert client.recv(100).endswith(b"sleep 0.5\n")
        (after,) = wait_for(
            lambda: [s for s in board.slots() if s.requests == 4 and s.state is WorkerState.IDLE]
        )
        assert after.denied == 0
    assert server.scoreboard is None


def test_a_live_slot_is_never_assigned_again_whatever_its_state_byte_reads() -> None:
    """The master finds free slots in its own record: a worker's slot that reads EMPTY for a
    moment (a store in progress) is not handed to another worker."""
    with Scoreboard(2) as board:
        assert board.assign(0, 0) == 0
        board._memory[HEADER_SIZE + SLOT_SIZE + 12] = WorkerState.EMPTY  # slot 0's state byte
        assert board.assign(1, 0) == 1
        assert board.assign(2, 0) is None
        board.release(0)
        assert board.assign(3, 0) == 0


def test_stores_never_zero_what_they_overwrite() -> None:
    """struct.pack_into zeroes its target before it writes; the scoreboard's stores copy the
    bytes in, so another process never sees a live slot EMPTY or its count at 0 while the
    worker rewrites it."""
    with Scoreboard(1) as board:
        board.assign(0, 0)
        started, finished = inline_writers(board, 0)

        finished(WorkerState.IDLE, 0.0, 1000, 0.5)
        pid = os.fork()
        if pid == 0:  # the worker: rewrites its slot as fast as it can
            try:
                for count in range(1001, 300_000):
                    started(1.0)
                    finished(WorkerState.IDLE, 0.0, count, 0.5)
            finally:
                os._exit(0)
        torn = reads = 0
        try:
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                stats = board.read(0)
                reads += 1
                torn += stats.state is WorkerState.EMPTY or stats.requests < 1000
        finally:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        assert reads > 1000 and torn == 0, f"{torn} of {reads} reads saw a zeroed slot"


def test_a_request_start_is_one_aligned_store_written_before_the_state() -> None:
    # The start time is one aligned 8-byte store (never torn), and request_started writes it
    # before the state: a reader that sees BUSY sees the whole time.
    with Scoreboard(4) as board:
        slot = board.assign(0, 0)
        assert slot is not None
        memory, started_at, state_at, _ = board.request_stores(slot)
        assert started_at.start % 8 == 0 and started_at.stop - started_at.start == 8
        assert memory[state_at] == WorkerState.STARTING
        memory[started_at] = pack_started(12345.5)
        assert board.read(slot).state is WorkerState.STARTING  # the time alone says nothing
        memory[state_at] = WorkerState.BUSY
        stats = board.read(slot)
        assert stats.state is WorkerState.BUSY and stats.request_started == 12345.5
