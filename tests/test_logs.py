"""prefork.logs and ``--log-file``: the log, print() and stderr in one file, reopened on USR1."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import uuid
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


# --- --log-format json ---------------------------------------------------------------------

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")


@pytest.fixture
def json_logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of its own (not propagating) writing JSON lines to a StringIO; the worker
    number is put back afterwards."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger(f"test.json.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    before = logs.worker()
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        logs.set_worker(before)


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    text = stream.getvalue()
    assert text.endswith("\n") and text.isascii()
    return [json.loads(line) for line in text.splitlines()]


def test_a_json_line_has_the_fields(json_logger: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_logger
    logs.set_worker(None)
    logger.info("hello %s, %d", "world", 42)
    logs.set_worker(3)
    logger.warning("from a worker", extra={"request_id": "abc", "peer": object()})
    master, worker = json_lines(stream)
    assert list(master) == ["time", "level", "logger", "message", "pid", "worker"]
    assert ISO_UTC.match(str(master["time"]))
    assert (master["level"], master["logger"], master["message"]) == ("INFO", logger.name, "hello world, 42")
    assert (master["pid"], master["worker"]) == (os.getpid(), None)
    assert (worker["level"], worker["worker"], worker["request_id"]) == ("WARNING", 3, "abc")
    assert str(worker["peer"]).startswith("<object object")  # not JSON: its str()
    assert "traceback" not in worker


def test_a_json_line_carries_the_traceback(json_logger: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_logger
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        logger.exception("it failed")
    logger.info("with the stack", stack_info=True)
    (failed, stacked) = json_lines(stream)
    assert failed["level"] == "ERROR" and failed["message"] == "it failed"
    traceback = str(failed["traceback"])
    assert traceback.startswith("Traceback (most recent call last):")
    assert traceback.endswith("ValueError: bad\nvalue")
    assert str(stacked["stack"]).startswith("Stack (most recent call last):")


#: By name: a value with surrogates in a parameter breaks pytest-xdist's reports.
HOSTILE = {
    "quotes": 'quote " and backslash \\ and }{',
    "controls": "new\nline\r\nand\ttab and \x00 nul and \x1b[31m escape",
    "unicode": "line\u2028separator and paragraph\u2029and non-ASCII: \u00e9, \u2603, \U0001f40d",
    "surrogates": "undecodable bytes \udcff\udc80 from surrogateescape",
    "high-surrogate": "\ud800 a lone high surrogate",
}


def make_record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    """A record as ``logging.getLogger("app").error(message, *args, extra=extra)`` makes,
    not handed to any handler (pytest's log capture cannot take lone surrogates)."""
    record = logging.LogRecord("app", logging.ERROR, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return record


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_message_gives_one_valid_json_line(name: str) -> None:
    message = HOSTILE[name]
    formatter = logs.JsonFormatter()
    for record in (
        make_record(message),
        make_record("%s", message, field=message),
        make_record(message, **{message: 1}),  # a hostile extra key too
    ):
        line = formatter.format(record)
        assert "\n" not in line and "\r" not in line and line.isascii()
        fields = json.loads(line)
        assert fields["message"] == logs.clean_text(message)
        json.dumps(fields, ensure_ascii=False).encode("utf-8")  # no lone surrogate left
    assert logs.clean_text("\udcff") == "\\udcff"
    assert logs.clean_text("plain \u00e9") == "plain \u00e9"


def test_the_text_format_is_unchanged() -> None:
    assert logs.LOG_FORMAT == "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
    chosen = logs.formatter("text")
    assert type(chosen) is logging.Formatter and chosen._fmt == logs.LOG_FORMAT
    record = logging.LogRecord("prefork", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    logs.set_worker(5)  # the text format does not show it
    try:
        assert chosen.format(record) == f"[{chosen.formatTime(record)}] [{os.getpid()}] [INFO] hello you"
    finally:
        logs.set_worker(None)
    with pytest.raises(ValueError, match="unknown log format"):
        logs.formatter("xml")


def test_setup_in_json_to_a_file_and_to_stderr(tmp_path: Path) -> None:
    log_file = tmp_path / "app.log"
    code = """
        import logging, sys
        from prefork import logs
        logs.setup("info", sys.argv[1], log_format="json")
        logs.set_worker(7)
        logging.getLogger("prefork").info("to %s", sys.argv[1])
        logging.getLogger("prefork").debug("not at info")
        """
    for target in (str(log_file), "-"):
        done = run_python(code, target)
        assert done.returncode == 0, done.stderr
        text = log_file.read_text() if target != "-" else done.stderr
        (line,) = [json.loads(line) for line in text.splitlines()]
        assert (line["message"], line["worker"], line["logger"]) == (f"to {target}", 7, "prefork")


def test_apply_format_for_servers_of_the_python_api() -> None:
    done = run_python(
        """
        import io, json, logging, sys
        from prefork import logs
        logs.apply_format("text")  # nothing changes
        assert logging.getLogger().handlers == []
        logs.apply_format("json")  # no handler: one on stderr
        logs.apply_format("json")  # idempotent
        assert len(logging.getLogger().handlers) == 1
        logging.getLogger("prefork").warning("on stderr")
        own = logging.StreamHandler(io.StringIO())
        logging.getLogger().handlers = [own]
        logs.apply_format("json")  # the application's handler gets the JSON format
        logging.getLogger("app").warning("to its handler")
        assert json.loads(own.stream.getvalue())["message"] == "to its handler"
        try:
            logs.apply_format("yaml")
        except ValueError:
            print("refused")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "refused\n"
    (line,) = [json.loads(line) for line in done.stderr.splitlines()]
    assert (line["message"], line["level"], line["worker"]) == ("on stderr", "WARNING", None)


@pytest.mark.timeout(40)
def test_the_command_logs_only_json_lines(serve_cli: Serve) -> None:
    server = serve_cli("--workers", "1", "--log-format", "json", "--log-level", "debug")
    (worker,) = server.wait_workers(1)
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=5)
    conn.request("GET", "/")
    assert conn.getresponse().status == 200  # the demo logs it at DEBUG, in the worker
    conn.close()
    wait_for(lambda: f'"pid": {worker}' in server.log)
    server.signal(signal.SIGTERM)
    server.wait(20)
    server._reader.join(5)
    lines = [json.loads(line) for line in server.log.splitlines()]  # every line parses
    assert any("Listening at" in str(line["message"]) for line in lines)
    assert {line["pid"] for line in lines} >= {server.pid, worker}
    assert all(line["worker"] is None for line in lines if line["pid"] == server.pid)


@pytest.mark.timeout(40)
def test_the_json_log_of_a_worker_names_it(serve_cli: Serve) -> None:
    server = serve_cli("--workers", "1", "--log-format", "json", "--log-level", "debug")
    (worker,) = server.wait_workers(1)
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=5)
    conn.request("GET", "/")
    assert conn.getresponse().status == 200
    conn.close()
    wait_for(lambda: f'"pid": {worker}' in server.log)
    lines = [json.loads(line) for line in server.log.splitlines()]
    assert {line["worker"] for line in lines if line["pid"] == worker} == {0}
