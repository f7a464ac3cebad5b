"""The control socket (prefork/control.py) as served by a real master: the commands, the
default path, the counters it reports, and clients that misbehave."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from prefork import control, ctl
from prefork.control import Command, parse_command
from tests.conftest import CLIServer, request_line, wait_for
from tests.faults.procs import wait_pool

Serve = Callable[..., CLIServer]
ECHO = "tests.faults.handlers:EchoHandler"
FAULTS = "tests.faults.handlers:FaultHandler"


def status(path: str) -> dict[str, Any]:
    snapshot: dict[str, Any] = ctl.call(path, {"command": "status"})["status"]
    return snapshot


def raw(path: str, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a new connection and read until the master closes it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the master answered and closed before reading it all
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass
        return reply


# -- the request format, without a master ------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        ({"command": "status"}, Command("status")),
        ({"command": "workers", "count": 3}, Command("workers", 3)),
        ({"command": "add"}, Command("add", 1)),
        ({"command": "remove", "count": 2}, Command("remove", 2)),
        ({"command": "stop"}, Command("stop")),
        ({"command": "stop", "mode": "fast"}, Command("stop", fast=True)),
        ({"command": "reload"}, Command("reload")),
    ],
)
def test_valid_requests_parse(request_: dict[str, Any], expected: Command) -> None:
    assert parse_command(request_) == expected


@pytest.mark.parametrize(
    "request_",
    [
        [],
        "status",
        {"command": "explode"},
        {"command": "workers"},
        {"command": "workers", "count": 0},
        {"command": "workers", "count": "3"},
        {"command": "workers", "count": True},
        {"command": "add", "count": -1},
        {"command": "stop", "mode": "now"},
        {"command": "x" * 10_000},
    ],
)
def test_invalid_requests_are_refused_in_one_line(request_: Any) -> None:
    with pytest.raises(ValueError) as error:
        parse_command(request_)
    assert "\n" not in str(error.value) and len(str(error.value)) < 200


# -- a real master -------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_the_default_socket_is_private_logged_and_removed(serve_cli: Serve, tmp_path: Path) -> None:
    server = serve_cli(ECHO, "--workers", "1", "--name", "web/1 ../x")
    runtime = Path(os.environ["XDG_RUNTIME_DIR"]) / "prefork"
    path = runtime / f"web_1_.._x-{server.pid}.sock"
    server.wait_logged(f"Control socket at {path}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(runtime.stat().st_mode) == 0o700
    snapshot = status(str(path))
    assert snapshot["name"] == "web/1 ../x" and snapshot["master_pid"] == server.pid
    assert snapshot["control_socket"] == str(path)
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert not path.exists()


@pytest.mark.timeout(30)
def test_control_socket_off(serve_cli: Serve) -> None:
    server = serve_cli(ECHO, "--workers", "1", "--control-socket", "off")
    wait_pool(server.pid, 1)
    assert "Control socket at" not in server.log


@pytest.mark.timeout(30)
def test_a_live_socket_of_another_server_is_refused(serve_cli: Serve, unix_path: str) -> None:
    first = serve_cli(ECHO, "--workers", "1", "--control-socket", unix_path)
    first.wait_logged("Control socket at")
    second = serve_cli(ECHO, "--workers", "1", "--control-socket", unix_path, wait=False)
    assert second.wait(10) == 2
    assert "another server listens there" in second.log
    assert status(unix_path)["master_pid"] == first.pid  # the first one's socket is untouched


@pytest.mark.timeout(60)
def test_commands_resize_reload_and_stop_the_pool(serve_cli: Serve, unix_path: str) -> None:
    server = serve_cli(ECHO, "--workers", "2", "--control-socket", unix_path)
    first = wait_pool(server.pid, 2)
    assert ctl.call(unix_path, {"command": "workers", "count": 4})["workers"] == 4
    wait_pool(server.pid, 4)
    assert ctl.call(unix_path, {"command": "remove", "count": 3})["workers"] == 1
    wait_pool(server.pid, 1)
    assert ctl.call(unix_path, {"command": "add"})["workers"] == 2
    now = wait_pool(server.pid, 2)
    with pytest.raises(ctl.CommandRefused, match="the pool can have 1 to 256 workers; it has 2"):
        ctl.call(unix_path, {"command": "remove", "count": 5})
    with pytest.raises(ctl.CommandRefused, match="the pool can have 1 to 256 workers"):
        ctl.call(unix_path, {"command": "workers", "count": 5000})
    assert status(unix_path)["workers_wanted"] == 2  # refused: nothing done
    assert wait_pool(server.pid, 2) == now
    assert ctl.call(unix_path, {"command": "reload"}) == {"ok": True}
    reloaded = wait_pool(server.pid, 2, without=now)
    assert not reloaded & first
    snapshot = wait_for(
        lambda: (s := status(unix_path))["generation"] == 1 and s["restarts"]["reload"] == 2 and s
    )
    assert snapshot["restarts"]["resize"] >= 3
    assert ctl.call(unix_path, {"command": "reopen"}) == {"ok": True}
    server.wait_logged("reopening log files")
    assert ctl.call(unix_path, {"command": "stop"}) == {"ok": True}
    assert server.wait(15) == 0
    assert "Received SIGTERM" in server.log


@pytest.mark.timeout(60)
def test_on_a_dynamic_pool_resize_commands_move_max_workers(serve_cli: Serve, unix_path: str) -> None:
    """TTIN/TTOU and workers/add/remove move a dynamic pool's upper bound (and its lower one
    when they meet); the pool itself stays within them."""
    server = serve_cli(
        ECHO, "--workers", "2", "--min-workers", "2", "--max-workers", "3", "--control-socket", unix_path
    )
    wait_pool(server.pid, 2)
    snapshot = status(unix_path)
    assert (snapshot["min_workers"], snapshot["max_workers"], snapshot["workers_wanted"]) == (2, 3, 2)
    reply = ctl.call(unix_path, {"command": "add", "count": 2})
    assert (reply["min_workers"], reply["max_workers"], reply["workers"]) == (2, 5, 2)
    server.signal(signal.SIGTTIN)
    wait_for(lambda: status(unix_path)["max_workers"] == 6)
    server.wait_logged("raising the dynamic pool's max_workers to 6 (min_workers 2)")
    reply = ctl.call(unix_path, {"command": "workers", "count": 1})
    assert (reply["min_workers"], reply["max_workers"], reply["workers"]) == (1, 1, 1)
    wait_pool(server.pid, 1)
    server.signal(signal.SIGTTOU)  # at its minimum of 1: said, nothing done
    server.wait_logged("Received SIGTTOU, but the pool is at its minimum of 1 worker.")
    assert status(unix_path)["max_workers"] == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker_class", ["sync", "thread"])
def test_counters_survive_recycling_and_count_restarts_by_cause(
    serve_cli: Serve, unix_path: str, worker_class: str
) -> None:
    flags = ["--workers", "2", "-k", worker_class, "--max-requests", "5", "--control-socket", unix_path]
    server = serve_cli(FAULTS, *flags)
    wait_pool(server.pid, 2)
    for _ in range(30):
        assert request_line(server.address, b"hello\n").endswith(b"hello\n")
    request_line(server.address, b"raise\n")  # the handler raises: an error, counted
    snapshot = wait_for(
        lambda: (
            (s := status(unix_path))["restarts"]["max_requests"] >= 5 and s["totals"]["requests"] == 31 and s
        )
    )
    totals = snapshot["totals"]
    assert totals["requests"] == 31 and totals["errors"] == 1
    assert sum(totals["duration_counts"]) == 31 and totals["busy_seconds"] > 0
    # One that will not recycle meanwhile (no request comes), so its exit is a crash.
    victim = wait_for(
        lambda: [w["pid"] for w in status(unix_path)["workers"] if w["state"] == "idle" and w["requests"] < 5]
    )[0]
    os.kill(victim, signal.SIGKILL)
    after = wait_for(lambda: (s := status(unix_path))["restarts"]["crash"] == 1 and s)
    assert after["totals"]["requests"] >= 31  # the killed worker's counts were folded in
    outsider = wait_for(lambda: [w["pid"] for w in status(unix_path)["workers"] if w["state"] == "idle"])[0]
    os.kill(outsider, signal.SIGTERM)  # from outside: a clean exit the master did not ask for
    wait_for(lambda: status(unix_path)["restarts"]["external"] == 1)
    server.signal(signal.SIGHUP)
    reloaded = wait_for(
        lambda: (s := status(unix_path))["generation"] == 1 and s["restarts"]["reload"] == 2 and s
    )
    assert reloaded["totals"]["requests"] >= 31 and reloaded["boot_failures"] == 0


@pytest.mark.timeout(60)
def test_misbehaving_clients_never_stop_the_master(serve_cli: Serve, unix_path: str) -> None:
    server = serve_cli(ECHO, "--workers", "2", "--control-socket", unix_path)
    workers = wait_pool(server.pid, 2)
    silent = []
    for _ in range(control.MAX_CLIENTS + 4):  # more than are served at once; they say nothing
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(unix_path)
        silent.append(sock)
    started = time.monotonic()
    assert request_line(server.address, b"still served\n").endswith(b"still served\n")
    os.kill(next(iter(workers)), signal.SIGKILL)  # the master still supervises
    wait_pool(server.pid, 2, without=workers & {next(iter(workers))})
    # The silent clients are closed after CLIENT_TIMEOUT (those over MAX_CLIENTS at once).
    for sock in silent:
        sock.settimeout(control.CLIENT_TIMEOUT + 3)
        assert sock.recv(10) == b""
        sock.close()
    assert time.monotonic() - started < control.CLIENT_TIMEOUT + 3
    garbage = json.loads(raw(unix_path, b"\x00\xff{{{ not json\n"))
    assert garbage["ok"] is False
    huge = raw(unix_path, b"x" * 10 * 1024 * 1024)  # 10 MB, no newline
    assert json.loads(huge) == {"ok": False, "error": f"request over {control.MAX_REQUEST} bytes"}
    unknown = json.loads(raw(unix_path, b'{"command": "rm -rf /"}\n'))
    assert unknown["ok"] is False and "unknown command" in unknown["error"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as vanished:  # half a request, gone
        vanished.connect(unix_path)
        vanished.sendall(b'{"command": "sta')
    assert status(unix_path)["master_pid"] == server.pid
    assert server.proc.poll() is None


@pytest.mark.timeout(30)
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another uid")
def test_another_user_is_refused_by_peer_credentials(serve_cli: Serve, tmp_path: Path) -> None:
    directory = tmp_path / "open"
    directory.mkdir()
    directory.chmod(0o755)
    for parent in directory.parents:  # let nobody reach it: only SO_PEERCRED stands in the way
        if parent == Path("/tmp") or parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o011)
    path = str(directory / "control.sock")
    server = serve_cli(ECHO, "--workers", "1", "--control-socket", path)
    server.wait_logged("Control socket at")
    os.chmod(path, 0o666)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the other user
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, raw(path, b'{"command": "stop", "mode": "fast"}\n'))
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        reply = json.loads(pipe.read())
    os.waitpid(pid, 0)
    assert reply == {"ok": False, "error": "permission denied (another user)"}
    assert status(path)["master_pid"] == server.pid and server.proc.poll() is None


@pytest.mark.timeout(30)
@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs prlimit (Linux)")
def test_running_out_of_descriptors_pauses_the_control_socket_without_spinning(
    serve_cli: Serve, unix_path: str
) -> None:
    server = serve_cli(ECHO, "--workers", "1", "--control-socket", unix_path)
    wait_pool(server.pid, 1)
    master = psutil.Process(server.pid)
    in_use = master.num_fds()
    soft, hard = resource.prlimit(server.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (in_use + 2, hard))
    clients = []
    try:
        for _ in range(8):  # accept() fails with EMFILE for most: they wait in the queue
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(unix_path)
            clients.append(sock)
        before = master.cpu_times()
        time.sleep(1.5)
        after = master.cpu_times()
        busy = (after.user + after.system) - (before.user + before.system)
        assert busy < 0.3, f"the master spun: {busy:.2f} s of CPU in 1.5 s"
        assert server.log.count("Control socket: accept failed") <= 5
    finally:
        resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (soft, hard))
        for sock in clients:
            sock.close()
    assert wait_for(lambda: status(unix_path))["master_pid"] == server.pid  # accepting again


@pytest.mark.timeout(60)
def test_prefork_status_and_ctl_find_a_server_started_with_no_flags(serve_cli: Serve) -> None:
    """The commands an operator runs, as processes: the server is found in the runtime
    directory by its pid (other tests' servers may be there too)."""
    server = serve_cli(ECHO, "--workers", "2")
    wait_pool(server.pid, 2)
    command = [sys.executable, "-m", "prefork"]
    shown = subprocess.run(
        [*command, "status", "--pid", str(server.pid), "--json"], capture_output=True, timeout=20
    )
    assert shown.returncode == 0, shown.stderr
    snapshot = json.loads(shown.stdout)
    assert snapshot["master_pid"] == server.pid and len(snapshot["workers"]) == 2
    assert all(worker["rss"] > 0 for worker in snapshot["workers"])  # psutil, read by the client
    table = subprocess.run(
        [*command, "status", "--pid", str(server.pid), "--interval", "0.2"], capture_output=True, timeout=20
    )
    assert table.returncode == 0 and f"master pid {server.pid}" in table.stdout.decode()
    done = subprocess.run(
        [*command, "ctl", "--pid", str(server.pid), "workers", "3"], capture_output=True, timeout=20
    )
    assert done.returncode == 0 and b"3 workers" in done.stdout
    wait_pool(server.pid, 3)
    refused = subprocess.run(
        [*command, "ctl", "--pid", str(server.pid), "workers", "100000"], capture_output=True, timeout=20
    )
    assert refused.returncode == 1 and refused.stderr.count(b"\n") == 1
