"""``python -m prefork.bench.client``: one client process of ``prefork bench``.

Started by :class:`~prefork.bench.client_process.ClientProcess` in the bench's parent process.
It reads a :class:`~prefork.bench.load.LoadSpec` (one JSON line) on stdin, writes ``ready``,
waits for a ``go [T]`` line on stdin (T: the ``time.monotonic()`` time to start at), drives
the load (:func:`~prefork.bench.loadgen.run_load`) writing ``progress N`` lines, then one
``result JSON`` line, and exits 0 (1 if the parent went away). When it cannot go on (a socket
it cannot open: EMFILE, ENFILE), it writes one ``error TEXT`` line instead and exits 1.
Not imported by :mod:`prefork.bench`, so ``-m`` runs it fresh.
"""

from __future__ import annotations

import errno
import sys

from prefork.bench.client_process import ERROR, PROGRESS, READY, RESULT
from prefork.bench.load import LoadSpec
from prefork.bench.loadgen import run_load


def main() -> int:
    """Read a spec on stdin, say ready, wait for a line, run it, write the result; return 0
    (1 when stdin ends before the go line, or with an ``error`` line when a socket cannot be
    opened).

    Raises ValueError, KeyError or TypeError when the first line is not a
    :class:`~prefork.bench.load.LoadSpec`'s JSON, BrokenPipeError when the parent went away.
    """
    spec = LoadSpec.from_json(sys.stdin.readline())

    def progress(completed: int) -> None:
        print(PROGRESS, completed, flush=True)

    print(READY, flush=True)
    go = sys.stdin.readline().split()
    if not go:  # the parent went away before starting us
        return 1
    try:
        result = run_load(spec, progress, float(go[1]) if len(go) > 1 else None)
    except BrokenPipeError:
        raise
    except OSError as exc:
        print(ERROR, describe(exc), flush=True)
        return 1
    print(RESULT, result.to_json(), flush=True)
    return 0


def describe(exc: OSError) -> str:
    """``exc`` in one line: what failed, its errno's name, and what to do for too many open
    files. Raises nothing."""
    name = errno.errorcode.get(exc.errno or 0, "")
    text = f"cannot open a socket: {exc.strerror or exc}" + (f" ({name})" if name else "")
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        text += ": lower --concurrency, or raise the open-file limit (ulimit -n)"
    return text


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, BrokenPipeError):
        sys.exit(1)
