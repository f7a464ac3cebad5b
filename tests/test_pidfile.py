"""The pid file: written without following symlinks, one master per file, taken over on USR2."""

from __future__ import annotations

import logging
import os
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from prefork.errors import PreforkError
from prefork.pidfile import Pidfile, master_running
from tests.conftest import CLIServer, request_line, wait_for

Serve = Callable[..., CLIServer]
HANDLER = "tests.handlers:PidEchoHandler"
VICTIM_TEXT = "precious, not to be overwritten\n"


def plant_symlinks(path: Path, victim: Path) -> list[Path]:
    """Symlinks to ``victim`` at every name an attacker could predict for ``path``'s
    temporary file (``PATH.PID.tmp`` for pids around ours) and at ``path`` itself."""
    links = [path.with_name(f"{path.name}.{pid}.tmp") for pid in range(os.getpid() - 50, os.getpid() + 51)]
    for link in [*links, path]:
        link.symlink_to(victim)
    return links


def assert_untouched(victim: Path, links: list[Path]) -> None:
    assert victim.read_text() == VICTIM_TEXT
    assert all(link.is_symlink() and link.resolve() == victim for link in links)


def leftovers(directory: Path, *expected: str) -> list[str]:
    """Names in ``directory`` other than ``expected``: temporaries left behind."""
    return sorted(set(os.listdir(directory)) - set(expected))


