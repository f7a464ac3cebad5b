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
import signal
import sys
from collections.abc import Sequence

from prefork import systemd
from prefork.logs import flush_std_streams
from prefork.messages import WORKER_EXIT_ERROR, describe_exit

log = logging.getLogger("prefork")

#: Environment variable naming the old master, in a new master started by USR2.
UPGRADE_FROM_ENV = "PREFORK_UPGRADE_FROM"


def start_new_master(fds: Sequence[int]) -> int:
    """Fork and exec a new master: the same interpreter and command line
    (``sys.orig_argv``), with the listening sockets ``fds`` as fds 3.. and ``LISTEN_FDS`` /
    ``LISTEN_PID`` set (systemd's socket-activation protocol, so its servers adopt them) and
    ``PREFORK_UPGRADE_FROM`` naming this master. Returns its pid. Runs in the master; the
    child never returns (exec, or ``os._exit(1)`` when exec fails, which is logged). Raises
    OSError when fork() fails."""
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
        if "WATCHDOG_USEC" in environment:  # the new master pings systemd's watchdog instead
            environment["WATCHDOG_PID"] = str(os.getpid())
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


class Upgrade:
    """The master's side of USR2 upgrades. Created and used in the master.

    :attr:`new_pid` is the new master this one started, while it is our child (0: none);
    :attr:`old_pid` the old master that started this one, to stop once our pool is ready
    (0: none; read by :func:`old_master` when created).
    """

    def __init__(self) -> None:
        self.new_pid = 0
        self.old_pid = old_master()

    def start(self, fds: Sequence[int]) -> None:
        """USR2: start a new master with the listening sockets ``fds``, unless an upgrade is
        in progress or this master is PID 1 (which cannot be replaced); logs what it does."""
        if self.new_pid:
            log.warning("Received SIGUSR2, but an upgrade (new master pid %d) is in progress.", self.new_pid)
        elif os.getpid() == 1:
            log.warning("Received SIGUSR2, but a master running as PID 1 cannot be replaced; ignored.")
        else:
            try:
                self.new_pid = start_new_master(fds)
            except OSError as exc:  # fork() failed: a pid limit, no memory
                log.error("Received SIGUSR2, but cannot fork a new master (%s); still serving.", exc)
                return
            log.info("Received SIGUSR2, upgrading: started a new master (pid %d).", self.new_pid)

    def reap(self) -> None:
        """Collect the new master if it exited before taking over (logged: this master
        serves on). It is waited for by pid only."""
        if not self.new_pid:
            return
        try:
            pid, status = os.waitpid(self.new_pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.new_pid, 0
        if pid:
            how = describe_exit(os.waitstatus_to_exitcode(status))
            log.error("The new master (pid %d) %s before taking over; still serving.", pid, how)
            self.new_pid = 0

    def take_over(self, status: str) -> bool:
        """Our pool is ready: tell the service manager this process is the main one
        (``MAINPID``, ``READY=1``, ``status``) and stop the old master (TERM). False when
        this master was not started by an upgrade (nothing done)."""
        if not self.old_pid:
            return False
        log.info("Upgrade: the pool is ready; stopping the old master (pid %d).", self.old_pid)
        systemd.notify(f"MAINPID={os.getpid()}", "READY=1", status)
        try:
            os.kill(self.old_pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.old_pid = 0
        return True
