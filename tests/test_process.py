"""The master as a process: user/group, umask, pid file, Unix socket mode, and running as PID 1."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, CLIServer, ServerProcess, live_children, request_line, wait_for

Serve = Callable[..., CLIServer]

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


@needs_root
def test_workers_run_as_user_and_group_while_the_master_stays_root(serve_cli: Serve) -> None:
    try:
        import grp
        import pwd

        uid, gid = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    except KeyError:
        pytest.skip("no user nobody or group nogroup on this machine")
    server = serve_cli(
        "tests.handlers:PidEchoHandler", "--workers", "2", "--user", "nobody", "--group", "nogroup"
    )
    workers = server.wait_workers(2)
    master = psutil.Process(server.pid)
    assert tuple(master.uids()) == (0, 0, 0)
    for pid in workers:
        process = psutil.Process(pid)
        assert tuple(process.uids()) == (uid, uid, uid)
        assert tuple(process.gids()) == (gid, gid, gid)
    reply = request_line(server.address, b"who\n")
    assert int(reply.split()[0]) in workers


def test_pidfile_holds_the_master_pid_while_serving(serve_cli: Serve, tmp_path: Path) -> None:
    pidfile = tmp_path / "prefork.pid"
    server = serve_cli("tests.handlers:PidEchoHandler", "--workers", "1", "--pidfile", str(pidfile))
    server.wait_workers(1)
    assert pidfile.read_text().strip() == str(server.pid)
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert not pidfile.exists()


def _umask(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise AssertionError(f"no Umask line in /proc/{pid}/status")


def test_umask_is_the_masters_and_the_workers(serve_cli: Serve) -> None:
    if not Path(f"/proc/{os.getpid()}/status").exists():
        pytest.skip("needs /proc")
    server = serve_cli("tests.handlers:PidEchoHandler", "--workers", "1", "--umask", "077")
    (worker,) = server.wait_workers(1)
    assert _umask(server.pid) == 0o077
    assert _umask(worker) == 0o077


@pytest.mark.parametrize(("flag", "mode"), [("660", 0o660), ("0o600", 0o600)])
def test_unix_socket_mode(serve_cli: Serve, unix_path: str, flag: str, mode: int) -> None:
    serve_cli(
        "tests.handlers:PidEchoHandler",
        "--bind",
        f"unix:{unix_path}",
        "--workers",
        "1",
        "--unix-socket-mode",
        flag,
    )
    info = os.stat(unix_path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == mode
    assert request_line(unix_path, b"x\n").endswith(b" x\n")


# -- the master as PID 1 (as in a container) ----------------------------------------------------


UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]


def in_namespace(*args: str) -> list[str]:
    """The command running ``python -m prefork ARGS`` as PID 1 of a new PID namespace."""
    return [*UNSHARE, sys.executable, "-m", "prefork", *args]


@pytest.fixture
def pid_namespace() -> Iterator[list[ServerProcess]]:
    """Skip unless this machine lets us create a PID namespace; kill what the test started."""
    try:
        done = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        pytest.skip("unshare (util-linux) is not installed")
    if done.returncode != 0:
        pytest.skip(f"cannot create a PID namespace here: {done.stderr.strip()}")
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.destroy()  # SIGKILLs the process group: unshare and the master (its own group)


def _master_of(server: ServerProcess) -> psutil.Process:
    """The master: the child of unshare, PID 1 in the new namespace."""
    children = wait_for(lambda: live_children(server.pid), timeout=10)
    assert len(children) == 1, children
    return psutil.Process(children[0].pid)


@pytest.mark.timeout(40)
def test_master_as_pid_1_serves_and_stops_cleanly_on_term(pid_namespace: list[ServerProcess]) -> None:
    server = ServerProcess(
        in_namespace("tests.handlers:PidEchoHandler", "--bind", "127.0.0.1:0", "--workers", "2")
    )
    pid_namespace.append(server)
    server.wait_listening()
    assert "(master pid 1)" in server.log
    master = _master_of(server)
    wait_for(lambda: len(live_children(master.pid)) == 2, timeout=10)
    reply = request_line(server.address, b"ns\n")
    assert reply.endswith(b" ns\n")
    assert int(reply.split()[0]) != 1  # a worker, numbered in the namespace
    workers = live_children(master.pid)
    master.send_signal(signal.SIGTERM)  # from outside the namespace: delivered, a handler is set
    assert server.wait(20) == 0  # unshare --fork exits with the master's status
    assert "Received SIGTERM" in server.log
    for worker in workers:
        assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE
    with pytest.raises(OSError):
        socket.create_connection(server.address, timeout=1).close()


def test_a_pidfile_that_cannot_be_written_is_a_usage_error(tmp_path: Path) -> None:
    pidfile = tmp_path / "no-such-dir" / "prefork.pid"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefork",
            "tests.handlers:PidEchoHandler",
            "-b",
            "127.0.0.1:0",
            "--pidfile",
            str(pidfile),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prefork: error: "), done.stderr
    assert "pid" in lines[0]


@needs_root
def test_a_worker_that_cannot_import_as_its_user_tells_the_master_why() -> None:
    """A module the worker's user cannot read (a directory of mode 0700): the master's log
    names the module, the user and the directory, and no "Logging error" is printed."""
    try:
        import pwd

        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody on this machine")
    base = Path(tempfile.mkdtemp(prefix="prefork-user-"))
    try:
        base.chmod(0o755)
        private = base / "private"
        private.mkdir(mode=0o700)
        helper = f"secret_helper_{os.getpid()}"
        (private / f"{helper}.py").write_text("VALUE = 1\n")
        app = base / f"user_app_{os.getpid()}.py"
        app.write_text(
            "import os, socketserver, sys\n"
            "sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'private'))\n"
            f"import {helper}\n\n\n"
            "class Handler(socketserver.StreamRequestHandler):\n"
            "    def handle(self):\n"
            "        self.wfile.write(b'hello')\n"
        )
        app.chmod(0o644)
        done = subprocess.run(
            [sys.executable, "-m", "prefork", f"{app}:Handler", "--bind", "127.0.0.1:0", "--user", "nobody"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    finally:
        shutil.rmtree(base)
    assert done.returncode == 3, done.stderr  # workers kept failing to boot
    assert f"cannot import {helper} as user nobody: Permission denied" in done.stderr, done.stderr
    assert f"not readable as nobody: {private}" in done.stderr
    assert "Logging error" not in done.stderr
