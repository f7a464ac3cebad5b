"""What the benchmark scripts share: contenders in their own process group, wrk, the machine.

Every server runs in its own session (process group == its pid), on 127.0.0.1, and is stopped
by :meth:`Server.stop`: SIGTERM to the group, SIGKILL to what remains after a grace period, then
a psutil check that no process of the group is left. Never by name.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import psutil

import prefork

BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APPS_DIR = os.path.join(BENCH_DIR, "apps")
REPO_DIR = os.path.dirname(BENCH_DIR)
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


class Skip(Exception):
    """A contender that cannot run here (not installed, rejected option): skipped, not failed."""


def machine() -> dict[str, Any]:
    """Cores, Python, prefork and platform, for the header and the JSON."""
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "prefork": prefork.__version__,
        "platform": platform.platform(),
        "load_avg_1m": os.getloadavg()[0],
    }


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"machine: {m['cpu_count']} cores, Python {m['python']}, prefork {m['prefork']}, "
        f"load average {m['load_avg_1m']:.2f} at start"
    )


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound then closed: loopback only, a tiny race)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gunicorn_command() -> list[str] | None:
    """How to run gunicorn with this Python, or None when it is not installed."""
    try:
        import gunicorn  # noqa: F401
    except ImportError:
        return None
    return [sys.executable, "-m", "gunicorn"]


def group_members(pgid: int) -> list[int]:
    """Pids of live (non-zombie) processes whose process group is pgid."""
    out = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return out


class Server:
    """One contender's command, started in its own session; stderr+stdout to a temp file.

    The contender gets Python's default bytecode caching even where the environment turns it
    off (``PYTHONDONTWRITEBYTECODE``, set on these sandboxes): an installed server runs from
    ``.pyc`` files, and compiling every module at each start would measure the compiler.
    """

    def __init__(self, name: str, command: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.command = list(command)
        self.log = tempfile.TemporaryFile()
        full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO_DIR, BENCH_DIR]))
        full_env.pop("PYTHONDONTWRITEBYTECODE", None)
        full_env.update(env or {})
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
            cwd=REPO_DIR,
            env=full_env,
        )
        self.pid = self.proc.pid

    def output(self, chars: int = 2000) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-chars:]

    def wait_ready(self, probe: Any, timeout: float = 20.0, interval: float = 0.02) -> float:
        """Call ``probe()`` until it returns True; seconds since the start. Raises RuntimeError
        (or Skip, when the server exits with status 2: bad usage, an option it rejects)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if probe():
                return time.monotonic() - self.started
            if self.proc.poll() is not None:
                msg = f"{self.name}: exited with status {self.proc.returncode}: {self.output(600).strip()}"
                raise Skip(msg) if self.proc.returncode == 2 else RuntimeError(msg)
            time.sleep(interval)
        raise RuntimeError(f"{self.name}: not ready after {timeout:g} s:\n{self.output()}")

    def stop(self, grace: float = 10.0) -> list[int]:
        """SIGTERM the group, SIGKILL it after ``grace`` s; the pids left after that (normally [])."""
        pgid = self.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            self.proc.poll()
            if not group_members(pgid):
                break
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        deadline = time.monotonic() + 5
        while (left := group_members(pgid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.log.close()
        return left


def http_ok(port: int, timeout: float = 1.0) -> bool:
    """True when GET / on 127.0.0.1:port answers 200."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request("GET", "/")
            return conn.getresponse().status == 200
        finally:
            conn.close()
    except OSError:
        return False


def line_ok(port: int, timeout: float = 1.0) -> bool:
    """True when a line sent to 127.0.0.1:port gets a line back."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"ping\n")
            return s.recv(100).endswith(b"\n")
    except OSError:
        return False


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def wrk_cmd(url: str, duration: float, connections: int, keepalive: bool) -> list[str]:
    """wrk with --latency; ``-H 'Connection: close'`` unless keepalive."""
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{duration:g}s", "--latency"]
    if not keepalive:
        cmd += ["-H", "Connection: close"]
    return [*cmd, url]


def wrk_line(duration: float, connections: int, keepalive: bool) -> str:
    cmd = wrk_cmd("http://127.0.0.1:PORT/", duration, connections, keepalive)
    return " ".join(cmd).replace("Connection: close", "'Connection: close'")


def _ms(value: str, unit: str) -> float:
    return float(value) * UNITS[unit]


def parse_wrk(out: str) -> dict[str, float]:
    """req/s, latency avg/p50/p99 (ms), requests, socket errors and non-2xx/3xx from wrk --latency."""
    rps = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{out}")
    lat = re.search(r"Latency\s+([\d.]+)(us|ms|s|m|h)\b", out)
    p50 = re.search(r"^\s*50%\s+([\d.]+)(us|ms|s|m|h)\b", out, re.M)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s|m|h)\b", out, re.M)
    total = re.search(r"(\d+) requests in", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    nan = float("nan")
    return {
        "rps": float(rps.group(1)),
        "latency_avg_ms": _ms(*lat.groups()) if lat else nan,
        "p50_ms": _ms(*p50.groups()) if p50 else nan,
        "p99_ms": _ms(*p99.groups()) if p99 else nan,
        "requests": int(total.group(1)) if total else 0,
        "socket_errors": sum(int(g) for g in sock.groups()) if sock else 0,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def run_wrk(
    url: str, duration: float, connections: int, keepalive: bool, warmup: float = 1.0
) -> dict[str, Any]:
    """A warm-up run (not kept), then the measured one; bounded by wrk's own -d plus 30 s."""
    if warmup > 0:
        subprocess.run(wrk_cmd(url, warmup, connections, keepalive), capture_output=True, timeout=warmup + 30)
    res = subprocess.run(
        wrk_cmd(url, duration, connections, keepalive), capture_output=True, text=True, timeout=duration + 30
    )
    if res.returncode != 0:
        raise RuntimeError(f"wrk exited {res.returncode}: {res.stderr.strip()}")
    return parse_wrk(res.stdout)


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is 0."""
    if a is None or b is None or not b:
        return None
    return a / b


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"
