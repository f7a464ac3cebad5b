"""Forking a worker: a signal sent while the worker boots is not lost."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT

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
