"""The master's pid file (the ``pidfile`` setting), as gunicorn's pidfile.py.

Files the master writes where others may write too (the pid file, the scoreboard file) are
created by :func:`create_beside`: a new file of an unpredictable name, opened with
``O_CREAT | O_EXCL | O_NOFOLLOW``, then renamed onto the path. Rename replaces a symlink at
the path instead of following it, so a symlink planted there or at a guessable temporary name
never makes the master (often root) write to the file it points at.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys

from prefork.errors import PreforkError

log = logging.getLogger("prefork")

#: What a live master's process title (``/proc/PID/cmdline``) starts with.
MASTER_TITLE = b"prefork: master"

#: Tries of :func:`create_beside` before it gives up (each name is 64 random bits: a clash
#: means someone keeps creating our names, not bad luck).
_TRIES = 100


def create_beside(path: str, mode: int) -> tuple[int, str]:
    """Create a new, empty file in the directory of ``path`` (a str) under an unpredictable
    name, ``PATH.<16 hex digits>.tmp``, with permission bits ``mode`` (an int, e.g. ``0o644``;
    the umask applies, as for ``open()``), to be renamed onto ``path`` with ``os.replace``.

    Returns ``(fd, name)``: the file open for reading and writing (close-on-exec) and its path.
    It is opened with ``O_CREAT | O_EXCL | O_NOFOLLOW``, so it is never a file or symlink that
    was already there. Raises OSError when it cannot be created (FileExistsError after
    :data:`_TRIES` names were all taken). Runs in the master.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(_TRIES - 1):
        name = f"{path}.{os.urandom(8).hex()}.tmp"
        try:
            return os.open(name, flags, mode), name
        except FileExistsError:
            continue
    name = f"{path}.{os.urandom(8).hex()}.tmp"
    return os.open(name, flags, mode), name


def master_running(pid: int) -> bool:
    """Whether process ``pid`` (an int) is alive and titled as a prefork master (its command
    line, as ``ps`` shows it, starts with ``prefork: master``). Reads ``/proc/PID/cmdline`` on
    Linux, asks psutil elsewhere. A process whose command line may not be read (another
    user's, with ``/proc`` mounted ``hidepid``) counts as a master: never two masters on one
    pid file. A zombie has no command line: not a master. Never raises. Runs in the master.
    """
    if pid <= 0:
        return False
    if sys.platform.startswith("linux"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                return file.read(len(MASTER_TITLE)) == MASTER_TITLE
        except PermissionError:
            return True
        except OSError:  # no such process
            return False
    import psutil  # here: only a master with a pid file off Linux pays for importing it

    try:
        title = " ".join(psutil.Process(pid).cmdline())
    except psutil.AccessDenied:
        return True
    except psutil.Error:
        return False
    return title.encode(errors="replace").startswith(MASTER_TITLE)


class Pidfile:
    """The file at ``path`` (a str) holding the master's pid while it serves. Created, used
    and removed in the master.

    :meth:`create` refuses to start a second master on the same file, takes over a stale one,
    and writes the file atomically (:func:`create_beside`, then a rename), so a reader never
    sees it half written. :meth:`remove` deletes it only if it still holds this process's pid.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def read(self) -> int | None:
        """The pid in the file, or None when there is no file, no regular file (a symlink, a
        FIFO: not followed, not waited on) or no pid in it. Never raises."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            text = os.read(fd, 32).strip()
        except OSError:
            return None
        finally:
            os.close(fd)
        return int(text) if text.isdigit() and int(text) > 0 else None

    def create(self, *, takeover_from: int = 0) -> None:
        """Write this process's pid (and a newline) to the file, mode ``0o644`` less the umask.

        Raises :class:`~prefork.errors.PreforkError` ("pid file PATH: already running as pid
        N") when the file names another live prefork master (:func:`master_running`), unless
        that is ``takeover_from`` (an int: the pid of the old master of a USR2 upgrade, whose
        file the new master takes over; 0: none). A stale file (its pid dead or not a prefork
        master's, or no pid in it) is replaced, logged at INFO. Raises OSError when the file
        cannot be written; no temporary file is left behind then.
        """
        me = os.getpid()
        if os.path.lexists(self.path):
            pid = self.read()
            if pid is not None and pid not in (me, takeover_from) and master_running(pid):
                raise PreforkError(f"pid file {self.path}: already running as pid {pid}")
            if pid not in (me, takeover_from):
                named = "no pid" if pid is None else f"pid {pid}, not a running prefork master"
                log.info("Replacing the stale pid file %s (it named %s).", self.path, named)
        fd, temporary = create_beside(self.path, 0o644)
        try:
            try:
                os.write(fd, f"{me}\n".encode("ascii"))
            finally:
                os.close(fd)
            os.replace(temporary, self.path)  # replaces a symlink at path, never follows it
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def remove(self) -> None:
        """Delete the file if it holds this process's pid (a new master took it over, or
        someone else wrote it: left alone); never raises."""
        if self.read() == os.getpid():
            with contextlib.suppress(OSError):
                os.unlink(self.path)
