"""prefork.logs and ``--log-file``: the log, print() and stderr in one file, reopened on USR1."""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from prefork import logs
from tests.conftest import LISTENING, ROOT, CLIServer, request_line, wait_for

Serve = Callable[..., CLIServer]


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
        stdin=subprocess.DEVNULL,
    )


def test_setup_sends_log_print_and_stderr_to_the_file(tmp_path: Path) -> None:
    log_file = tmp_path / "app.log"
    log_file.write_text("kept from before\n")
    done = run_python(
        """
        import faulthandler, logging, os, sys
        from prefork import logs
        logs.setup("info", sys.argv[1])
        logging.getLogger("prefork").info("via logging")
        logging.getLogger("prefork").debug("not at info")
        print("via print")
        os.write(2, b"via fd 2\\n")
        faulthandler.dump_traceback()
        """,
        str(log_file),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == done.stderr == ""  # everything went to the file
    text = log_file.read_text()
    assert text.startswith("kept from before\n")  # appended
    assert re.search(r"^\[[^]]+\] \[\d+\] \[INFO\] via logging$", text, re.MULTILINE)
    assert "not at info" not in text
    for line in ("via print", "via fd 2", "Current thread"):
        assert line in text


def test_setup_without_a_file_logs_to_stderr() -> None:
    for args in ((), ("-",)):
        done = run_python(
            """
            import logging, sys
            from prefork import logs
            logs.setup("warning", *sys.argv[1:])
            logging.getLogger("prefork").warning("to stderr")
            logging.getLogger("prefork").info("too low")
            """,
            *args,
        )
        assert done.returncode == 0
        assert "[WARNING] to stderr" in done.stderr
        assert "too low" not in done.stderr


def test_reopen_log_files_follows_a_rotation(tmp_path: Path) -> None:
    log_file = tmp_path / "app.log"
    done = run_python(
        """
        import logging, os, sys
        from prefork import logs
        logs.setup("info", sys.argv[1])
        logging.getLogger("prefork").info("before rotation")
        os.rename(sys.argv[1], sys.argv[1] + ".1")
        logs.reopen_log_files()
        logging.getLogger("prefork").info("after rotation")
        print("print after rotation")
        os.write(2, b"fd 2 after rotation\\n")
        """,
        str(log_file),
    )
    assert done.returncode == 0, done.stderr
    old = Path(f"{log_file}.1").read_text()
    new = log_file.read_text()
    assert "before rotation" in old
    assert "after rotation" not in old
    for line in ("[INFO] after rotation", "print after rotation", "fd 2 after rotation"):
        assert line in new


PRINTING_HANDLER = """\
import logging
import http.client
import io
import os
import socketserver


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        tag = self.rfile.readline().strip().decode()
        print(f"print {tag} from worker {os.getpid()}")
        logging.getLogger("app").warning("log %s from worker %d", tag, os.getpid())
        self.wfile.write(b"ok\\n")
"""


def _contains(path: Path, text: str) -> bool:
    try:
        return text in path.read_text()
    except FileNotFoundError:
        return False


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can enter (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="prefork-logs-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


WORKERS_AS_NOBODY = ["--user", "nobody", "--group", "nogroup", "--preload"]


@pytest.mark.timeout(40)
@pytest.mark.parametrize("flags", [[], WORKERS_AS_NOBODY], ids=["same-user", "workers-as-nobody"])
def test_log_file_and_usr1_reopen(serve_cli: Serve, open_dir: Path, flags: list[str]) -> None:
    if flags and os.geteuid() != 0:
        pytest.skip("switching users needs root")
    app = open_dir / "printing_app.py"
    app.write_text(PRINTING_HANDLER)
    log_file = open_dir / "prefork.log"
    server = serve_cli(f"{app}:Handler", "--workers", "1", "--log-file", str(log_file), *flags, wait=False)
    match = wait_for(lambda: LISTENING.search(log_file.read_text()) if log_file.exists() else None, 10)
    host, _, port = match.group(1).split("://")[-1].rpartition(":")
    address = (host, int(port))
    (worker,) = server.wait_workers(1)
    assert request_line(address, b"one\n") == b"ok\n"
    wait_for(lambda: _contains(log_file, f"print one from worker {worker}"))
    assert _contains(log_file, f"log one from worker {worker}")

    rotated = open_dir / "prefork.log.1"
    os.rename(log_file, rotated)
    server.signal(signal.SIGUSR1)
    wait_for(lambda: log_file.exists())  # the master reopened it
    server.signal(signal.SIGTTIN)  # the master logs that it grows the pool
    wait_for(lambda: _contains(log_file, "Received SIGTTIN"))

    def worker_wrote_to_new_file() -> bool:
        assert request_line(address, b"two\n") == b"ok\n"
        return _contains(log_file, "print two from worker")

    wait_for(worker_wrote_to_new_file, timeout=10, interval=0.1)
    assert _contains(log_file, "log two from worker")
    if flags:  # the master gave the new file to the workers' user, so they could reopen it
        assert (log_file.stat().st_uid, rotated.stat().st_uid) == (65534, 65534)
    old = rotated.read_text()
    assert "Received SIGUSR1" in old
    assert "Received SIGTTIN" not in old
    assert server.log == ""  # stderr went to the log file too


@pytest.mark.timeout(30)
def test_a_broken_stderr_pipe_does_not_fail_the_requests(tmp_path: Path) -> None:
    """``prefork ... 2>&1 | head`` once head has exited: http.server logs each request to
    sys.stderr, whose writes then raise BrokenPipeError; the requests are still answered."""
    command = [sys.executable, "-m", "prefork", "http.server:SimpleHTTPRequestHandler"]
    command += ["--bind", "127.0.0.1:0", "--workers", "1"]
    proc = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stderr is not None
        port = 0
        for raw in proc.stderr:
            match = re.search(rb"Listening at http://127\.0\.0\.1:(\d+)", raw)
            if match:
                port = int(match[1])
                break
        proc.stderr.close()  # the reader is gone: the next write to stderr raises EPIPE
        (tmp_path / "hello.txt").write_text("hello\n")
        for _ in range(3):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/hello.txt")
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"hello\n")
            conn.close()
        assert proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def current_stderr() -> object:
    return sys.stderr


def test_guarded_streams_are_put_back_once_and_only_if_still_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    original = sys.stderr
    restore_a = logs.guard_std_streams()
    restore_b = logs.guard_std_streams()  # a second pool in the same process: nothing to do
    wrapper = current_stderr()
    assert isinstance(wrapper, logs.PipeSafeStream) and wrapper.stream is original
    restore_a()
    assert current_stderr() is original
    restore_b()
    assert current_stderr() is original
    restore = logs.guard_std_streams()
    replaced = io.StringIO()
    monkeypatch.setattr(sys, "stderr", replaced)  # the user's own, set while the pool ran
    restore()
    assert current_stderr() is replaced


def test_a_pipe_safe_stream_drops_what_a_gone_reader_cannot_take() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    raw = open(write_fd, "w", buffering=1)  # closed below, whatever it raises
    try:
        stream = logs.PipeSafeStream(raw)
        assert stream.write("lost\n") == 5
        stream.writelines(["also\n", "lost\n"])
        stream.flush()
        assert stream.broken
    finally:
        with contextlib.suppress(OSError):
            raw.close()
