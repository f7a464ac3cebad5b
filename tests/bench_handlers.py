"""Handlers with known behaviour for the ``prefork bench`` trust tests
(``tests.bench_handlers:NAME``, served from the repository root)."""

from __future__ import annotations

import socket
import socketserver
import struct
import time

#: The service time of SleepHandler, in seconds. 20 ms rather than 10: on 2 busy cores a worker
#: may wait a millisecond for a CPU after each sleep, which must stay well within 10%.
SERVICE_TIME = 0.020
#: ResetHandler resets every this-many-th connection of each worker.
RESET_EVERY = 10


class SleepHandler(socketserver.StreamRequestHandler):
    """For each line read: sleep SERVICE_TIME (20 ms), then write the line back."""

    def handle(self) -> None:
        for line in self.rfile:
            time.sleep(SERVICE_TIME)
            self.wfile.write(line)


class ResetHandler(socketserver.StreamRequestHandler):
    """Echo each line, except on each worker's 10th, 20th, ... connection: read the line, then
    reset the connection (SO_LINGER 0, close) instead of answering."""

    connections = 0  # per worker process: each has its own copy after the fork

    def handle(self) -> None:
        type(self).connections += 1
        if type(self).connections % RESET_EVERY == 0:
            self.rfile.readline()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return
        for line in self.rfile:
            self.wfile.write(line)


class SilentHandler(socketserver.StreamRequestHandler):
    """Read a line and close the connection without a reply: every request fails."""

    def handle(self) -> None:
        self.rfile.readline()


class MixedHandler(socketserver.StreamRequestHandler):
    """For each line read: 1 ms of CPU work, then 9 ms of waiting (as on a database), then
    write the line back. A pool of N serves about N x 100 req/s until the CPUs run out."""

    def handle(self) -> None:
        for line in self.rfile:
            end = time.thread_time() + 0.001
            while time.thread_time() < end:
                pass
            time.sleep(0.009)
            self.wfile.write(line)


#: The CPU time CpuHandler spends on each request, in seconds.
CPU_TIME = 0.002


class CpuHandler(socketserver.StreamRequestHandler):
    """For each line read: 2 ms of CPU work (a loop until this thread has used CPU_TIME), then
    write the line back. CPU-bound: a pool serves at most about usable CPUs / 2 ms requests
    per second, and more workers than CPUs only wait for a CPU."""

    def handle(self) -> None:
        for line in self.rfile:
            end = time.thread_time() + CPU_TIME
            while time.thread_time() < end:
                pass
            self.wfile.write(line)


#: StuckHandler holds each request but a worker's first for this many seconds.
STUCK_TIME = 60.0


class StuckHandler(socketserver.StreamRequestHandler):
    """Echo each worker's first connection (the bench's probe) at once; hold every later one
    for STUCK_TIME seconds without a reply, so a graceful stop waits for it."""

    connections = 0  # per worker process: each has its own copy after the fork

    def handle(self) -> None:
        type(self).connections += 1
        line = self.rfile.readline()
        if type(self).connections > 1:
            time.sleep(STUCK_TIME)
        self.wfile.write(line)
