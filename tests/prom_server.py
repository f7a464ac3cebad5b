"""A real Prometheus server scraping one target, for end-to-end tests of ``/metrics``.

``with prometheus_scraping("127.0.0.1:PORT", tmp_path) as prom:`` starts ``prometheus`` (the
Debian package's ``/usr/bin/prometheus``, 2.x) with a generated configuration (one static
target, scraped every second), its storage under ``tmp_path``, on a free loopback port; waits
until it is ready and the target is up; yields a :class:`PromClient`; then kills the process
it started (by pid) and reaps it. The test is skipped only when the binary is absent.

Prometheus has no "listen on port 0": a free port is found by binding port 0 and closing the
socket, and the start is retried on another port when prometheus exits at once (the port was
taken in between).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.conftest import missing_component

#: Where the Debian package installs it; else whatever ``prometheus`` is on PATH.
PROMETHEUS = "/usr/bin/prometheus" if os.path.exists("/usr/bin/prometheus") else shutil.which("prometheus")
START_TIMEOUT = 30.0
STARTS = 3


class PromClient:
    """The HTTP API of a Prometheus server at ``base`` (``http://127.0.0.1:PORT``)."""

    def __init__(self, base: str, log_path: Path) -> None:
        self.base = base
        self.log_path = log_path

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; the ``data`` of a successful answer. Raises AssertionError
        for an error answer, OSError when the server does not answer."""
        url = f"{self.base}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                reply = json.load(answer)
        except urllib.error.HTTPError as exc:
            reply = json.load(exc)
        assert reply.get("status") == "success", f"prometheus: {reply}"
        return reply["data"]

    def query_vector(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """The instant vector of ``expr`` now: (labels, value) pairs."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        assert data["resultType"] == "vector", data
        return [(item["metric"], float(item["value"][1])) for item in data["result"]]

    def query(self, expr: str) -> float | None:
        """The value of ``expr`` now (the first series'), or None when it has no series."""
        vector = self.query_vector(expr)
        return vector[0][1] if vector else None

    def wait_until(self, expr: str, predicate: Callable[[float], bool], timeout: float = 15.0) -> float:
        """Poll ``expr`` until it has a value for which ``predicate`` is true; return it. Fails
        the test after ``timeout`` s, with the last value and the target's state."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.query(expr)
            if value is not None and predicate(value):
                return value
            time.sleep(0.25)
        raise AssertionError(f"{expr} = {value} after {timeout} s; targets: {self.targets()}")

    def targets(self) -> list[dict[str, Any]]:
        """The active targets, as ``/api/v1/targets`` gives them."""
        targets: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return targets

    def wait_target_up(self, timeout: float = 15.0) -> None:
        """Wait until every target was scraped successfully once."""
        deadline = time.monotonic() + timeout
        targets: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            targets = self.targets()
            if targets and all(target["health"] == "up" for target in targets):
                return
            time.sleep(0.2)
        raise AssertionError(f"target not up after {timeout} s: {targets}")


def free_port() -> int:
    """A loopback TCP port free a moment ago (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, target: str, metrics_path: str = "/metrics") -> None:
    """A configuration that scrapes ``target`` (HOST:PORT) every second, as job ``prefork``."""
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "prefork", "metrics_path": metrics_path, "static_configs": [{"targets": [target]}]}
        ],
    }
    path.write_text(json.dumps(config))  # JSON is YAML


@contextlib.contextmanager
def prometheus_scraping(target: str, tmp_path: Path, metrics_path: str = "/metrics") -> Iterator[PromClient]:
    """A Prometheus server scraping ``target`` (``HOST:PORT``) every second, ready and with
    the target up; killed when the block ends. Skips the test when prometheus is absent."""
    if PROMETHEUS is None:
        missing_component("prometheus")
    config = tmp_path / "prometheus.json"
    write_config(config, target, metrics_path)
    log_path = tmp_path / "prometheus.log"
    for attempt in range(STARTS):
        port = free_port()
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / f'tsdb{attempt}'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        try:
            client = PromClient(f"http://127.0.0.1:{port}", log_path)
            if _wait_ready(proc, client.base):
                client.wait_target_up()
                yield client
                return
        finally:
            _kill(proc)
    raise AssertionError(f"prometheus did not start in {STARTS} tries:\n{_tail(log_path)}")


def _wait_ready(proc: subprocess.Popen[bytes], base: str) -> bool:
    """Wait until the server answers ``/-/ready``: True; False if it exited (port taken)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as answer:
                if answer.status == 200:
                    return True
        time.sleep(0.1)
    raise AssertionError(f"prometheus not ready after {START_TIMEOUT} s")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill the prometheus process started here (by pid) and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""
