"""The bench's own processes: what keeps the servers and client processes it starts from
outliving it, and from failing for want of open files.

- :func:`held_signals`: the stop signals (SIGINT, SIGTERM, SIGHUP) are held while the bench
  stops what it started, so a second Ctrl-C cannot cut the stop short; one that came
  meanwhile (:func:`interrupt_pending`) hurries it, and is delivered once it is done.
- :func:`die_with_parent`: a ``preexec_fn`` by which a child gets a signal when the bench
  ends, even by SIGKILL (Linux's ``PR_SET_PDEATHSIG``).
- :func:`ensure_open_files`: the open-file limit a client process needs, raised up front.

All run in the bench's parent process (the ``preexec_fn`` in the child, before its exec).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import sys
from collections.abc import Callable, Iterator

#: The signals that stop the bench (:func:`prefork.bench.main` turns each into a
#: KeyboardInterrupt).
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
#: Open files a client process needs besides its sockets: stdio, the selector, imports.
FD_MARGIN = 32
#: prctl(2)'s option: the signal this process gets when the thread that forked it ends.
_PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """Block :data:`STOP_SIGNALS` in this thread for the ``with`` block; those that came
    meanwhile are delivered when it ends (and then raise KeyboardInterrupt, as the bench
    handles them). Raises nothing itself."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def interrupt_pending() -> bool:
    """Whether a stop signal came while :func:`held_signals` holds them. Raises nothing."""
    return bool(signal.sigpending() & STOP_SIGNALS)


def die_with_parent(signum: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` for :class:`subprocess.Popen`: the child gets ``signum`` when this
    process (the thread starting it) ends, however it ends, SIGKILL included; and at once if
    it ended before the child could ask. None where there is no ``prctl`` (not Linux): there
    a bench killed by SIGKILL leaves its children to end on their own. Raises nothing."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not after the fork
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:  # the bench ended before the prctl
            os.kill(os.getpid(), signum)

    return preexec


def ensure_open_files(sockets: int) -> None:
    """Let a process started from here open ``sockets`` sockets and :data:`FD_MARGIN` more
    files: raise this process's soft ``RLIMIT_NOFILE`` (which its children inherit) to its
    hard limit if need be.

    Raises ValueError, with one line saying what to do, when the hard limit is too low.
    """
    needed = sockets + FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ValueError(
            f"{sockets:,} requests in flight in one client process need {needed:,} open files, but "
            f"the limit is {hard:,} (ulimit -n): lower --concurrency, or raise --clients"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else needed, hard))
