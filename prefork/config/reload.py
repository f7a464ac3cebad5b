"""HUP and the configuration file: read it again, give the master and its new workers what
can change, and say in one log line each what cannot.

Each setting declares what a HUP does with a new value (:attr:`Setting.at_hup
<prefork.config.Setting.at_hup>`, shown in the reference):

- ``HUP``: applied. The server attribute is set before the reload's new workers are forked,
  so they serve with it (``max_requests``, ``socket_timeout``, ``allow``, ``threads``, the
  TLS and PROXY settings, whose edge the master builds again on HUP, ...); the master's own
  uses read it from there (``graceful_timeout``, ``shutdown_delay``), or are given it:
  ``request_timeout`` and ``max_worker_memory`` go to its watchdog, ``workers`` resizes a
  fixed pool, ``log_level`` sets the level of the master's log (new workers inherit it).
- ``USR2``: the master's own (its sockets' options, files, processes, the code it
  imported): it takes a new master, which a USR2 upgrade starts (reading the file again).
- ``restart``: the listening sockets themselves (``bind``, ``udp``, ``unix_socket_mode``),
  which a USR2 upgrade hands over as they are: it takes a stop and a start.

The master's HUP handler (:meth:`prefork.commands.MasterCommands.handle_hup`) wraps its reload
in :func:`reloading_settings`. Runs in the master.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prefork.config import ALL_SETTINGS, HUP, RESTART, USR2, WORKERS, Setting, usable_cpus
from prefork.config.convert import optional_octal
from prefork.config.files import ConfigError, toml_value
from prefork.config.sources import Configuration
from prefork.errors import PreforkError

log = logging.getLogger("prefork")

#: What a new value that a HUP does not apply takes, by its setting's ``at_hup`` (a dynamic
#: pool's ``workers``: as USR2).
REMEDY = {
    USR2: "takes a new master (USR2)",
    RESTART: "takes a restart (stop and start: a USR2 upgrade keeps the listening sockets)",
}


class Limits(Protocol):
    """The master's watchdog (:class:`prefork.watchdog.Watchdog`): the limits it enforces."""

    request_timeout: float
    max_worker_memory: int


class ReloadingMaster(Protocol):
    """What :func:`reloading_settings` needs of the master (:class:`prefork.master.Master`):
    its server (the pool's first, which holds the settings and the ``configuration`` the
    ``prefork`` command read), its watchdog, and its resize command."""

    @property
    def server(self) -> Any: ...

    @property
    def watchdog(self) -> Limits: ...

    def set_size(self, size: int, why: str) -> str: ...


@contextlib.contextmanager
def reloading_settings(master: ReloadingMaster) -> Iterator[None]:
    """On HUP, around the reload's other checks (the TLS context is built again inside it):
    read the configuration file of ``master.server.configuration`` again and apply the new
    values that a HUP can apply; once the body succeeded, log one warning line for each new
    value that takes a new master or a restart (it keeps its old value) and one info line
    listing those applied.

    Does nothing for a server without a ``configuration`` (one made in code). Raises
    :class:`~prefork.errors.PreforkError` (one line) when the file cannot be used now; then
    nothing has changed, and the reload fails. When the body raises, the values applied are
    restored before the exception goes on. The pool's new size (``workers``) is set after
    the body, when it succeeded. Runs in the master.
    """
    server = master.server
    current: Configuration | None = getattr(server, "configuration", None)
    if current is None or current.source.path is None:
        yield
        return
    try:
        new = current.reread()
    except ConfigError as exc:
        raise PreforkError(str(exc)) from None
    applied, kept, undo = _apply_changes(current, new, master)
    try:
        yield
    except BaseException:
        for step in reversed(undo):
            step()
        raise
    where = new.source.path
    for setting in kept:
        log.warning("%s changed in %s: %s", setting.name, where, REMEDY.get(setting.at_hup, REMEDY[USR2]))
    if applied:
        log.info("Settings changed in %s, applied: %s.", where, ", ".join(applied))
    if current["workers"] != new["workers"] and WORKERS not in kept:
        master.set_size(new["workers"] or usable_cpus(), f"workers changed in {where}")
    server.configuration = new.keeping({s.name: current.values[s.name] for s in kept})


def _apply_changes(
    current: Configuration, new: Configuration, master: ReloadingMaster
) -> tuple[list[str], list[Setting[Any]], list[Callable[[], None]]]:
    """Apply to ``master`` each value of ``new`` that differs from ``current`` and that a
    HUP applies. Returns what was applied (``name NEW (was OLD)``), the settings whose new
    value was not, and how to undo each step."""
    applied, kept, undo = [], [], []
    for setting in ALL_SETTINGS:
        old, value = current[setting.name], new[setting.name]
        if old == value:
            continue
        if not _applies(setting, master.server):
            kept.append(setting)
            continue
        undo.append(_apply(setting, value, master))
        octal = setting.convert is optional_octal
        applied.append(f"{setting.name} {toml_value(value, octal)} (was {toml_value(old, octal)})")
    return applied, kept, undo


def _applies(setting: Setting[Any], server: Any) -> bool:
    """Whether a HUP applies a new value of ``setting``: declared so, and for ``workers``,
    a fixed pool's (a dynamic pool's size follows its bounds)."""
    if setting.at_hup != HUP:
        return False
    return setting is not WORKERS or server.max_workers is None


def _apply(setting: Setting[Any], value: Any, master: ReloadingMaster) -> Callable[[], None]:
    """Give ``setting``'s new ``value`` to the master; return how to undo it."""
    if setting.name == "log_level":
        root = logging.getLogger()
        level = root.level
        root.setLevel(value.upper())
        return lambda: root.setLevel(level)
    targets: list[Any] = [master.server, *getattr(master.server, "listeners", ())]  # a second --bind too
    if setting.name in ("request_timeout", "max_worker_memory"):
        targets.append(master.watchdog)
    olds = [(target, getattr(target, setting.name)) for target in targets]
    for target in targets:
        setattr(target, setting.name, value)

    def undo() -> None:
        for target, old in olds:
            setattr(target, setting.name, old)

    return undo
