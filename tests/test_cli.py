"""The ``prefork`` command: what it serves, and every way it refuses bad input (one line, exit 2)."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import site
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from prefork import config
from prefork.cli import _unlink_unused, build_parser
from tests.conftest import ROOT, CLIServer, request_line, wait_for

Serve = Callable[..., CLIServer]


def run_cli(*args: str, preexec_fn: Callable[[], object] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefork", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
        stdin=subprocess.DEVNULL,
        preexec_fn=preexec_fn,
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
    with socket.create_connection(server.address, timeout=5) as held:
        held.sendall(b"GET / HTTP/1.0\r\n")  # one worker now waits for the rest of the request
        time.sleep(0.2)
        with urllib.request.urlopen(url, timeout=5) as response:  # so the other one answers
            seen.add(response.read().decode())
        held.sendall(b"\r\n")
        seen.add(held.makefile("rb").read().decode().partition("\r\n\r\n")[2])
    assert all(text.startswith("Hello from prefork worker ") for text in seen)
    assert len(seen) == 2
    assert "Listening at http://127.0.0.1:" in server.log
    assert "with 2 sync workers" in server.log


def test_default_address_is_localhost_8000() -> None:
    parser = build_parser()
    assert not hasattr(parser.parse_args([]), "bind")  # not given: the file, env or default decide
    from prefork.cli import DEFAULT_BIND

    assert DEFAULT_BIND == "127.0.0.1:8000"
    from prefork.config.commandline import BIND

    assert BIND.default == (DEFAULT_BIND,)


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
    for setting in config.ALL_SETTINGS:
        for flag in setting.flags:
            assert flag in done.stdout
    for flag in ("--bind", "--udp", "--log-level", "TARGET", "--config", "--print-config"):
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
        (["os:path"], ["neither a socketserver.BaseRequestHandler subclass nor a WSGI application"]),
        (["tests.conftest"], ["name the handler"]),
        (["--workers", "0"], ["--workers", "positive integer"]),
        (["--workers", "lots"], ["--workers", "must be a number"]),
        (["--graceful-timeout", "-1"], ["--graceful-timeout", ">= 0"]),
        (["--socket-timeout", "inf"], ["--socket-timeout", "seconds from 0 to"]),
        (["--timeout", "1e12"], ["--timeout", "seconds from 0 to"]),
        (["--workers", "100000"], ["--workers", "1 to 1024"]),
        (["--backlog", "0"], ["--backlog"]),
        (["--worker-class", "gevent"], ["--worker-class", "must be one of sync"]),
        (["--log-level", "loud"], ["--log-level", "invalid choice"]),
        (["--no-such-flag"], ["unrecognized arguments"]),
        (["--bind", "nonsense"], ["bad address 'nonsense'"]),
        (["--bind", "127.0.0.1:99999"], ["out of range"]),
        (["--bind", "ftp://127.0.0.1:1"], ["unknown scheme"]),
        (["--bind", "unix:"], ["needs a path"]),
        (["--allow", "10.0.0.1/8"], ["--allow", "host bits set; did you mean 10.0.0.0/8?"]),
        (["tests.handlers:PidEchoHandler", "--udp"], ["PidEchoHandler is a stream handler", "datagrams"]),
        (["--bind", "unix:README.md"], ["cannot bind unix:README.md", "not a socket"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], words: list[str]) -> None:
    assert_usage_error(run_cli(*args), *words)


def test_a_target_that_raises_on_import(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('broken at import')\n")
    assert_usage_error(run_cli(f"{broken}:H"), "RuntimeError: broken at import")


def assert_address_in_use(done: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit status 4 (retryable), after 4 warnings of a retry, with one error line."""
    assert done.returncode == 4, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 5 and all("retrying in 1 s" in line for line in lines[:4]), done.stderr
    assert lines[-1].startswith("prefork: error: ") and "tried 5 times" in lines[-1]
    for word in words:
        assert word in lines[-1]


def test_address_in_use_is_retried_then_exit_4() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("--bind", f"127.0.0.1:{port}")
        assert_address_in_use(done, f"cannot bind 127.0.0.1:{port}", "Address already in use")


