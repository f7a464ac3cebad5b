"""Request handlers for the fault tests, served from the CLI (``tests.faults.handlers:NAME``).

Importing this module has no side effect (the boot-failure modules are separate files)."""

from __future__ import annotations

import ctypes
import os
import signal
import socketserver
import sys
import time

#: Memory each request of LeakHandler keeps (touched, so it is resident).
LEAK_BYTES = 8 * 1024 * 1024
_leaked: list[bytes] = []


class EchoHandler(socketserver.StreamRequestHandler):
    """Reads one line, answers ``PID LINE``; ``sleep S`` holds the worker S seconds first."""

    def handle(self) -> None:
        line = self.rfile.readline()
        if line.startswith(b"sleep "):
            time.sleep(float(line.split()[1]))
        self.wfile.write(f"{os.getpid()} ".encode() + line)


class FaultHandler(socketserver.StreamRequestHandler):
    """Reads one line naming a fault, commits it; ``sleep S`` answers after S seconds; any
    other line is echoed as ``PID LINE``.

    Faults: ``raise`` (an exception), ``sysexit`` (SystemExit), ``kbint`` (KeyboardInterrupt),
    ``osexit`` (os._exit(7)), ``segv`` (ctypes.string_at(0): a real segfault), ``stdout``
    (closes stdout, fd 1 included, then prints: the request fails, the worker lives on).
    """

    def handle(self) -> None:
        line = self.rfile.readline()
        word = line.strip()
        if word == b"raise":
            raise RuntimeError("handler failed on purpose")
        if word == b"sysexit":
            raise SystemExit(9)
        if word == b"kbint":
            raise KeyboardInterrupt
        if word == b"osexit":
            os._exit(7)
        if word == b"segv":
            ctypes.string_at(0)
        if word == b"stdout":
            sys.stdout.close()
            os.close(1)
            print("to a closed stdout")  # ValueError: the request fails, handled by handle_error
        if word.startswith(b"sleep "):
            time.sleep(float(word.split()[1]))
        self.wfile.write(f"{os.getpid()} ".encode() + line)


class HangHandler(socketserver.StreamRequestHandler):
    """``sleep``: hangs in time.sleep; ``spin``: hangs in a pure-Python loop; ``blocked``:
    hangs with SIGABRT blocked (only the SIGKILL can end it); else echoes ``PID LINE``."""

    def handle(self) -> None:
        line = self.rfile.readline()
        word = line.strip()
        if word == b"sleep":
            hang_in_sleep()
        elif word == b"spin":
            hang_in_loop()
        elif word == b"blocked":
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGABRT})
            hang_in_sleep()
        self.wfile.write(f"{os.getpid()} ".encode() + line)


def hang_in_sleep() -> None:
    """Never returns (sleeps); its name must show in the stack dumped on the timeout."""
    while True:
        time.sleep(3600)


def hang_in_loop() -> None:
    """Never returns (spins in Python); its name must show in the stack dumped on the timeout."""
    n = 0
    while True:
        n += 1


class LeakHandler(socketserver.StreamRequestHandler):
    """Keeps LEAK_BYTES more resident memory per request, answers ``PID RSS_BYTES``."""

    def handle(self) -> None:
        self.rfile.readline()
        _leaked.append(b"\x01" * LEAK_BYTES)
        with open("/proc/self/statm") as statm:
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        self.wfile.write(f"{os.getpid()} {rss}\n".encode())


class ExitAfterAnswerHandler(socketserver.StreamRequestHandler):
    """Answers ``PID LINE``, then the worker exits (os._exit(0)): one restart per request."""

    def handle(self) -> None:
        line = self.rfile.readline()
        self.wfile.write(f"{os.getpid()} ".encode() + line)
        self.wfile.flush()
        self.request.close()
        os._exit(0)
