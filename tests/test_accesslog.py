"""prefork.accesslog: one line per connection, from any worker, whole lines only."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from prefork.accesslog import OUTCOMES, AccessLog, client_text, outcome_of
from tests.conftest import ROOT, CLIServer, request_line, wait_for

TEXT_LINE = re.compile(
    r"^(?P<client>\S+) - worker (?P<worker>\d+) \[pid (?P<pid>\d+)\] "
    r"(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00) (?P<outcome>[a-z]+) (?P<seconds>\d+\.\d{6})s$"
)


def test_each_outcome_is_one_text_line(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    access = AccessLog.open(str(path), "text")
    try:
        for number, outcome in enumerate(OUTCOMES):
            access.record(("127.0.0.1", 53422 + number), number, 1234, 0.0031249 * number, outcome)
    finally:
        access.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 4
    for number, (line, outcome) in enumerate(zip(lines, OUTCOMES, strict=True)):
        match = TEXT_LINE.match(line)
        assert match, line
        assert match["client"] == f"127.0.0.1:{53422 + number}"
        assert (match["worker"], match["pid"], match["outcome"]) == (str(number), "1234", outcome)
        assert float(match["seconds"]) == pytest.approx(0.0031249 * number, abs=1e-6)
    assert lines[1].endswith(" error 0.003125s")


def test_each_outcome_is_one_json_line(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    access = AccessLog.open(str(path), "json")
    try:
        for outcome in OUTCOMES:
            access.record(("::1", 8080, 0, 0), 2, 99, 1.5, outcome)
    finally:
        access.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["outcome"] for line in lines] == list(OUTCOMES)
    first = lines[0]
    assert list(first) == ["time", "logger", "client", "worker", "pid", "seconds", "outcome"]
    assert (first["client"], first["worker"], first["pid"], first["seconds"]) == ("[::1]:8080", 2, 99, 1.5)
    assert first["logger"] == "prefork.access"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$", first["time"])


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (("10.0.0.1", 5000), "10.0.0.1:5000"),
        (("2001:db8::1", 443, 0, 0), "[2001:db8::1]:443"),
        ("", "-"),
        (b"", "-"),
        ("/run/app/client.sock", "/run/app/client.sock"),
        (b"\0abstract", "@abstract"),
        (("unix", 0), "-"),  # PreforkUnixHTTPServer's unnamed peer
        (("/run/peer.sock", 0), "/run/peer.sock"),
        ("/tmp/a b\nc", "/tmp/a\\x20b\\nc"),  # one line of space-separated fields
        (None, "-"),
    ],
)
def test_client_text(address: object, text: str) -> None:
    assert client_text(address) == text


def test_outcome_of_an_exception() -> None:
    assert outcome_of(None) == "served"
    assert outcome_of(TimeoutError()) == "timeout"
    assert outcome_of(TimeoutError(110, "Connection timed out")) == "timeout"
    assert outcome_of(ValueError()) == "error"
    assert outcome_of(ConnectionResetError()) == "error"


def test_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("precious\n")
    link = tmp_path / "access.log"
    link.symlink_to(target)
    with pytest.raises(OSError, match="symbolic link") as raised:
        AccessLog.open(str(link), "text")
    assert raised.value.errno == errno.ELOOP and raised.value.filename == str(link)
    assert target.read_text() == "precious\n"
    dangling = tmp_path / "dangling.log"
    dangling.symlink_to(tmp_path / "nothing")
    with pytest.raises(OSError, match="symbolic link"):
        AccessLog.open(str(dangling), "text")
    assert not (tmp_path / "nothing").exists()


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        AccessLog.open(str(tmp_path), "text")
    with pytest.raises(FileNotFoundError):
        AccessLog.open(str(tmp_path / "missing" / "access.log"), "text")
    with pytest.raises(ValueError, match="unknown log format"):
        AccessLog.open(str(tmp_path / "access.log"), "xml")
    assert not (tmp_path / "access.log").exists()


def test_the_file_is_created_0644_and_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text("kept\n")
    path.chmod(0o600)
    AccessLog.open(str(path), "text").close()
    assert path.stat().st_mode & 0o777 == 0o600  # an existing file keeps its mode
    fresh = tmp_path / "fresh.log"
    umask = os.umask(0o022)
    try:
        access = AccessLog.open(str(fresh), "text")
    finally:
        os.umask(umask)
    access.record(("127.0.0.1", 1), 0, 1, 0.0, "served")
    access.close()
    assert fresh.stat().st_mode & 0o777 == 0o644
    access = AccessLog.open(str(path), "text")
    try:
        assert not os.get_inheritable(access.fd)  # not kept across exec
        access.record(("127.0.0.1", 2), 0, 1, 0.0, "served")
    finally:
        access.close()
    assert path.read_text().startswith("kept\n127.0.0.1:2 - worker 0")


def test_dash_means_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    access = AccessLog.open("-", "text")
    assert access.fd == 2
    access.record(("127.0.0.1", 4242), 1, os.getpid(), 0.25, "denied")
    access.close()  # stderr is not closed
    access.record(("127.0.0.1", 4243), 1, os.getpid(), 0.25, "served")
    assert access.reopen()  # nothing to reopen
    out, err = capfd.readouterr()
    lines = err.splitlines()
    assert out == "" and len(lines) == 2
    assert TEXT_LINE.match(lines[0]) and lines[0].startswith("127.0.0.1:4242 - worker 1 ")
    assert " denied 0.250000s" in lines[0]
    os.fstat(2)  # still open


WRITERS = """
import os, sys
from prefork.accesslog import AccessLog