def test_unix_socket_in_use_is_retried_then_exit_4(unix_path: str) -> None:
    with socket.socket(socket.AF_UNIX) as taken:
        taken.bind(unix_path)
        taken.listen()
        assert_address_in_use(run_cli("--bind", f"unix:{unix_path}"), "already listening")


def test_an_address_freed_while_retrying_is_bound() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    threading.Timer(1.5, taken.close).start()  # as the workers of a killed master finish
    server = subprocess.Popen(
        [sys.executable, "-m", "prefork", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def served() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:  # still the other listener (reset when it closes), or not yet bound
            return False

    try:
        wait_for(served, 15)
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=20)
    assert server.returncode == 0
    assert "retrying in 1 s" in err


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
    preexec_fn = _drop_net_bind_service if os.geteuid() == 0 else None
    assert_usage_error(
        run_cli("--bind", "127.0.0.1:1", preexec_fn=preexec_fn),
        "cannot bind 127.0.0.1:1",
        "Permission denied",
    )


# -- --preload, and TARGET imported afresh by each worker without it --------------------------

HANDLER_SOURCE = """\
import socketserver


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        self.rfile.readline()
        self.wfile.write({reply!r})
"""


def _write_handler(path: Path, reply: bytes) -> None:
    # A different reply length changes the file size, so no stale bytecode can be used.
    path.write_text(HANDLER_SOURCE.format(reply=reply))


def _reload(server: CLIServer, old: set[int]) -> None:
    """HUP the master and wait until the worker has been replaced."""
    server.signal(signal.SIGHUP)
    wait_for(lambda: server.worker_pids().isdisjoint(old) and server.wait_workers(1), timeout=15)


@pytest.mark.timeout(40)
@pytest.mark.parametrize(("preload", "after_hup"), [(False, b"version two\n"), (True, b"v1\n")])
def test_hup_serves_edited_code_unless_preloaded(
    serve_cli: Serve, tmp_path: Path, preload: bool, after_hup: bytes
) -> None:
    app = tmp_path / f"edited_app_{int(preload)}.py"
    _write_handler(app, b"v1\n")
    server = serve_cli(f"{app}:Handler", "--workers", "1", *(["--preload"] if preload else []))
    old = server.wait_workers(1)
    assert request_line(server.address, b"x\n") == b"v1\n"
    _write_handler(app, b"version two\n")
    _reload(server, old)
    assert request_line(server.address, b"x\n") == after_hup


@pytest.mark.timeout(40)
def test_a_worker_that_cannot_import_the_edited_target_fails_to_boot(
    serve_cli: Serve, tmp_path: Path
) -> None:
    app = tmp_path / "breaks_later.py"
    _write_handler(app, b"v1\n")
    server = serve_cli(f"{app}:Handler", "--workers", "1")
    server.wait_workers(1)
    app.write_text("raise RuntimeError('broken after the start')\n")
    server.signal(signal.SIGHUP)
    wait_for(lambda: "RuntimeError: broken after the start" in server.log, timeout=15)
    assert "failed to boot" in server.log


def test_the_command_imports_only_what_it_uses() -> None:
    """Start-up cost: http.server, psutil, dataclasses, ipaddress and random are imported only
    by the servers and settings that use them (each costs milliseconds at every start)."""
    # Without site (-S): the .pth files of an editable install import pathlib and more first,
    # which hid the cost; the site-packages directories are put on sys.path by hand.
    code = (
        f"import sys; sys.path[1:1] = {site.getsitepackages()!r}; before = set(sys.modules); "
        "import prefork.cli; print(' '.join(sorted(set(sys.modules) - before)))"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=20, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    added = set(done.stdout.split())
    assert "prefork.master" in added
    for name in (
        "http.server",
        "email",
        "psutil",
        "dataclasses",
        "inspect",
        "ipaddress",
        "random",
        "pathlib",
    ):
        assert name not in added, f"import prefork.cli imported {name}"


def test_public_names_are_imported_on_first_use() -> None:
    import prefork

    assert prefork.PreforkHTTPServer.__name__ == "PreforkHTTPServer"
    assert set(prefork.__all__) <= set(dir(prefork))
    with pytest.raises(AttributeError, match="no_such_name"):
        prefork.no_such_name  # noqa: B018


def test_a_target_that_fails_to_import_without_preload_is_a_usage_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken_too.py"
    broken.write_text("raise ImportError('no such dependency')\n")
    for flags in ([], ["--preload"]):
        assert_usage_error(run_cli(f"{broken}:H", *flags), "ImportError: no such dependency")


# -- Unix socket files at exit ----------------------------------------------------------------


def test_unix_socket_file_is_removed_at_exit(serve_cli: Serve, unix_path: str) -> None:
    server = serve_cli("tests.handlers:PidEchoHandler", "--bind", f"unix:{unix_path}", "--workers", "1")
    server.wait_workers(1)
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert not os.path.exists(unix_path)


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM])
def test_a_unix_socket_file_still_bound_elsewhere_is_kept(unix_path: str, kind: int) -> None:
    with socket.socket(socket.AF_UNIX, kind) as other:  # the new master after USR2, or systemd
        other.bind(unix_path)
        if kind == socket.SOCK_STREAM:
            other.listen()
        _unlink_unused(unix_path, kind == socket.SOCK_DGRAM)
        assert os.path.exists(unix_path)
    _unlink_unused(unix_path, kind == socket.SOCK_DGRAM)
    assert not os.path.exists(unix_path)


