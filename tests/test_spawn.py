"""Forking a worker: a signal sent while the worker boots is not lost; gc_freeze."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, CLIServer, request_line, wait_for

Serve = Callable[..., CLIServer]

# serve_forever() in the main thread of its own process (so the master's signal handlers are
# installed); the worker takes 1 s before it installs its own; TERM reaches the master at 0.5 s
# and is passed on to the booting worker. Prints the seconds serve_forever() took.
SCRIPT = textwrap.dedent(
    """
    import os, signal, threading, time
    from prefork import PreforkTCPServer
    from prefork.workers.sync import SyncWorker
    from tests.handlers import PidEchoHandler

    install = SyncWorker.init_signals
    def slow(self):
        time.sleep(1.0)
        install(self)
    SyncWorker.init_signals = slow
    server = PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler, workers=1, graceful_timeout=20)
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
    start = time.monotonic()
    server.serve_forever(poll_interval=0.05)
    print(round(time.monotonic() - start, 2))
    """
)


@pytest.mark.timeout(40)
def test_a_term_to_a_booting_worker_waits_for_its_handlers() -> None:
    """Before the fix the TERM ran the master's inherited handler in the worker and was lost:
    the worker served until graceful_timeout (20 s) SIGKILLed it."""
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=35, check=True
    )
    took = float(done.stdout.split()[-1])
    assert took < 5.0, done.stderr[-2000:]
    assert "did not stop in time" not in done.stderr


GC_HANDLER = textwrap.dedent(
    """
    import gc, json, os, socketserver
    collecting = lambda: gc.isenabled() and gc.get_threshold()[0] > 0
    IMPORTED_WITH_GC = collecting()
    if os.environ.get("APP_DISABLES_GC"):
        gc.disable()
    FROZEN_AT_IMPORT = gc.get_freeze_count()  # not 0 on every Python (375 on 3.12.1)

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            self.rfile.readline()
            state = [IMPORTED_WITH_GC, collecting(), gc.get_freeze_count() > FROZEN_AT_IMPORT]
            self.wfile.write(json.dumps(state).encode() + b"\\n")
    """
)


@pytest.mark.timeout(40)
@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--preload"], [False, True, True]),  # paused for the import, frozen, resumed
        (["--preload", "--gc-freeze", "off"], [True, True, False]),
        ([], [True, True, False]),  # imported by the worker, after the fork (and the freeze)
    ],
)
def test_gc_freeze_keeps_what_the_master_preloaded_out_of_the_workers_collections(
    serve_cli: Serve, tmp_path: Path, flags: list[str], expected: list[bool]
) -> None:
    """As CPython advises for fork without exec: gc paused while --preload imports TARGET,
    frozen before each fork (the replacement of a killed worker too), resumed in the worker."""
    app = tmp_path / "gc_app.py"
    app.write_text(GC_HANDLER)
    server = serve_cli(f"{app}:Handler", "--workers", "1", *flags)
    (first,) = server.wait_workers(1)
    assert json.loads(request_line(server.address, b"x\n")) == expected
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: server.wait_workers(1) != {first}, timeout=15)
    assert json.loads(request_line(server.address, b"x\n")) == expected
    master = psutil.Process(server.pid)
    assert master.is_running()


@pytest.mark.timeout(40)
def test_an_applications_own_gc_disable_is_kept(serve_cli: Serve, tmp_path: Path) -> None:
    """The pause for --preload's import stops automatic collections without gc.disable(), so
    a gc.disable() of the application's own stays in force in its workers."""
    app = tmp_path / "gc_off_app.py"
    app.write_text(GC_HANDLER)
    server = serve_cli(
        f"{app}:Handler", "--workers", "1", "--preload", env={**os.environ, "APP_DISABLES_GC": "1"}
    )
    server.wait_workers(1)
    assert json.loads(request_line(server.address, b"x\n")) == [False, False, True]


@pytest.mark.timeout(40)
def test_the_exporter_forked_first_freezes_too(serve_cli: Serve, tmp_path: Path) -> None:
    """With --metrics the exporter is the master's first fork: the freeze comes before it (else
    the exporter's first collection would copy every preloaded object), and the workers
    forked after it are frozen as well."""
    app = tmp_path / "gc_metrics_app.py"
    app.write_text(GC_HANDLER)
    server = serve_cli(f"{app}:Handler", "--workers", "1", "--preload", "--metrics", "127.0.0.1:0")
    assert json.loads(request_line(server.address, b"x\n")) == [False, True, True]
