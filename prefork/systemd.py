"""systemd integration without libsystemd: ``sd_notify`` and socket activation.

Both follow the protocols systemd documents (sd_notify(3), sd_listen_fds(3)), so they also work
with other managers that speak them. Nothing here raises when there is no manager: the
functions then do nothing.
"""

from __future__ import annotations

import os
import socket

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
