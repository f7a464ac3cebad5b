"""The USR2 upgrade: a new master, started with this master's listening sockets, takes over.

The old master forks and execs a new one (:func:`start_new_master`) with the same interpreter
and command line, handing it the listening sockets by systemd's socket-activation protocol
(fds 3.., ``LISTEN_FDS``, ``LISTEN_PID``) and naming itself in ``PREFORK_UPGRADE_FROM``. The
new master adopts the sockets (:mod:`prefork.sockets`), boots its pool and, once every worker
is ready, stops the old master with TERM (:func:`old_master` tells it which pid that is). No
connection is refused: the sockets stay open in one master or the other throughout.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
from collections.abc import Sequence

from prefork import systemd
from prefork.logs import flush_std_streams
from prefork.messages import WORKER_EXIT_ERROR

log = logging.getLogger("prefork")

#: Environment variable naming the old master, in a new master started by USR2.
UPGRADE_FROM_ENV = "PREFORK_UPGRADE_FROM"


def start_new_master(fds: Sequence[int]) -> int:
    """Fork and exec a new master: the same interpreter and command line
    (``sys.orig_argv``), with the listening sockets ``fds`` as fds 3.. and ``LISTEN_FDS`` /
    ``LISTEN_PID`` set (systemd's socket-activation protocol, so its servers adopt them) and
    ``PREFORK_UPGRADE_FROM`` naming this master. Returns its pid. Runs in the master; the
    child never returns (exec, or ``os._exit(1)`` when exec fails, which is logged)."""
    flush_std_streams()
    pid = os.fork()
    if pid:
        return pid
    try:
        first = systemd.LISTEN_FDS_START
        copies = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, first + len(fds)) for fd in fds]
        for index, fd in enumerate(copies):
            os.dup2(fd, first + index)  # inheritable, unlike the copies
        environment = {
            **os.environ,
            **systemd.listen_fds_environment(len(fds), os.getpid()),
            UPGRADE_FROM_ENV: str(os.getppid()),
        }
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)
    except BaseException:
        log.exception("Cannot start the new master")
    finally:
        os._exit(WORKER_EXIT_ERROR)


def old_master() -> int:
    """The pid of the master that started this one by USR2 (to stop once this master's pool
    is ready), or 0. Takes ``PREFORK_UPGRADE_FROM`` out of the environment (so workers and
    later upgrades do not see it) and trusts it only when it names this process's parent.
    Runs in the master."""
    text = os.environ.pop(UPGRADE_FROM_ENV, "")
    if text.isdigit() and int(text) == os.getppid():
        return int(text)
    return 0


def upgrading() -> bool:
    """Whether this process is a new master started by USR2 (before :func:`old_master`
    consumed the variable): its listening sockets are the old master's, not ``--bind``'s."""
    return UPGRADE_FROM_ENV in os.environ
