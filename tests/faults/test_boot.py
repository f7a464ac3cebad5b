"""Item 9: a module that fails to import, or a post_fork hook that raises every time, ends the
server cleanly with the named exit status (CLI: 2 with one line on stderr, 3 after repeated boot
failures; API: WorkerBootError), leaving no process behind."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from tests.conftest import ROOT, CLIServer, ServerProcess, group_processes
from tests.faults.figures import report

Serve = Callable[..., CLIServer]
BOOT_EXIT_LIMIT = 10.0  # seconds: 5 failed boots with backoff 0.1, 0.2, 0.4, 0.8 s is ~1.5 s

TARGETS = {
    "missing_module": ("tests.faults.no_such_module:Handler", "ModuleNotFoundError"),
    "raising_module": ("tests.faults.import_fails:Handler", "RuntimeError: this module fails to import"),
    "raising_file": ("tests/faults/import_fails.py", "RuntimeError: this module fails to import"),
    "missing_handler": ("tests.faults.handlers:NoSuchHandler", "has no attribute 'NoSuchHandler'"),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", list(TARGETS))
def test_a_module_that_fails_to_import_exits_2_with_one_line(case: str) -> None:
    target, cause = TARGETS[case]
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "prefork", target, "--bind", "127.0.0.1:0", "--workers", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
        start_new_session=True,
    )
    took = time.monotonic() - start
    lines = done.stderr.splitlines()
    report(
        f"import_failure_{case}_exit_status",
        done.returncode,
        "== 2 with exactly one line on stderr",
        stderr_lines=len(lines),
        seconds=round(took, 2),
    )
    assert done.returncode == 2
    assert len(lines) == 1 and lines[0].startswith("prefork: error: ") and cause in lines[0], lines


@pytest.mark.timeout(30)
def test_a_post_fork_hook_that_always_raises_exits_3_from_the_cli(serve_cli: Serve) -> None:
    start = time.monotonic()
    server = serve_cli("tests.faults.post_fork_raises:Handler", "--workers", "2", wait=False)
    code = server.wait(BOOT_EXIT_LIMIT + 10)
    took = time.monotonic() - start
    report(
        "post_fork_raises_cli_exit_status",
        code,
        f"== 3 within {BOOT_EXIT_LIMIT:g} s, naming the cause, no process left",
        seconds=round(took, 2),
    )
    assert code == 3
    assert "Workers failed to boot 5 times in a row: ConnectionRefusedError: database at" in server.log
    assert server.log.count("Workers failed to boot") == 1  # two workers failed in the last round
    assert took <= BOOT_EXIT_LIMIT
    assert not group_processes(server.pid)


API_SCRIPT = """
import sys, prefork, tests.faults.handlers as h
from prefork.errors import WorkerBootError
class S(prefork.PreforkTCPServer):
    def post_fork(self, worker):
        raise ConnectionRefusedError("database at 10.9.9.9 refused the connection (on purpose)")
with S(("127.0.0.1", 0), h.EchoHandler, workers=2) as server:
    try:
        server.serve_forever(0.1)
    except WorkerBootError as exc:
        print("WorkerBootError:", exc, file=sys.stderr)
        sys.exit(42)
"""


@pytest.mark.timeout(30)
def test_a_post_fork_hook_that_always_raises_raises_worker_boot_error_from_the_api() -> None:
    start = time.monotonic()
    server = ServerProcess([sys.executable, "-c", API_SCRIPT])
    try:
        code = server.wait(BOOT_EXIT_LIMIT + 10)
    finally:
        server.destroy()
    took = time.monotonic() - start
    report(
        "post_fork_raises_api",
        "WorkerBootError" if "WorkerBootError: Workers failed to boot 5 times" in server.log else code,
        f"WorkerBootError naming the cause within {BOOT_EXIT_LIMIT:g} s",
        seconds=round(took, 2),
    )
    assert code == 42
    assert "WorkerBootError: Workers failed to boot 5 times in a row: ConnectionRefusedError" in server.log
    assert took <= BOOT_EXIT_LIMIT
