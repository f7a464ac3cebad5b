"""``prefork status`` and ``prefork ctl`` against a fake master: a thread serving the control
protocol (one JSON line each way) on a Unix socket with synthetic snapshots.

The real master's side (prefork.control) has its own end-to-end tests; these check the client:
the call's errors and bounds, choosing among the sockets of a runtime directory, the table, the
JSON, the commands' requests and confirmations, and the command run as a real process.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from prefork import ctl, ctltable
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(20)

Respond = Callable[[dict[str, Any]], bytes | None]


def snapshot(
    name: str = "MyServer", pid: int = 1234, requests: int = 1500, uptime: float = 3665.0
) -> dict[str, Any]:
    """A synthetic pool snapshot (the design's schema): four workers wanted, one busy, one
    idle, one starting; worker 0 is this test process (so psutil finds it), worker 1 a pid
    that does not exist."""
    counts = [0] * 12
    return {
        "prefork": 1,
        "name": name,
        "master_pid": pid,
        "started_at": 1764150000.0,
        "uptime": uptime,
        "generation": 2,
        "workers_wanted": 4,
        "worker_class": "sync",
        "control_socket": None,
        "metrics_address": None,
        "listen_queue": {"length": 3, "limit": 128},
        "totals": {
            "requests": requests,
            "errors": 7,
            "denied": 1,
            "busy_seconds": 12.5,
            "duration_counts": counts,
        },
        "duration_buckets": [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
        "restarts": {
            "crash": 1,
            "request_timeout": 0,
            "memory": 0,
            "max_requests": 2,
            "reload": 0,
            "resize": 0,
        },
        "boot_failures": 0,
        "workers": [
            worker(0, os.getpid(), "busy", requests - 500, request_age=2.5),
            worker(1, 999_999_999, "idle", 500),
            worker(2, None, "starting", 0),
        ],
    }


def worker(
    number: int, pid: int | None, state: str, requests: int, request_age: float | None = None
) -> dict[str, Any]:
    return {
        "number": number,
        "pid": pid,
        "generation": 2,
        "state": state,
        "requests": requests,
        "errors": 0,
        "denied": 0,
        "busy_seconds": 1.0,
        "booted_at": 1764150000.0,
        "request_age": request_age,
        "duration_counts": [0] * 12,
    }


def status_reply(snap: dict[str, Any]) -> bytes:
    return json.dumps({"ok": True, "status": snap}).encode() + b"\n"


class FakeMaster(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A control server in threads: records each request, replies ``respond(request)`` (None:
    no reply, hold the connection until the server is closed)."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, path: str, respond: Respond) -> None:
        self.respond, self.closing = respond, threading.Event()
        self.requests: list[dict[str, Any]] = []
        super().__init__(path, FakeHandler)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.closing.set()
        self.shutdown()
        self.server_close()
        self.thread.join(5)
        if os.path.exists(str(self.server_address)):
            os.unlink(str(self.server_address))


class FakeHandler(socketserver.StreamRequestHandler):
    server: FakeMaster

    def handle(self) -> None:
        request = json.loads(self.rfile.readline(65536))
        self.server.requests.append(request)
        reply = self.server.respond(request)
        if reply is None:
            self.server.closing.wait(10)
        else:
            self.wfile.write(reply)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A private directory with a short path (a Unix socket path has at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="pfctl", dir="/tmp"))
    path.chmod(0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake_master() -> Iterator[Callable[[str, Respond], FakeMaster]]:
    started: list[FakeMaster] = []

    def start(path: str, respond: Respond) -> FakeMaster:
        started.append(FakeMaster(path, respond))
        return started[-1]

    yield start
    for master in started:
        master.close()


@pytest.fixture
def runtime_dir(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This user's runtime directory of control sockets, empty: XDG_RUNTIME_DIR/prefork."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_dir))
    (short_dir / "prefork").mkdir(mode=0o700)
    return short_dir / "prefork"


def stale_socket(path: Path) -> None:
    """A socket file nobody listens on, as a killed master leaves."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = ctl.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- call ------------------------------------------------------------------------------------


def test_call_sends_one_json_line_and_returns_the_reply(short_dir: Path, fake_master: Any) -> None:
    master = fake_master(str(short_dir / "c.sock"), lambda r: b'{"ok": true, "workers": 6}\n')
    assert ctl.call(str(short_dir / "c.sock"), {"command": "workers", "count": 6}) == {
        "ok": True,
        "workers": 6,
    }
    assert master.requests == [{"command": "workers", "count": 6}]


def test_call_to_a_missing_or_stale_socket_says_no_server(short_dir: Path) -> None:
    with pytest.raises(ctl.NoServer, match=r"^no server at .*missing\.sock$"):
        ctl.call(str(short_dir / "missing.sock"), {"command": "status"})
    stale_socket(short_dir / "stale.sock")
    with pytest.raises(ctl.NoServer, match=r"^no server at .*stale\.sock$"):
        ctl.call(str(short_dir / "stale.sock"), {"command": "status"})


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"garbage\n", "unreadable reply .*not JSON"),
        (b"[1, 2]\n", "unreadable reply .*not a JSON object"),
        (b'{"status": {}}\n', "unreadable reply .*with 'ok'"),
        (b"", "closed the connection without a reply"),
    ],
)
def test_call_rejects_a_bad_reply(short_dir: Path, fake_master: Any, reply: bytes, message: str) -> None:
    fake_master(str(short_dir / "g.sock"), lambda r: reply)
    with pytest.raises(ctl.ControlError, match=message) as info:
        ctl.call(str(short_dir / "g.sock"), {"command": "status"})
    assert "\n" not in str(info.value)


