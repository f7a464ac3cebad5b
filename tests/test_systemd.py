"""prefork.systemd (sd_notify, socket activation) and the example units, against real sockets."""

from __future__ import annotations

import configparser
import functools
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from prefork import PreforkTCPServer, systemd
from prefork.cli import build_parser
from tests.conftest import ROOT, ServerProcess, group_processes, request_line, wait_for
from tests.handlers import PidEchoHandler

EXAMPLES = ROOT / "examples" / "systemd"


def short_path(tag: str) -> str:
    """A unique Unix socket path short enough for sun_path (about 107 bytes)."""
    return f"/tmp/prefork-{tag}-{os.getpid()}-{time.monotonic_ns()}.sock"


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's notification socket (``NOTIFY_SOCKET``)."""
    path = short_path("notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        yield sock
    os.unlink(path)


def receive_until(sock: socket.socket, state: str, timeout: float = 10.0) -> list[str]:
    """Collect notification messages until one contains the line ``state``."""
    messages: list[str] = []
    deadline = time.monotonic() + timeout
    while not any(state in m.splitlines() for m in messages):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            raise AssertionError(f"no {state} within {timeout} s; got {messages}") from None
    return messages


# -- notify() ---------------------------------------------------------------------------------


def test_notify_sends_one_datagram(notify_socket: socket.socket) -> None:
    assert systemd.notify("READY=1", "STATUS=2 workers")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=2 workers"


def test_notify_to_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"prefork-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("STOPPING=1")
        assert sock.recv(4096) == b"STOPPING=1"


def test_notify_without_a_manager_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert systemd.notify("READY=1") is False


def test_notify_to_a_dead_socket_returns_false(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody"))
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "@prefork-test-nobody-listens-here")
    assert systemd.notify("READY=1") is False


# -- listen_fds() -----------------------------------------------------------------------------

# Runs in a child, so that fds 3.. of the test process are never touched: moves the passed
# descriptors (argv[1], comma-separated) to 3, 4, ..., sets LISTEN_FDS, and LISTEN_PID to
# argv[2] ("self": this process's pid), then execs argv[3:] (as systemd does before exec).
LAUNCHER = textwrap.dedent(
    """
    import fcntl, os, sys
    fds = [int(fd) for fd in sys.argv[1].split(",") if fd]
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
    for number, fd in enumerate(high):
        os.dup2(fd, 3 + number)  # dup2 leaves the new descriptor inheritable
        os.close(fd)
    os.environ["LISTEN_FDS"] = str(len(fds))
    os.environ["LISTEN_PID"] = str(os.getpid()) if sys.argv[2] == "self" else sys.argv[2]
    os.execv(sys.executable, [sys.executable, *sys.argv[3:]])
    """
)

PROBE = textwrap.dedent(
    """
    import json, os
    from prefork import systemd
    fds = systemd.listen_fds()
    print(json.dumps({
        "fds": fds,
        "inheritable": [os.get_inheritable(fd) for fd in fds],
        "env": sorted(k for k in os.environ if k.startswith("LISTEN_")),
    }))
    """
)


def launch(fds: list[int], listen_pid: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", LAUNCHER, ",".join(map(str, fds)), listen_pid, *args],
        cwd=ROOT,
        pass_fds=fds,
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_listen_fds_for_this_process() -> None:
    import json

    with socket.socket() as one, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as two:
        done = launch([one.fileno(), two.fileno()], "self", "-c", PROBE)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"fds": [3, 4], "inheritable": [False, False], "env": []}


def test_listen_fds_for_another_process_are_ignored() -> None:
    import json

    with socket.socket() as one:
        done = launch([one.fileno()], "1", "-c", PROBE)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"fds": [], "inheritable": [], "env": []}


def test_listen_fds_keeps_the_environment_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", "1")  # not us: no descriptor is touched
    monkeypatch.setenv("LISTEN_FDS", "2")
    assert systemd.listen_fds(unset_environment=False) == []
    assert os.environ["LISTEN_FDS"] == "2"
    assert systemd.listen_fds() == []
    assert "LISTEN_FDS" not in os.environ and "LISTEN_PID" not in os.environ
    monkeypatch.setenv("LISTEN_PID", "garbage")
    assert systemd.listen_fds() == []


def test_listen_fds_environment() -> None:
    assert systemd.listen_fds_environment(2, 1234) == {"LISTEN_FDS": "2", "LISTEN_PID": "1234"}


