"""Request handlers the tests serve, through the API or the CLI (``tests/handlers.py:NAME``)."""

from __future__ import annotations

import os
import signal
import socketserver
import time
from http.server import BaseHTTPRequestHandler
from typing import Any


def _hold(data: bytes) -> None:
    """``sleep S ...`` data holds the worker S seconds first (to make requests overlap)."""
    if data.startswith(b"sleep "):
        time.sleep(float(data.split()[1]))


class PidEchoHandler(socketserver.StreamRequestHandler):
    """Reads one line, answers ``PID LINE``: tells which worker served the request."""

    def handle(self) -> None:
        line = self.rfile.readline()
        _hold(line)
        self.wfile.write(f"{os.getpid()} ".encode() + line)


class Handler(PidEchoHandler):
    """The module's default handler (for TARGET given as a file alone)."""


class SlowHandler(socketserver.StreamRequestHandler):
    """Reads a line holding a number of seconds, sleeps that long, answers ``done PID``."""

    def handle(self) -> None:
        seconds = float(self.rfile.readline() or 0)
        time.sleep(seconds)
        self.wfile.write(f"done {os.getpid()}\n".encode())


class CrashHandler(socketserver.StreamRequestHandler):
    """``raise``: an exception; ``exit``: os._exit(7); ``sysexit``: SystemExit escapes the
    worker's loop; ``segv``: the worker segfaults; anything else: ``PID ok``."""

    def handle(self) -> None:
        line = self.rfile.readline().strip()
        if line == b"raise":
            raise RuntimeError("handler failed on purpose")
        if line == b"exit":
            os._exit(7)
        if line == b"sysexit":
            raise SystemExit(9)
        if line == b"segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        self.wfile.write(f"{os.getpid()} ok\n".encode())


class PidDatagramHandler(socketserver.DatagramRequestHandler):
    """Answers each datagram with ``PID DATA``."""

    def handle(self) -> None:
        data = self.rfile.read()
        _hold(data)
        self.wfile.write(f"{os.getpid()} ".encode() + data)


class HelloHTTPHandler(BaseHTTPRequestHandler):
    """GET -> 200 ``hello PID``."""

    def do_GET(self) -> None:
        if "?sleep=" in self.path:
            time.sleep(float(self.path.rpartition("=")[2]))
        body = f"hello {os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class LeakHandler(socketserver.StreamRequestHandler):
    """Each request keeps N more MiB (the line: N) in the worker; answers ``PID RSS_MIB``."""

    leaked: list[bytes] = []  # noqa: RUF012 - the leak, on purpose (per worker process)

    def handle(self) -> None:
        mib = int(self.rfile.readline() or 0)
        self.leaked.append(os.urandom(mib << 20))
        self.wfile.write(f"{os.getpid()} {len(self.leaked)}\n".encode())


def hang_forever() -> None:
    """Where a hung handler waits (a named frame, for the stack dump)."""
    while True:
        time.sleep(1)


class HangHandler(socketserver.StreamRequestHandler):
    """``hang``: never answers; anything else: ``PID ok``."""

    def handle(self) -> None:
        if self.rfile.readline().strip() == b"hang":
            hang_forever()
        self.wfile.write(f"{os.getpid()} ok\n".encode())


class ForkingHandler(socketserver.StreamRequestHandler):
    """``fork``: ``os.fork()``; the child sleeps 0.2 s and returns from the handler (into the
    worker's code), the parent answers ``PID CHILD``. Anything else: ``PID``."""

    def handle(self) -> None:
        line = self.rfile.readline().strip()
        if line == b"fork":
            child = os.fork()
            if child == 0:
                time.sleep(0.2)
                return
            self.wfile.write(f"{os.getpid()} {child}\n".encode())
        else:
            self.wfile.write(f"{os.getpid()}\n".encode())


class AddressEchoHandler(socketserver.StreamRequestHandler):
    """Reads one line, answers ``HOST PORT LINE``: the client address the server gave the
    handler (the original client's, behind a PROXY header)."""

    def handle(self) -> None:
        line = self.rfile.readline()
        host, port = self.client_address[:2] if isinstance(self.client_address, tuple) else ("unix", 0)
        self.wfile.write(f"{host} {port} ".encode() + line)


class ClientHTTPHandler(BaseHTTPRequestHandler):
    """GET /health -> 200 ``ok``; any other GET -> 200 ``client HOST``: the client address
    the server gave the handler (behind a PROXY header, the original client's)."""

    def do_GET(self) -> None:
        body = b"ok\n" if self.path == "/health" else f"client {self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass
