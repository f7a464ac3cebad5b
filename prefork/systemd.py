"""systemd integration without libsystemd: ``sd_notify``, socket activation and the watchdog.

Both follow the protocols systemd documents (sd_notify(3), sd_listen_fds(3)), so they also work
with other managers that speak them. Nothing here raises when there is no manager: the
functions then do nothing.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping

#: The first file descriptor passed by socket activation (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3


def notify(*states: str) -> bool:
    """Send ``states`` (e.g. ``"READY=1"``, ``"STATUS=4 workers"``) to the service manager.

    Uses a datagram to the Unix socket named by ``NOTIFY_SOCKET`` (``@`` means the abstract
    namespace), as sd_notify(3). Returns True if it was sent, False when ``NOTIFY_SOCKET`` is
    unset or sending failed. Never raises. Runs in the master.
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto("\n".join(states).encode(), address)
    except OSError:
        return False
    return True


def listen_fds(unset_environment: bool = True) -> list[int]:
    """Return the file descriptors passed by socket activation, as sd_listen_fds(3).

    They are ``LISTEN_FDS`` descriptors from fd 3 when ``LISTEN_PID`` is this process's pid;
    otherwise the list is empty. The descriptors are marked close-on-exec, and with
    ``unset_environment`` the ``LISTEN_*`` variables are removed, so children do not take the
    descriptors for theirs.
    """
    try:
        pid = int(os.environ.get("LISTEN_PID", ""))
        count = int(os.environ.get("LISTEN_FDS", ""))
    except ValueError:
        pid, count = 0, 0
    if unset_environment:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
    if pid != os.getpid() or count <= 0:
        return []
    fds = list(range(LISTEN_FDS_START, LISTEN_FDS_START + count))
    for fd in fds:
        os.set_inheritable(fd, False)
    return fds


def listen_fds_environment(count: int, pid: int) -> dict[str, str]:
    """The environment that hands ``count`` descriptors, from fd 3, to process ``pid``."""
    return {"LISTEN_FDS": str(count), "LISTEN_PID": str(pid)}


class Watchdog:
    """systemd's service watchdog, as sd_watchdog_enabled(3): when the manager set
    ``WATCHDOG_USEC`` for this process, the master loop calls :meth:`ping`, which sends
    ``WATCHDOG=1`` every half of that interval. A master whose loop stops running (hung,
    deadlocked) stops pinging, and the manager kills and restarts the service
    (``WatchdogSec=`` in the unit; ``NotifyAccess=all`` so the new master of a USR2 upgrade
    may ping). Neither gunicorn nor uWSGI pings from their master loop.

    ``WATCHDOG_PID``, when set, must be this process; otherwise the watchdog is off (the new
    master of a USR2 upgrade is started with its own pid there: see
    :func:`~prefork.upgrade.start_new_master`). ``environ`` and ``pid`` are this process's by
    default. Runs in the master.
    """

    def __init__(self, environ: Mapping[str, str] | None = None, pid: int = 0) -> None:
        environ = os.environ if environ is None else environ
        try:
            usec = int(environ.get("WATCHDOG_USEC", ""))
        except ValueError:
            usec = 0
        owner = environ.get("WATCHDOG_PID", "")
        #: Seconds between pings (half of WATCHDOG_USEC); 0 when the watchdog is off.
        self.interval = usec / 2e6 if usec > 0 and owner in ("", str(pid or os.getpid())) else 0.0
        #: ``time.monotonic()`` of the next ping due (0: at once); inf when off.
        self.next_at = 0.0 if self.interval else math.inf

    def ping(self, now: float) -> bool:
        """Send ``WATCHDOG=1`` if one is due at ``now`` (``time.monotonic()``); return whether
        it was sent."""
        if now < self.next_at:
            return False
        self.next_at = now + self.interval
        return notify("WATCHDOG=1")