# -- socket activation end to end -------------------------------------------------------------


class ActivatedServer(ServerProcess):
    """``python -m prefork ARGS`` started as systemd would: ``sockets`` as fds 3.., with
    LISTEN_FDS and LISTEN_PID set, in its own process group."""

    def __init__(self, sockets: list[socket.socket], *args: str) -> None:
        fds = [s.fileno() for s in sockets]
        command = [sys.executable, "-c", LAUNCHER, ",".join(map(str, fds)), "self", "-m", "prefork", *args]
        super().__init__(command, pass_fds=fds)


@pytest.fixture
def activated() -> Iterator[list[ActivatedServer]]:
    started: list[ActivatedServer] = []
    yield started
    for server in started:
        server.destroy()


@pytest.mark.timeout(30)
def test_socket_activation_serves_the_passed_sockets_and_notifies(
    activated: list[ActivatedServer], notify_socket: socket.socket, unix_path: str
) -> None:
    tcp = socket.create_server(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(unix_path)
    unix.listen()
    with tcp, unix:  # kept open, as systemd keeps its own
        server = ActivatedServer(
            [tcp, unix], "tests.handlers:PidEchoHandler", "--workers", "2", "--bind", "127.0.0.1:1"
        )
        activated.append(server)
        assert server.wait_listening() == f"tcp://127.0.0.1:{tcp.getsockname()[1]}"
        assert f"unix:{unix_path}" in server.log
        assert "--bind is ignored" in server.log
        workers = server.wait_workers(2)
        messages = receive_until(notify_socket, "READY=1")
        assert request_line(tcp.getsockname(), b"tcp\n").endswith(b" tcp\n")
        assert request_line(unix_path, b"unix\n").endswith(b" unix\n")
        assert int(request_line(tcp.getsockname(), b"x\n").split()[0]) in workers

        server.signal(signal.SIGTERM)
        messages += receive_until(notify_socket, "STOPPING=1")
        assert server.wait() == 0
        states = [line for m in messages for line in m.splitlines()]
        assert states.index("READY=1") < states.index("STOPPING=1")
        assert os.path.exists(unix_path)  # the manager's socket file is left alone


@pytest.mark.timeout(30)
def test_socket_activation_of_a_datagram_socket(activated: list[ActivatedServer]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        server = ActivatedServer([udp], "tests.handlers:PidDatagramHandler", "--workers", "1")
        activated.append(server)
        assert server.wait_listening() == f"udp://127.0.0.1:{udp.getsockname()[1]}"
        server.wait_workers(1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            client.sendto(b"dgram", udp.getsockname())
            assert client.recv(100).endswith(b" dgram")
        server.signal(signal.SIGTERM)
        assert server.wait() == 0


# -- the example units ------------------------------------------------------------------------


def read_unit(name: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read_string((EXAMPLES / name).read_text(), source=name)
    return unit


def test_example_socket_unit() -> None:
    unit = read_unit("prefork-echo.socket")
    assert unit["Socket"]["ListenStream"]
    assert unit["Install"]["WantedBy"] == "sockets.target"


def test_example_service_unit_names_existing_flags() -> None:
    unit = read_unit("prefork-echo.service")
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "all"  # the new master of a USR2 upgrade sends MAINPID=
    assert service["KillMode"] == "mixed"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "prefork-echo.socket" in unit["Unit"]["Requires"]
    command = shlex.split(service["ExecStart"])
    assert command[0].startswith("/") and command[0].endswith("prefork")
    flags = {flag for action in build_parser()._actions for flag in action.option_strings}
    used = [word.partition("=")[0] for word in command[1:] if word.startswith("-")]
    assert used and set(used) <= flags
    graceful = float(command[command.index("--graceful-timeout") + 1])
    assert float(service["TimeoutStopSec"]) > graceful
    assert "--bind" not in command  # the socket unit says where to listen


# -- the watchdog ------------------------------------------------------------------------------


def test_watchdog_is_off_without_watchdog_usec() -> None:
    watchdog = systemd.Watchdog({}, pid=10)
    assert watchdog.interval == 0 and watchdog.next_at == math.inf
    assert not watchdog.ping(1e9)


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({"WATCHDOG_USEC": "2000000"}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "10"}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, 0.0),  # our parent's
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "99"}, 0.0),  # another process's
        ({"WATCHDOG_USEC": "soon"}, 0.0),
        ({"WATCHDOG_USEC": "-5"}, 0.0),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process(
    environ: dict[str, str], interval: float
) -> None:
    assert systemd.Watchdog(environ, pid=10).interval == interval


def test_watchdog_pings_once_per_interval(notify_socket: socket.socket) -> None:
    watchdog = systemd.Watchdog({"WATCHDOG_USEC": "2000000"}, pid=10)
    sent = [now for now in (100.0, 100.5, 100.99, 101.0, 101.5, 102.2) if watchdog.ping(now)]
    assert sent == [100.0, 101.0, 102.2]
    assert [notify_socket.recv(100) for _ in sent] == [b"WATCHDOG=1"] * 3


@pytest.mark.timeout(30)
def test_the_master_loop_pings_the_watchdog(
    serve_cli: Callable[..., Any], notify_socket: socket.socket
) -> None:
    env = {**os.environ, "WATCHDOG_USEC": "400000"}  # a ping every 0.2 s
    server = serve_cli("tests.handlers:PidEchoHandler", "--workers", "1", env=env)
    server.wait_workers(1)
    start = time.monotonic()
    pings = 0
    while time.monotonic() - start < 1.0:
        pings += "WATCHDOG=1" in receive_until(notify_socket, "WATCHDOG=1", timeout=2)[-1]
    assert 4 <= pings <= 7, pings


@pytest.mark.timeout(30)
def test_watchdog_pings_stop_while_the_master_loop_hangs(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    hang = threading.Event()
    release = threading.Event()

    class Hanging(PreforkTCPServer):
        def service_actions(self) -> None:
            if hang.is_set():
                release.wait(10)  # a hook that hangs the master loop
            super().service_actions()

    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s
    server = Hanging(("127.0.0.1", 0), PidEchoHandler, workers=1)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        receive_until(notify_socket, "WATCHDOG=1")
        hang.set()
        time.sleep(0.3)  # the loop is now stuck in the hook
        while True:  # drain what was sent before it hung
            notify_socket.settimeout(0.01)
            try:
                notify_socket.recv(100)
            except TimeoutError:
                break
        notify_socket.settimeout(1.0)
        with pytest.raises(TimeoutError):
            notify_socket.recv(100)  # no ping for 1 s: systemd would kill the master
        release.set()
        hang.clear()
        receive_until(notify_socket, "WATCHDOG=1", timeout=2)
    finally:
        release.set()
        server.shutdown()
        thread.join(30)
        server.server_close()


def gone(pid: int, pgid: int) -> bool:
    """Whether ``pid`` is no longer a live process of group ``pgid``."""
    return pid not in {p.pid for p in group_processes(pgid)}


def pings_within(sock: socket.socket, seconds: float) -> int:
    """The WATCHDOG=1 messages ``sock`` receives in the next ``seconds``."""
    pings, end = 0, time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            pings += "WATCHDOG=1" in sock.recv(4096).decode().splitlines()
        except TimeoutError:
            break
    return pings


@pytest.mark.timeout(60)
def test_the_watchdog_follows_the_main_pid_through_two_usr2_upgrades(notify_socket: socket.socket) -> None:
    """systemd sets WATCHDOG_PID to the main pid; each new master of a USR2 upgrade is started
    with its own pid there, so it pings once the old master has gone, upgrade after upgrade."""
    launcher = 'WATCHDOG_PID=$$ exec "$0" -m prefork "$@"'  # as systemd: the exec'd master's pid
    args = ["tests.handlers:PidEchoHandler", "--workers", "1", "--bind", "127.0.0.1:0"]
    env = {**os.environ, "WATCHDOG_USEC": "400000"}  # a ping every 0.2 s
    server = ServerProcess(["sh", "-c", launcher, sys.executable, *args], env)
    try:
        server.wait_listening()
        master = server.pid
        assert pings_within(notify_socket, 1.0) >= 3
        for _ in range(2):
            os.kill(master, signal.SIGUSR2)
            old = master
            wait_for(functools.partial(gone, old, server.pid), timeout=20)
            (master,) = [
                p.pid for p in group_processes(server.pid) if "prefork: master" in " ".join(p.cmdline())
            ]
            pings_within(notify_socket, 0.3)  # what was sent during the upgrade
            assert pings_within(notify_socket, 1.0) >= 3, f"master {master} does not ping"
    finally:
        server.destroy()