@pytest.fixture
def fake_master() -> Iterator[subprocess.Popen[str]]:
    """A process titled as a prefork master (``prefork: master [fake]``) that is not one."""
    code = (
        "import setproctitle, sys, time\n"
        "setproctitle.setproctitle('prefork: master [fake]')\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    yield proc
    proc.kill()
    proc.wait(10)
    proc.stdout.close()


def finished_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(10)
    return proc.pid


# -- writing the file -------------------------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_create_writes_our_pid_with_mode_0644_less_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    path = tmp_path / "prefork.pid"
    old = os.umask(umask)
    try:
        Pidfile(str(path)).create()
    finally:
        os.umask(old)
    assert path.read_text() == f"{os.getpid()}\n"
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert leftovers(tmp_path, "prefork.pid") == []


def test_create_replaces_symlinks_and_never_writes_where_they_point(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text(VICTIM_TEXT)
    path = tmp_path / "prefork.pid"
    links = plant_symlinks(path, victim)
    Pidfile(str(path)).create()
    assert_untouched(victim, links)
    assert not path.is_symlink() and stat.S_ISREG(path.lstat().st_mode)
    assert path.read_text() == f"{os.getpid()}\n"
    assert leftovers(tmp_path, "prefork.pid", "victim", *(link.name for link in links)) == []


def test_a_failed_create_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        Pidfile(str(tmp_path / "prefork.pid")).create()
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in a read-only directory")
def test_create_in_a_read_only_directory_raises_and_leaves_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir(mode=0o555)
    with pytest.raises(PermissionError):
        Pidfile(str(directory / "prefork.pid")).create()
    assert leftovers(directory) == []


# -- one master per file ----------------------------------------------------------------------


def test_master_running_is_true_only_for_a_live_process_titled_as_a_master(
    fake_master: subprocess.Popen[str],
) -> None:
    assert master_running(fake_master.pid)
    assert not master_running(os.getpid())  # pytest: not a master
    assert not master_running(finished_pid())
    assert not master_running(0) and not master_running(-1)


def test_create_refuses_a_file_naming_another_running_master(
    tmp_path: Path, fake_master: subprocess.Popen[str]
) -> None:
    path = tmp_path / "prefork.pid"
    path.write_text(f"{fake_master.pid}\n")
    message = f"pid file {path}: already running as pid {fake_master.pid}"
    with pytest.raises(PreforkError, match=f"^{re.escape(message)}$"):
        Pidfile(str(path)).create()
    assert path.read_text() == f"{fake_master.pid}\n"
    assert leftovers(tmp_path, "prefork.pid") == []


def test_the_new_master_of_an_upgrade_takes_the_file_over(
    tmp_path: Path, fake_master: subprocess.Popen[str], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "prefork.pid"
    path.write_text(f"{fake_master.pid}\n")
    with caplog.at_level(logging.INFO, logger="prefork"):
        Pidfile(str(path)).create(takeover_from=fake_master.pid)
    assert path.read_text() == f"{os.getpid()}\n"
    assert "stale" not in caplog.text


@pytest.mark.parametrize(
    ("content", "named"),
    [
        (lambda: f"{finished_pid()}\n", "not a running prefork master"),
        (lambda: f"{os.getppid()}\n", "not a running prefork master"),  # alive, not a master
        (lambda: "garbage\n", "no pid"),
        (lambda: "", "no pid"),
    ],
    ids=["dead-pid", "other-program", "garbage", "empty"],
)
def test_a_stale_file_is_replaced_with_an_info_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: Callable[[], str], named: str
) -> None:
    path = tmp_path / "prefork.pid"
    path.write_text(content())
    with caplog.at_level(logging.INFO, logger="prefork"):
        Pidfile(str(path)).create()
    assert path.read_text() == f"{os.getpid()}\n"
    assert f"Replacing the stale pid file {path}" in caplog.text and named in caplog.text


def test_remove_deletes_the_file_only_while_it_holds_our_pid(tmp_path: Path) -> None:
    path = tmp_path / "prefork.pid"
    pidfile = Pidfile(str(path))
    pidfile.remove()  # no file: nothing to do, no error
    pidfile.create()
    path.write_text("1\n")  # taken over by another master
    pidfile.remove()
    assert path.read_text() == "1\n"
    pidfile.create()
    pidfile.remove()
    assert not path.exists()


@pytest.mark.timeout(10)
def test_a_fifo_at_the_path_is_neither_read_nor_waited_on(tmp_path: Path) -> None:
    path = tmp_path / "prefork.pid"
    os.mkfifo(path)
    pidfile = Pidfile(str(path))
    pidfile.remove()  # would block forever opening the FIFO for reading
    assert stat.S_ISFIFO(path.lstat().st_mode)
    pidfile.create()
    assert path.read_text() == f"{os.getpid()}\n"


# -- real masters -----------------------------------------------------------------------------


def test_a_second_master_on_the_same_pidfile_exits_2_and_the_first_serves_on(
    serve_cli: Serve, tmp_path: Path
) -> None:
    pidfile = tmp_path / "prefork.pid"
    first = serve_cli(HANDLER, "--workers", "1", "--pidfile", str(pidfile))
    first.wait_workers(1)
    second = serve_cli(HANDLER, "--workers", "1", "--pidfile", str(pidfile), wait=False)
    assert second.wait(20) == 2, second.log
    second.wait_logged("already running")
    lines = second.log.strip().splitlines()
    assert len(lines) == 1, second.log
    assert lines[0] == f"prefork: error: pid file {pidfile}: already running as pid {first.pid}"
    assert pidfile.read_text() == f"{first.pid}\n"
    assert request_line(first.address, b"still\n").endswith(b" still\n")
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    assert not pidfile.exists()


@pytest.mark.parametrize(
    "content",
    [lambda: f"{finished_pid()}\n", lambda: f"{os.getpid()}\n", lambda: "garbage"],
    ids=["dead-pid", "pytest-pid", "garbage"],
)
def test_a_master_takes_over_a_stale_pidfile(
    serve_cli: Serve, tmp_path: Path, content: Callable[[], str]
) -> None:
    pidfile = tmp_path / "prefork.pid"
    pidfile.write_text(content())
    server = serve_cli(HANDLER, "--workers", "1", "--pidfile", str(pidfile))
    server.wait_workers(1)
    assert pidfile.read_text() == f"{server.pid}\n"
    assert f"Replacing the stale pid file {pidfile}" in server.log
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert not pidfile.exists()


def test_usr2_hands_the_pidfile_to_the_new_master(serve_cli: Serve, tmp_path: Path) -> None:
    pidfile = tmp_path / "prefork.pid"
    server = serve_cli(HANDLER, "--workers", "1", "--pidfile", str(pidfile))
    server.wait_workers(1)
    server.signal(signal.SIGUSR2)
    assert server.wait(15) == 0, server.log  # the old master retires once the new pool is ready
    new = int(wait_for(lambda: pidfile.read_text().strip() != str(server.pid) and pidfile.read_text()))
    assert master_running(new) and "already running" not in server.log
    worker = int(request_line(server.address, b"x\n").split()[0])
    assert worker != new and os.getpgid(worker) == server.pid
    os.kill(new, signal.SIGTERM)
    wait_for(lambda: not pidfile.exists(), timeout=10)
    wait_for(lambda: not master_running(new), timeout=10)
