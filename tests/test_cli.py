"""The ``prefork`` command: what it serves, and every way it refuses bad input (one line, exit 2)."""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from prefork import config
from prefork.cli import build_parser
from tests.conftest import ROOT, CLIServer, request_line

Serve = Callable[..., CLIServer]


def run_cli(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefork", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
        stdin=subprocess.DEVNULL,
        **kwargs,  # type: ignore[call-overload]
    )


def assert_usage_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # one line, no traceback
    assert lines[0].startswith("prefork: error: ")
    for word in words:
        assert word in lines[0]


def test_no_target_serves_the_demo_from_several_workers(serve_cli: Serve) -> None:
    server = serve_cli("--workers", "2")
    server.wait_workers(2)
    url = "http://{}:{}/".format(*server.address)
    seen = set()
    for _ in range(40):
        with urllib.request.urlopen(url, timeout=5) as response:
            seen.add(response.read().decode())
        if len(seen) >= 2:
            break
    assert all(text.startswith("Hello from prefork worker ") for text in seen)
    assert len(seen) == 2
    assert "Listening at http://127.0.0.1:" in server.log
    assert "with 2 sync workers" in server.log


def test_default_address_is_localhost_8000() -> None:
    parser = build_parser()
    assert parser.parse_args([]).bind is None  # main() falls back to DEFAULT_BIND
    from prefork.cli import DEFAULT_BIND

    assert DEFAULT_BIND == "127.0.0.1:8000"


@pytest.mark.parametrize(
    "target",
    [
        "tests.handlers:PidEchoHandler",
        "tests/handlers.py:PidEchoHandler",
        "tests/handlers.py",
        "tests.handlers",
    ],
)
def test_target_forms(serve_cli: Serve, target: str) -> None:
    server = serve_cli(target, "--workers", "1")
    assert request_line(server.address, b"form\n").endswith(b" form\n")


def test_several_binds_tcp_and_unix(serve_cli: Serve, unix_path: str) -> None:
    server = serve_cli(
        "tests.handlers:PidEchoHandler",
        "--bind",
        "127.0.0.1:0",
        "--bind",
        f"unix:{unix_path}",
        "--workers",
        "2",
    )
    server.wait_workers(2)
    assert f"unix:{unix_path}" in server.log
    assert request_line(server.address, b"tcp\n").endswith(b" tcp\n")
    assert request_line(unix_path, b"unix\n").endswith(b" unix\n")


def test_ipv6_bind(serve_cli: Serve) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("::1 is not configured")
    server = serve_cli("tests.handlers:PidEchoHandler", "--bind", "[::1]:0", "--workers", "1")
    text = server.wait_listening()
    port = int(text.rpartition(":")[2])
    with socket.create_connection(("::1", port), timeout=5) as sock:
        sock.sendall(b"v6\n")
        assert sock.makefile("rb").readline().endswith(b" v6\n")


@pytest.mark.parametrize("flag", [["--udp"], []])
def test_udp(serve_cli: Serve, flag: list[str]) -> None:
    # --udp, or implied by a DatagramRequestHandler target
    server = serve_cli("tests.handlers:PidDatagramHandler", *flag, "--workers", "1")
    assert "udp://127.0.0.1:" in server.log
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        client.sendto(b"dgram", server.address)
        assert client.recv(100).endswith(b" dgram")


def test_stale_unix_socket_file_is_replaced(serve_cli: Serve, unix_path: str) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(unix_path)
    stale.close()  # the file stays, nobody listens: what a crash leaves
    serve_cli("tests.handlers:PidEchoHandler", "--bind", f"unix:{unix_path}", "--workers", "1")
    assert request_line(unix_path, b"x\n").endswith(b" x\n")


def test_help_documents_every_flag() -> None:
    done = run_cli("--help")
    assert done.returncode == 0
    for setting in config.SETTINGS:
        for flag in setting.flags:
            assert flag in done.stdout
    for flag in ("--bind", "--udp", "--log-level", "TARGET"):
        assert flag in done.stdout


def test_console_script_and_python_m_agree() -> None:
    script = Path(sys.executable).parent / "prefork"
    if not script.exists():
        pytest.skip("the console script is not installed next to this interpreter")
    done = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=20)
    assert done.stdout == run_cli("--version").stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["nosuchmodule:Handler"], ["cannot import 'nosuchmodule:Handler'", "ModuleNotFoundError"]),
        (["tests/nosuchfile.py:H"], ["no such file"]),
        (["tests.handlers:Missing"], ["has no attribute 'Missing'"]),
        (["os:path"], ["not a socketserver.BaseRequestHandler subclass"]),
        (["tests.conftest"], ["name the handler"]),
        (["--workers", "0"], ["--workers", "positive integer"]),
        (["--workers", "lots"], ["--workers", "must be a number"]),
        (["--graceful-timeout", "-1"], ["--graceful-timeout", ">= 0"]),
        (["--backlog", "0"], ["--backlog"]),
        (["--worker-class", "gevent"], ["--worker-class", "must be one of sync"]),
        (["--log-level", "loud"], ["--log-level", "invalid choice"]),
        (["--no-such-flag"], ["unrecognized arguments"]),
        (["--bind", "nonsense"], ["bad address 'nonsense'"]),
        (["--bind", "127.0.0.1:99999"], ["out of range"]),
        (["--bind", "ftp://127.0.0.1:1"], ["unknown scheme"]),
        (["--bind", "unix:"], ["needs a path"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], words: list[str]) -> None:
    assert_usage_error(run_cli(*args), *words)


def test_a_target_that_raises_on_import(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('broken at import')\n")
    assert_usage_error(run_cli(f"{broken}:H"), "RuntimeError: broken at import")


def test_address_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_usage_error(
            run_cli("--bind", f"127.0.0.1:{port}"), f"cannot bind 127.0.0.1:{port}", "Address already in use"
        )


def test_unix_socket_in_use(unix_path: str) -> None:
    with socket.socket(socket.AF_UNIX) as taken:
        taken.bind(unix_path)
        taken.listen()
        assert_usage_error(run_cli("--bind", f"unix:{unix_path}"), "already listening")


def test_unresolvable_host() -> None:
    assert_usage_error(
        run_cli("--bind", "no-such-host.invalid:8000"), "cannot bind no-such-host.invalid:8000"
    )


def _drop_net_bind_service() -> None:
    """preexec_fn for root: drop CAP_NET_BIND_SERVICE from the bounding set, so the exec'd
    Python cannot bind a privileged port (root's capabilities after exec come from it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(24, 10, 0, 0, 0) != 0:  # PR_CAPBSET_DROP, CAP_NET_BIND_SERVICE
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_permission_denied_bind() -> None:
    """A privileged port without the right to bind it: EACCES, one line, exit 2."""
    path = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    if path.exists() and int(path.read_text()) == 0:
        pytest.skip("every port is unprivileged on this machine")
    kwargs: dict[str, object] = {"preexec_fn": _drop_net_bind_service} if os.geteuid() == 0 else {}
    assert_usage_error(
        run_cli("--bind", "127.0.0.1:1", **kwargs), "cannot bind 127.0.0.1:1", "Permission denied"
    )