def test_unlink_unused_leaves_other_files_alone(tmp_path: Path) -> None:
    plain = tmp_path / "not-a-socket"
    plain.write_text("data")
    _unlink_unused(str(plain), False)
    _unlink_unused(str(tmp_path / "missing"), False)
    _unlink_unused("\0abstract-name", False)
    assert plain.exists()


def test_log_file_that_cannot_be_opened_is_a_usage_error(tmp_path: Path) -> None:
    assert_usage_error(
        run_cli("--log-file", str(tmp_path / "no-such-dir" / "prefork.log")), "cannot open log file"
    )


@pytest.mark.timeout(40)
def test_usr2_upgrade_keeps_the_unix_socket_file_until_the_last_master_stops(
    serve_cli: Serve, unix_path: str
) -> None:
    server = serve_cli(
        "tests.handlers:PidEchoHandler",
        "--bind",
        "127.0.0.1:0",
        "--bind",
        f"unix:{unix_path}",
        "--workers",
        "1",
    )
    address = server.address
    server.wait_workers(1)
    server.signal(signal.SIGUSR2)
    assert server.wait(20) == 0  # the old master, stopped by the new one once its pool is ready
    match = wait_for(lambda: re.search(r"started a new master \(pid (\d+)\)", server.log))
    new_master = psutil.Process(int(match.group(1)))
    assert "--bind is ignored" not in server.log  # the inherited sockets are the --bind list's
    assert os.path.exists(unix_path)  # the new master listens on it
    assert request_line(unix_path, b"unix\n").endswith(b" unix\n")
    assert request_line(address, b"tcp\n").endswith(b" tcp\n")
    new_master.send_signal(signal.SIGTERM)
    new_master.wait(20)
    assert not os.path.exists(unix_path)


def test_user_switch_without_root_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefork.cli import check_user_switch
    from prefork.command import UsageError

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "getegid", lambda: 1000)
    check_user_switch(None, None)
    check_user_switch(1000, 1000)  # already that user: nothing to switch
    with pytest.raises(UsageError, match="need the master to run as root"):
        check_user_switch(0, None)
    with pytest.raises(UsageError, match="need the master to run as root"):
        check_user_switch(None, 0)


def test_the_log_says_how_many_workers_and_when_the_master_is_done(serve_cli: Serve) -> None:
    server = serve_cli("tests.handlers:PidEchoHandler", "--workers", "1")
    server.wait_logged("with 1 sync worker (master pid")
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    server.wait_logged(f"Master (pid {server.pid}): the pool is stopped.")
