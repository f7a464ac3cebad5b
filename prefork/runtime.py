"""Where a master's control socket lives by default: the user's runtime directory.

A server started with no flags can be found by ``prefork status`` run by the same user: its
control socket is ``$XDG_RUNTIME_DIR/prefork/NAME-PID.sock`` (systemd's per-user directory,
mode 0700), or ``/tmp/prefork-UID/NAME-PID.sock`` where there is none. The ``prefork``
directory is created mode 0700 without following a symlink, and refused when another user
owns it or others may enter it: a socket there is reachable only by its user (and root).
"""

from __future__ import annotations

import os
import re
import stat

from prefork.errors import PreforkError

#: Characters of a server name kept in its socket's file name (others become ``_``).
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]")


def runtime_dir(create: bool = False) -> str:
    """The directory of this user's control sockets (a str): ``$XDG_RUNTIME_DIR/prefork``
    when ``XDG_RUNTIME_DIR`` is an absolute path to a directory this user owns, else
    ``/tmp/prefork-UID``. With ``create``, make it (mode 0700) if missing.

    Raises :class:`~prefork.errors.PreforkError` when it cannot be created, is a symlink or not
    a directory, belongs to another user, or is open to group or others. Runs in any process.
    """
    base = os.environ.get("XDG_RUNTIME_DIR", "")
    uid = os.getuid()
    path = f"/tmp/prefork-{uid}"
    if base.startswith("/"):
        try:
            status = os.stat(base)
            if stat.S_ISDIR(status.st_mode) and status.st_uid == uid:
                path = os.path.join(base, "prefork")
        except OSError:
            pass
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise PreforkError(f"cannot create {path}: {exc.strerror or exc}") from None
    check_private_dir(path)
    return path


def check_private_dir(path: str) -> None:
    """Raise :class:`~prefork.errors.PreforkError` unless ``path`` is a directory (not a
    symlink to one) owned by this user and closed to group and others. A missing directory
    passes (nothing in it to trust or distrust)."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise PreforkError(f"cannot use {path}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(status.st_mode):
        raise PreforkError(f"{path} is not a directory (a symlink or a file is refused)")
    if status.st_uid != os.getuid():
        raise PreforkError(f"{path} belongs to uid {status.st_uid}, not to this user")
    if status.st_mode & 0o077:
        raise PreforkError(f"{path} is open to other users (mode {stat.S_IMODE(status.st_mode):o}; want 700)")


def default_socket_path(name: str, pid: int) -> str:
    """The default control socket path of the master ``pid`` named ``name`` (characters other
    than letters, digits and ``_.+-`` become ``_``), creating the runtime directory if
    needed. Raises :class:`~prefork.errors.PreforkError` as :func:`runtime_dir`. Runs in the
    master."""
    return os.path.join(runtime_dir(create=True), f"{_UNSAFE.sub('_', name)[:64]}-{pid}.sock")


def find_sockets() -> list[str]:
    """The control sockets in this user's runtime directory (paths ending in ``.sock``,
    sorted), live or stale: the caller tries them. [] when the directory is missing. Raises
    :class:`~prefork.errors.PreforkError` when the directory is not private (see
    :func:`runtime_dir`)."""
    directory = runtime_dir()
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise PreforkError(f"cannot list {directory}: {exc.strerror or exc}") from None
    return sorted(os.path.join(directory, n) for n in names if n.endswith(".sock"))


def socket_owner(path: str) -> tuple[str, int] | None:
    """The ``(name, pid)`` a default socket path names (``NAME-PID.sock``), or None."""
    match = re.fullmatch(r"(.*)-(\d+)\.sock", os.path.basename(path))
    return (match.group(1), int(match.group(2))) if match else None
