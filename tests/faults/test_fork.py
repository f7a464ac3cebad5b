"""fork() failing (a pid limit, no memory): the master serves on with the workers it has,
retries with backoff, and refills the pool once fork() works again."""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
import time

import pytest

from prefork import PreforkTCPServer
from tests.conftest import address, request_line, wait_for
from tests.faults.figures import report
from tests.handlers import PidEchoHandler
from tests.test_server import worker_pids

FAILING_SECONDS = 3.0


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.timeout(60)
def test_a_failing_fork_leaves_the_pool_serving_and_it_refills_when_fork_works(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_fork = os.fork
    failing = threading.Event()
    refused: list[float] = []

    def fork() -> int:
        if failing.is_set():
            refused.append(time.monotonic())
            raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        return real_fork()

    monkeypatch.setattr(os, "fork", fork)  # this process is the master: its forks fail
    logs = Collect()
    logger = logging.getLogger("prefork")
    logger.addHandler(logs)
    level = logger.level
    logger.setLevel(logging.INFO)  # setLevel, not the attribute: it clears isEnabledFor's cache
    server = PreforkTCPServer(("127.0.0.1", 0), PidEchoHandler, workers=2)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        first = wait_for(lambda: worker_pids() if len(worker_pids()) == 2 else None, timeout=10)
        failing.set()
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        # Once the master tried to replace it, the victim is reaped: no connection can be
        # handed to its epoll (EPOLLEXCLUSIVE wakes one waiter) while it dies.
        wait_for(lambda: refused, timeout=10)
        served = errors = 0
        end = time.monotonic() + FAILING_SECONDS
        while time.monotonic() < end:
            try:
                reply = request_line(address(server), b"hello\n", timeout=5)
                served += reply.endswith(b" hello\n")
            except OSError:
                errors += 1
        assert thread.is_alive()  # the master did not die
        assert worker_pids() == first - {victim}  # one worker serves on, none was forked
        failing.clear()
        refilled = wait_for(lambda: worker_pids() if len(worker_pids()) == 2 else None, timeout=10)
    finally:
        failing.clear()
        server.shutdown()
        thread.join(40)
        server.server_close()
        logger.removeHandler(logs)
        logger.setLevel(level)
    report(
        "fork_failing_requests_served",
        served,
        f"> 0 and 0 failed while fork() failed for {FAILING_SECONDS:g} s",
        failed=errors,
        fork_attempts=len(refused),
    )
    assert served > 0 and errors == 0
    assert 3 <= len(refused) <= 12  # retried with a backoff (0.1, 0.2, 0.4, 0.8, 1.6 s ...)
    assert len(refilled - first) == 1
    failures = [m for m in logs.messages if m.startswith("Cannot fork worker")]
    assert len(failures) == 1, logs.messages  # once per streak (then every 10th)
    assert "Resource temporarily unavailable" in failures[0] and "1 workers serve on" in failures[0]
    assert any(m.startswith("fork() works again") for m in logs.messages), logs.messages
