"""A worker's user: switching to the ``user`` and ``group`` settings after the fork, and
saying why a worker failed once switched.

The master binds its sockets as the user it was started as (often root); each worker then
drops to ``group`` and ``user`` before serving (as gunicorn's). Whatever the worker imports
after that is read with the new user's rights: the interpreter's standard library, the
installed packages and the application must be readable by it (docs/deployment.md).
"""

from __future__ import annotations

import os
import pwd
import sys
import traceback


def prepare_user_switch() -> None:
    """Import, as the user the worker was forked as, what the worker needs to log an error
    after switching users: format one traceback, which loads what the interpreter loads
    lazily for it (Python 3.13's ``linecache`` imports ``tokenize`` on first use, for one),
    so a worker that fails as an unprivileged user can still log why. Runs in the worker."""
    try:
        raise RuntimeError("warming up traceback formatting")
    except RuntimeError as exc:
        traceback.format_exception(exc)


def switch_user(user: int | None, group: int | None) -> None:
    """Switch this process to ``group`` and ``user`` (ids; None: keep), gid first, with the
    user's supplementary groups (as gunicorn's user and group settings). Runs in a worker,
    after the fork. Raises PermissionError if not allowed."""
    if group is not None:
        os.setgid(group)
    if user is not None:
        if group is None:
            group = pwd_gid(user)
            os.setgid(group)
        name = pwd_name(user)
        os.setgroups(os.getgrouplist(name, group) if name is not None else [group])
        os.setuid(user)


def boot_error_text(error: BaseException, user: int | None) -> str:
    """The cause of a boot failure as the worker reports it to the master: ``Type: message``,
    or, for an import that failed after switching to ``user`` (an ImportError or a
    PermissionError in the chain of causes), ``cannot import NAME as user USER: REASON``,
    naming the directories of ``sys.path`` that user cannot read. Runs in the worker."""
    text = f"{type(error).__name__}: {error}"
    if user is None:
        return text
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, (ImportError, PermissionError)):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return text
    who = pwd_name(user) or str(user)
    unreadable = [path for path in sys.path if _unreadable(path)]
    if isinstance(cause, PermissionError):
        name, reason = cause.filename or "a module", cause.strerror or "Permission denied"
    else:
        name, reason = cause.name or "a module", str(cause)
        if unreadable:
            reason = "Permission denied"
    if unreadable:
        reason += f" (not readable as {who}: {', '.join(unreadable)})"
    return f"cannot import {name} as user {who}: {reason}"


def _unreadable(path: str) -> bool:
    """Whether directory ``path`` (a ``sys.path`` entry) exists but cannot be listed and
    entered by this process."""
    if not path:
        return False
    try:
        os.stat(path)
    except PermissionError:
        return True
    except OSError:
        return False
    return os.path.isdir(path) and not os.access(path, os.R_OK | os.X_OK)


def pwd_gid(uid: int) -> int:
    """The primary group of user ``uid`` (``uid`` itself when the user is not in passwd)."""
    try:
        return int(pwd.getpwuid(uid).pw_gid)
    except KeyError:
        return uid


def pwd_name(uid: int) -> str | None:
    """The name of user ``uid``, or None when the user is not in passwd."""
    try:
        return str(pwd.getpwuid(uid).pw_name)
    except KeyError:
        return None