def test_call_reports_a_refusal(short_dir: Path, fake_master: Any) -> None:
    fake_master(str(short_dir / "r.sock"), lambda r: b'{"ok": false, "error": "count must be\\n1 or more"}\n')
    with pytest.raises(ctl.CommandRefused, match=r"^count must be 1 or more$"):
        ctl.call(str(short_dir / "r.sock"), {"command": "workers", "count": 0})


def test_call_gives_up_on_a_master_that_never_answers(short_dir: Path, fake_master: Any) -> None:
    fake_master(str(short_dir / "h.sock"), lambda r: None)
    started = time.monotonic()
    with pytest.raises(ctl.ControlError, match=r"no reply from .* within 0.3 s"):
        ctl.call(str(short_dir / "h.sock"), {"command": "status"}, timeout=0.3)
    assert time.monotonic() - started < 2


def test_call_bounds_the_reply_size(
    short_dir: Path, fake_master: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ctl, "MAX_REPLY", 1000)
    fake_master(str(short_dir / "b.sock"), lambda r: b'{"ok": true, "x": "' + b"x" * 5000 + b'"}\n')
    with pytest.raises(ctl.ControlError, match="larger than 1000 bytes"):
        ctl.call(str(short_dir / "b.sock"), {"command": "status"})


# -- the table -------------------------------------------------------------------------------


def test_the_table_shows_the_pool_at_a_glance() -> None:
    before, after = snapshot(requests=1500, uptime=3665.0), snapshot(requests=1700, uptime=3667.0)
    ctltable.add_process_info(before)
    ctltable.add_process_info(after)
    lines = ctltable.render(after, before).splitlines()
    assert lines[0] == "MyServer  master pid 1234  up 1:01:07  generation 2  sync workers"
    assert lines[1] == "workers: 4 wanted / 2 running / 1 busy (1 starting)    listen queue: 3/128"
    assert lines[2] == "requests: 1700 (100.0/s)  errors: 7  denied: 1"
    assert lines[3] == "restarts: crash 1, max_requests 2    boot failures: 0"
    assert lines[4].startswith("master: RSS ") and " USS " in lines[4] and " PSS " in lines[4]
    assert lines[5].startswith("memory: total PSS ") and "one more worker ~ " in lines[5]
    assert lines[7] == ctltable.HEADINGS
    busy, idle, starting = (line.split() for line in lines[8:11])
    assert busy[:6] == ["0", str(os.getpid()), "busy", "1200", "100.0", "2.5"]
    rss, uss, pss, cpu = float(busy[6]), float(busy[7]), float(busy[8]), float(busy[10])
    assert rss > 1 and 0 < uss <= rss and 0 < pss <= rss and cpu > 0  # MiB and seconds of this process
    assert idle == ["1", "999999999", "idle", "500", "0.0", "-", "-", "-", "-", "-", "-"]
    assert starting == ["2", "-", "starting", "0", "0.0", "-", "-", "-", "-", "-", "-"]


def test_the_table_without_rates_or_queue_or_restarts() -> None:
    snap = snapshot()
    snap["listen_queue"] = {"length": None, "limit": None}
    snap["restarts"] = dict.fromkeys(snap["restarts"], 0)
    text = ctltable.render(snap)
    assert "listen queue: n/a" in text and "restarts: none" in text
    assert "requests: 1500  errors" in text and "/s)" not in text
    assert text.splitlines()[6].split()[4] == "-"  # no req/s from one snapshot