access = AccessLog.open(sys.argv[1], "text")  # in the "master", before the fork
children = []
for number in range(4):
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            peer = "/run/clients/" + "x" * 90 + str(number)  # long lines: more chances to mix
            for _ in range(500):
                access.record(peer, number, os.getpid(), 0.001, "served")
            status = 0 if access.drops == 0 else 2
        finally:
            os._exit(status)
    children.append(pid)
sys.exit(max(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children))
"""


@pytest.mark.timeout(60)
def test_four_processes_never_mix_their_lines(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(WRITERS), str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    lines = path.read_text().splitlines()
    assert len(lines) == 2000
    counts: dict[tuple[str, str], int] = {}
    for line in lines:
        match = TEXT_LINE.match(line)
        assert match, line
        assert match["client"] == "/run/clients/" + "x" * 90 + match["worker"]
        key = (match["worker"], match["pid"])
        counts[key] = counts.get(key, 0) + 1
    assert sorted(counts.values()) == [500] * 4
    assert len({worker for worker, _ in counts}) == 4


def test_reopen_follows_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    access = AccessLog.open(str(path), "text")
    try:
        fd = access.fd
        access.record(("127.0.0.1", 1), 0, 1, 0.0, "served")
        rotated = tmp_path / "access.log.1"
        os.rename(path, rotated)
        access.record(("127.0.0.1", 2), 0, 1, 0.0, "served")  # still to the moved file
        assert access.reopen()
        assert access.fd == fd and not os.get_inheritable(fd)  # the same descriptor number
        access.record(("127.0.0.1", 3), 0, 1, 0.0, "served")
    finally:
        access.close()
    old = rotated.read_text().splitlines()
    new = path.read_text().splitlines()
    assert [line.split()[0] for line in old] == ["127.0.0.1:1", "127.0.0.1:2"]
    assert [line.split()[0] for line in new] == ["127.0.0.1:3"]


def test_a_failed_reopen_keeps_the_old_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    path = folder / "access.log"
    access = AccessLog.open(str(path), "text")
    try:
        os.rename(folder, tmp_path / "moved")  # the directory is gone: the path cannot be opened
        with caplog.at_level(logging.ERROR, logger="prefork"):
            assert not access.reopen()
        assert "Cannot reopen the access log" in caplog.text
        access.record(("127.0.0.1", 1), 0, 1, 0.0, "served")
    finally:
        access.close()
    assert (tmp_path / "moved" / "access.log").read_text().startswith("127.0.0.1:1 ")


def test_record_never_raises(tmp_path: Path) -> None:
    access = AccessLog.open(str(tmp_path / "access.log"), "text")
    os.close(access.fd)  # closed under it: EBADF
    access.record(("127.0.0.1", 1), 0, 1, 0.0, "served")
    assert access.drops == 1
    access.close()  # the descriptor is already closed: nothing raised
    access.record(("127.0.0.1", 1), 0, 1, 0.0, "served")
    assert access.drops == 2
    access.close()

    read_end, write_end = os.pipe()
    os.close(read_end)  # EPIPE (Python ignores SIGPIPE)
    broken = AccessLog(str(tmp_path / "pipe"), write_end, "json")
    try:
        broken.record(("127.0.0.1", 1), 0, 1, 0.0, "served")
        broken.record(object(), 0, 1, 0.0, "served")
        assert broken.drops == 2
    finally:
        broken.close()
    path = tmp_path / "nan.log"
    access = AccessLog.open(str(path), "json")
    try:
        access.record(("127.0.0.1", 1), 0, 1, float("nan"), "served")  # not valid JSON: dropped
        assert access.drops == 1
    finally:
        access.close()
    assert path.read_text() == ""


def test_full_disk_drops_the_line() -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    access = AccessLog.open("/dev/full", "text")  # every write fails with ENOSPC
    try:
        access.record(("127.0.0.1", 1), 0, 1, 0.0, "served")
        assert access.drops == 1
    finally:
        access.close()


# -- a real server with --access-log --------------------------------------------------------------

FAULTS = "tests.faults.handlers:FaultHandler"
LINE = re.compile(
    r"^(?P<client>\S+) - worker (?P<worker>\d+) \[pid (?P<pid>\d+)\] \S+ "
    r"(?P<outcome>\w+) (?P<seconds>[\d.]+)s$"
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker_class", ["sync", "thread"])
def test_a_server_logs_each_connection_with_its_outcome(
    serve_cli: Callable[..., CLIServer], tmp_path: Path, worker_class: str
) -> None:
    path = tmp_path / "access.log"
    flags = ["-w", "1", "-k", worker_class, "--access-log", str(path), "--socket-timeout", "0.5"]
    server = serve_cli(FAULTS, *flags, "--read-deadline", "0.5")
    (worker,) = server.wait_workers(1)
    assert request_line(server.address, b"hello\n").endswith(b"hello\n")
    request_line(server.address, b"raise\n")
    with socket.create_connection(server.address, timeout=5) as silent:  # says nothing: cut
        assert silent.recv(10) == b""
    denied = serve_cli(FAULTS, *flags, "--deny", "127.0.0.0/8", "--access-log", str(path))
    denied.wait_workers(1)
    with socket.create_connection(denied.address, timeout=5) as refused:
        assert refused.recv(10) == b""
    lines = wait_for(lambda: len(found := path.read_text().splitlines()) == 4 and found)
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    outcomes = [m["outcome"] for m in parsed if m]
    assert sorted(outcomes) == ["denied", "error", "served", "timeout"]
    served = next(m for m in parsed if m and m["outcome"] == "served")
    assert (
        served["pid"] == str(worker) and served["worker"] == "0" and served["client"].startswith("127.0.0.1:")
    )
    timed_out = next(m for m in parsed if m and m["outcome"] == "timeout")
    assert 0.4 <= float(timed_out["seconds"]) < 5
