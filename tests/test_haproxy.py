"""Two prefork instances behind a real HAProxy (Debian's ``haproxy``), as a production
set-up has them: PROXY protocol v2 (HAProxy's backend connections come from another loopback
address, 127.0.0.2, so the client it names, 127.0.0.1, differs from the peer), HTTP health
checks, ``retries`` and ``option redispatch``. Under wrk's load, each instance is restarted
in turn (TERM, then started again) and one is upgraded with USR2: not one request fails, and
every answer names wrk's address. The PROXY headers HAProxy itself sends (v1 and v2) are
captured and parsed too.

The health check is HTTP (``option httpchk GET /health``), not TCP: a prefork master keeps its
listening socket open while no worker serves (a reload that failed, workers failing to boot),
so only an answer proves the pool serves. HAProxy's checks carry a PROXY v2 ``LOCAL`` header,
which prefork accepts (the connection's own address is kept).
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from prefork.proxyproto import parse_v1, parse_v2
from tests.conftest import CLIServer, ServerProcess, skip_unless_installed, wait_for

pytestmark = pytest.mark.timeout(90)

Serve = Callable[..., CLIServer]
HANDLER = "tests.handlers:ClientHTTPHandler"
#: Seconds of wrk's load, during which the instances are restarted and upgraded.
LOAD_SECONDS = 14

CONFIG = """\
global
    maxconn 1024

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout check 2s
    retries 3
    option redispatch 1
    retry-on all-retryable-errors

frontend web
    bind 127.0.0.1:{front}
    default_backend pool

backend pool
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    source 127.0.0.2
    default-server send-proxy-v2 check inter 100ms fall 1 rise 2
    server a 127.0.0.1:{a}
    server b 127.0.0.1:{b}

listen capture_v1
    mode tcp
    bind 127.0.0.1:{capture_v1}
    server sink 127.0.0.1:{sink} send-proxy

listen capture_v2
    mode tcp
    bind 127.0.0.1:{capture_v2}
    server sink 127.0.0.1:{sink} send-proxy-v2
"""

#: wrk's script: count the answers that do not name wrk's own address (127.0.0.1).
WRK_SCRIPT = """\
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) foreign = 0 end
function response(status, headers, body)
  if not string.find(body, "client 127.0.0.1", 1, true) then foreign = foreign + 1 end
end
function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + thread:get("foreign") end
  io.write(string.format("foreign clients: %d\\n", total))
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Sink:
    """A TCP listener that keeps the first bytes of each connection (what HAProxy sends)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                data = b""
                try:
                    while b"hello" not in data and len(data) < 4096:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                except OSError:
                    pass
                self.received.append(data)

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


def through(front: int, path: str = "/") -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{front}{path}", timeout=5) as reply:
        body: bytes = reply.read()
        return body


def test_headers_haproxy_sends_are_parsed(tmp_path: Path) -> None:
    skip_unless_installed("haproxy", shutil.which("haproxy"))
    sink = Sink()
    ports = {name: free_port() for name in ("front", "a", "b", "capture_v1", "capture_v2")}
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG.format(sink=sink.port, **ports))
    proxy = ServerProcess(["haproxy", "-db", "-f", str(config)])
    try:
        wait_for(lambda: _listening(ports["front"]), timeout=15)
        for count, (name, parse) in enumerate((("capture_v1", parse_v1), ("capture_v2", parse_v2)), 1):
            with socket.create_connection(("127.0.0.1", ports[name]), timeout=5) as client:
                client.sendall(b"hello")
                mine = client.getsockname()
                wait_for(lambda: len(sink.received) >= count, timeout=10)  # noqa: B023
            data = sink.received[-1]
            if parse is parse_v1:
                header = data[: data.index(b"\r\n") + 2]
            else:
                header = data[: 16 + int.from_bytes(data[14:16], "big")]
            assert parse(header) == (mine[0], mine[1]), (name, data)
            assert data[len(header) :] == b"hello"  # the client's data follows the header, whole
    finally:
        proxy.destroy()
        sink.close()


def start_instance(serve_cli: Serve, port: int) -> CLIServer:
    server = serve_cli(HANDLER, "--bind", f"127.0.0.1:{port}", "--workers", "2", "--proxy-protocol", "v2")
    server.wait_workers(2)
    return server


def test_rolling_restarts_and_an_upgrade_behind_haproxy_lose_nothing(
    serve_cli: Serve, tmp_path: Path
) -> None:
    skip_unless_installed("haproxy", shutil.which("haproxy"))
    skip_unless_installed("wrk", shutil.which("wrk"))
    sink = Sink()
    ports = {name: free_port() for name in ("front", "a", "b", "capture_v1", "capture_v2")}
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG.format(sink=sink.port, **ports))
    script = tmp_path / "check.lua"
    script.write_text(WRK_SCRIPT)
    a = start_instance(serve_cli, ports["a"])
    b = start_instance(serve_cli, ports["b"])
    proxy = ServerProcess(["haproxy", "-db", "-f", str(config)])
    try:
        wait_for(lambda: _answers(ports["front"]), timeout=15)
        assert through(ports["front"]) == b"client 127.0.0.1\n"  # wrk's (our) address, not 127.0.0.2
        wrk = subprocess.Popen(
            [
                "wrk",
                "-t2",
                "-c16",
                f"-d{LOAD_SECONDS}s",
                "-s",
                str(script),
                f"http://127.0.0.1:{ports['front']}/",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(2)
        restarts = 0
        for name in ("a", "b"):  # TERM, started again once stopped
            old = a if name == "a" else b
            old.signal(signal.SIGTERM)
            assert old.wait(20) == 0
            new = start_instance(serve_cli, ports[name])
            a, b = (new, b) if name == "a" else (a, new)
            restarts += 1
            time.sleep(2)
        a.signal(signal.SIGUSR2)  # an upgrade: a new master takes over a's sockets
        assert a.wait(30) == 0  # the old master retires once the new pool is ready
        out, _ = wrk.communicate(timeout=LOAD_SECONDS + 30)
        assert wrk.returncode == 0, out
        requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        assert requests > 1000, out
        assert "Socket errors" not in out and "Non-2xx" not in out, out  # not one request failed
        assert "foreign clients: 0" in out, out  # every answer named wrk's address
        print(
            f"\nFIGURE: haproxy_rolling_restarts requests={requests} failed=0 restarts={restarts} upgrades=1"
        )
        assert through(ports["front"]) == b"client 127.0.0.1\n"  # the upgraded master serves
    finally:
        proxy.destroy()
        sink.close()


def _answers(front: int) -> bool:
    try:
        return through(front, "/health") == b"ok\n"
    except OSError:
        return False


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