def test_a_replaced_worker_counts_its_new_process_only() -> None:
    before, after = snapshot(uptime=10.0), snapshot(uptime=12.0)
    after["workers"][1].update(pid=999_999_998, requests=10, generation=3)  # worker 1 reloaded
    old = worker(1, 999_999_999, "stopping", 520)  # its old process, still finishing
    after["workers"].append(old)
    rows = [line.split() for line in ctltable.render(after, before).splitlines()[-3:-1]]
    assert rows[0][:5] == ["1", "999999999", "stopping", "520", "10.0"]
    assert rows[1][:5] == ["1", "999999998", "idle", "10", "5.0"]


def test_process_info_is_none_for_a_gone_process() -> None:
    snap = snapshot(pid=os.getpid())
    ctltable.add_process_info(snap)
    assert snap["master_rss"] > 0 and snap["master_cpu_seconds"] > 0
    assert snap["workers"][1]["rss"] is None and snap["workers"][1]["cpu_seconds"] is None
    assert snap["workers"][2]["rss"] is None


# -- choosing the server -------------------------------------------------------------------------


def test_no_server_found(runtime_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stale_socket(runtime_dir / "Gone-77.sock")
    code, out, err = run_main(capsys, "status", "--json")
    assert code == 2 and out == ""
    assert (
        err
        == f"prefork status: error: no running prefork server found for this user (looked in {runtime_dir})\n"
    )


def test_the_only_live_server_is_chosen_and_a_stale_one_skipped(
    runtime_dir: Path, fake_master: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    stale_socket(runtime_dir / "Gone-77.sock")
    fake_master(str(runtime_dir / "A-11.sock"), lambda r: status_reply(snapshot("A", 11)))
    server = ctl.choose_server()
    assert (server.path, server.name, server.pid) == (str(runtime_dir / "A-11.sock"), "A", 11)
    code, out, _ = run_main(capsys, "status", "--json")
    assert code == 0 and json.loads(out)["name"] == "A"


def test_several_servers_need_a_choice(
    runtime_dir: Path, fake_master: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, pid in (("A", 11), ("B", 22)):
        fake_master(
            str(runtime_dir / f"{name}-{pid}.sock"), lambda r, n=name, p=pid: status_reply(snapshot(n, p))
        )
    code, out, err = run_main(capsys, "ctl", "reload")
    assert code == 2 and out == ""
    assert err == (
        f"prefork ctl: error: several prefork servers are running: A (pid 11): {runtime_dir}/A-11.sock, "
        f"B (pid 22): {runtime_dir}/B-22.sock; choose with --name, --pid or --socket\n"
    )
    assert ctl.choose_server(name="B").pid == 22
    assert ctl.choose_server(pid=11).name == "A"
    with pytest.raises(ctl.ControlError, match="no running prefork server named C for this user"):
        ctl.choose_server(name="C")


# -- the commands ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "request_", "reply", "printed"),
    [
        (["workers", "6"], {"command": "workers", "count": 6}, {"workers": 6}, "pool set to 6 workers"),
        (["add"], {"command": "add", "count": 1}, {"workers": 5}, "added 1 worker: pool set to 5 workers"),
        (
            ["remove", "3"],
            {"command": "remove", "count": 3},
            {"workers": 1},
            "removed 3 workers: pool set to 1 worker",
        ),
        (["reload"], {"command": "reload"}, {}, "reload started: workers are being replaced gracefully"),
        (["stop"], {"command": "stop", "mode": "graceful"}, {}, "graceful stop started"),
        (["stop", "--fast"], {"command": "stop", "mode": "fast"}, {}, "fast stop started"),
        (["upgrade"], {"command": "upgrade"}, {}, "upgrade started: a new master is starting"),
        (["reopen"], {"command": "reopen"}, {}, "log files reopened"),
    ],
)
def test_ctl_sends_the_command_and_confirms(
    short_dir: Path,
    fake_master: Any,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    request_: dict[str, Any],
    reply: dict[str, Any],
    printed: str,
) -> None:
    path = str(short_dir / "m.sock")
    master = fake_master(path, lambda r: json.dumps({"ok": True, **reply}).encode() + b"\n")
    assert run_main(capsys, "ctl", "--socket", path, *args) == (0, printed + "\n", "")
    assert run_main(capsys, "ctl", *args, "--socket", path) == (0, printed + "\n", "")  # options after too
    assert master.requests == [request_, request_]


def test_ctl_status_prints_the_snapshot_as_json(
    short_dir: Path, fake_master: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(short_dir / "j.sock")
    fake_master(path, lambda r: status_reply(snapshot(pid=os.getpid())))
    code, out, _ = run_main(capsys, "ctl", "--socket", path, "status")
    data = json.loads(out)
    assert code == 0 and data["name"] == "MyServer" and data["master_rss"] > 0
    assert data["workers"][0]["cpu_seconds"] > 0 and data["workers"][1]["rss"] is None


def test_ctl_refused_exits_1_and_unreachable_exits_2(
    short_dir: Path, fake_master: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(short_dir / "n.sock")
    fake_master(path, lambda r: b'{"ok": false, "error": "not while stopping"}\n')
    assert run_main(capsys, "ctl", "--socket", path, "add") == (
        1,
        "",
        "prefork ctl: the master refused: not while stopping\n",
    )
    missing = str(short_dir / "none.sock")
    assert run_main(capsys, "ctl", "--socket", missing, "add") == (
        2,
        "",
        f"prefork ctl: error: no server at {missing}\n",
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["ctl"],
        ["ctl", "workers"],
        ["ctl", "workers", "0"],
        ["ctl", "add", "0"],
        ["ctl", "dance"],
        ["ctl", "stop", "--slow"],
        ["status", "--bogus"],
        ["status", "--socket", "/x", "--pid", "3"],
        ["status", "--json", "--watch"],
        ["status", "--watch", "--interval", "0"],
        ["status", "--timeout", "0"],
    ],
)
def test_bad_usage_exits_2_with_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        ctl.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.startswith(f"prefork {argv[0]}") and ": error: " in err and err.count("\n") == 1


def test_watch_redraws_until_the_server_is_lost(
    short_dir: Path, fake_master: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(short_dir / "w.sock")
    calls = iter(range(100))

    def respond(request: dict[str, Any]) -> bytes:
        n = next(calls)
        return status_reply(snapshot(requests=1000 + 10 * n, uptime=10.0 + n)) if n < 3 else b"gone\n"

    fake_master(path, respond)
    code, out, err = run_main(capsys, "status", "--socket", path, "--watch", "--interval", "0.05")
    assert code == 1 and out.count("MyServer  master pid 1234") == 3  # not a tty: successive tables
    assert "requests: 1020 (10.0/s)" in out
    assert err.startswith("prefork status: lost the server: unreadable reply") and err.count("\n") == 1


def test_watch_ends_quietly_on_ctrl_c(
    short_dir: Path, fake_master: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(short_dir / "i.sock")
    fake_master(path, lambda r: status_reply(snapshot()))

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", interrupt)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert ctl.main(["status", "--socket", path, "--watch"]) == 0
    assert terminal.getvalue().startswith(ctl.CLEAR + "MyServer")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# -- the real command ---------------------------------------------------------------------------


def prefork(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefork", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_prefork_status_and_ctl_as_commands(short_dir: Path, fake_master: Any) -> None:
    path = str(short_dir / "s.sock")
    calls = iter(range(100))

    def respond(request: dict[str, Any]) -> bytes:
        if request["command"] != "status":
            return json.dumps({"ok": True, "workers": request["count"]}).encode() + b"\n"
        n = next(calls)
        return status_reply(snapshot(requests=1000 + 50 * n, uptime=100.0 + n))

    master = fake_master(path, respond)
    done = prefork("status", "--socket", path, "--interval", "0.2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "MyServer  master pid 1234  up 0:01:41  generation 2  sync workers"
    assert lines[2] == "requests: 1050 (50.0/s)  errors: 7  denied: 1"
    assert lines[7] == ctltable.HEADINGS and "  1 999999999  idle" in done.stdout
    workers = prefork("ctl", "--socket", path, "workers", "6")
    assert (workers.returncode, workers.stdout, workers.stderr) == (0, "pool set to 6 workers\n", "")
    assert master.requests[-1] == {"command": "workers", "count": 6}


@pytest.mark.parametrize(
    "argv",
    [
        ["./status.py", "--bind", "127.0.0.1:0"],
        ["status.py", "--bind", "127.0.0.1:0"],
        ["ctl:Handler", "--bind", "127.0.0.1:0"],
        ["--bind", "127.0.0.1:0", "status"],
        ["--bind", "127.0.0.1:0", "--", "ctl"],
    ],
)
def test_a_target_named_status_or_ctl_is_still_a_target(short_dir: Path, argv: list[str]) -> None:
    # As for bench: only a first argument of exactly "status" or "ctl" is the subcommand.
    done = prefork(*argv, cwd=short_dir)
    assert done.returncode == 2
    assert done.stderr.startswith("prefork: error: cannot import"), done.stderr
