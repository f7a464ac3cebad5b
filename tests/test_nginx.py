"""prefork behind a real nginx (Debian's ``nginx`` with its ``stream`` module): nginx's
``stream`` proxy sends the PROXY protocol (version 1) to prefork on TCP and on a Unix socket,
and the handler sees the client, not nginx. The configuration is the one docs/deployment.md
shows."""

from __future__ import annotations

import os
import shutil
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CLIServer, ServerProcess, skip_unless_installed, wait_for

pytestmark = pytest.mark.timeout(60)

Serve = Callable[..., CLIServer]
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"

CONFIG = """\
{user}daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
load_module {module};
events {{}}
stream {{
    server {{
        listen 127.0.0.1:{tcp_front};
        proxy_pass 127.0.0.1:{tcp_backend};
        proxy_protocol on;
    }}
    server {{
        listen 127.0.0.1:{unix_front};
        proxy_pass unix:{unix_backend};
        proxy_protocol on;
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_nginx_stream_proxy_protocol_over_tcp_and_a_unix_socket(serve_cli: Serve, tmp_path: Path) -> None:
    skip_unless_installed("nginx", shutil.which("nginx") or os.path.exists("/usr/sbin/nginx"))
    skip_unless_installed("libnginx-mod-stream", os.path.exists(STREAM_MODULE))
    ports = {"tcp_front": free_port(), "tcp_backend": free_port(), "unix_front": free_port()}
    unix_backend = str(tmp_path / "app.sock")
    flags = ["--workers", "1", "--proxy-protocol", "v1"]
    serve_cli("tests.handlers:ClientHTTPHandler", "--bind", f"127.0.0.1:{ports['tcp_backend']}", *flags)
    serve_cli("tests.handlers:ClientHTTPHandler", "--bind", f"unix:{unix_backend}", *flags)
    config = tmp_path / "nginx.conf"
    user = "user root;\n" if os.geteuid() == 0 else ""  # nginx's workers reach the private tmp_path
    values = {"prefix": tmp_path, "module": STREAM_MODULE, "unix_backend": unix_backend, "user": user}
    config.write_text(CONFIG.format(**values, **ports))
    nginx = ServerProcess(
        [shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(config), "-p", str(tmp_path)]
    )
    try:
        for front in ("tcp_front", "unix_front"):
            url = f"http://127.0.0.1:{ports[front]}/"
            assert wait_for(lambda url=url: _get(url), timeout=15) == b"client 127.0.0.1\n"  # type: ignore[misc]
    finally:
        nginx.destroy()


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            body: bytes = reply.read()
            return body
    except OSError:
        return None
