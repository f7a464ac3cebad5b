"""The client processes of ``prefork bench``, seen from the bench's parent process.

:class:`ClientProcess` starts ``python -m prefork.bench.client`` (:mod:`prefork.bench.client`,
the child's side) and speaks its protocol: a :class:`~prefork.bench.load.LoadSpec` as one line
of JSON on the child's stdin, then ``go T`` (the monotonic time to start at); on its stdout
the lines ``ready``, ``progress N`` and ``result JSON`` (a
:class:`~prefork.bench.load.LoadResult`), or ``error TEXT`` (one line saying why it could
not go on, such as too many open files).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import IO

from prefork.bench.lifecycle import die_with_parent
from prefork.bench.load import LoadResult, LoadSpec

#: Bytes read from a client's stdout at a time.
_READ_SIZE = 65536

#: Lines a client process writes on its stdout (its protocol with the parent).
READY, PROGRESS, RESULT, ERROR = "ready", "progress", "result", "error"


class ClientProcess:
    """A ``python -m prefork.bench.client`` child running one :class:`LoadSpec`.

    Created by the bench's parent process. It writes ``ready``, waits for a line on its
    stdin (:meth:`go`), runs the load, writes ``progress N`` lines and a final ``result
    JSON`` line (or an ``error`` line), and exits; it gets SIGKILL if the bench ends first,
    even by SIGKILL (:func:`~prefork.bench.lifecycle.die_with_parent`). :meth:`kill` ends it
    (by its pid) if it is still running. Raises OSError when the child cannot be started.
    """

    def __init__(self, spec: LoadSpec) -> None:
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prefork.bench.client"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            bufsize=0,
            preexec_fn=die_with_parent(signal.SIGKILL),
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin: IO[bytes] = self.proc.stdin
        self.stdout: IO[bytes] = self.proc.stdout
        self._buffer = bytearray()
        self.completed = 0
        self.result: LoadResult | None = None
        self.error: str | None = None
        self.ready = False
        try:
            self.stdin.write(spec.to_json().encode() + b"\n")
        except BaseException:  # a broken pipe, a Ctrl-C: the caller never gets it to kill
            self.kill()
            raise

    def go(self, begin: float) -> None:
        """Tell the (ready) client to start at ``begin`` (a ``time.monotonic()`` time, the
        same for every process on the machine). Raises BrokenPipeError if it has exited."""
        self.stdin.write(f"go {begin!r}\n".encode())

    def read_available(self) -> bool:
        """Read what the client wrote (call when its stdout is readable) and apply each
        whole line: set :attr:`ready`, :attr:`completed` (measured requests finished),
        :attr:`result` or :attr:`error`. Return False at EOF. Raises ValueError on a malformed line, OSError
        when the pipe cannot be read."""
        data = os.read(self.stdout.fileno(), _READ_SIZE)
        self._buffer += data
        *lines, rest = self._buffer.split(b"\n")
        self._buffer = bytearray(rest)
        for line in lines:
            kind, _, text = line.decode().partition(" ")
            if kind == READY:
                self.ready = True
            elif kind == PROGRESS:
                self.completed = int(text)
            elif kind == RESULT:
                self.result = LoadResult.from_json(text)
            elif kind == ERROR:
                self.error = text
        return bool(data)

    def kill(self) -> None:
        """SIGKILL the client if it still runs, and reap it. Safe to call twice; raises nothing."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.stdin, self.stdout):
            try:
                stream.close()
            except OSError:  # a broken pipe
                pass
