"""The settings of the ``prefork`` command itself: what to serve (TARGET, ``--preload``),
where (``--bind``, ``--udp``) and where its log goes (``--log-level``, ``--log-file``).

They are settings as the others are (a flag, a key of the configuration file, a
``PREFORK_<NAME>`` variable, a row of the reference), but not server attributes: the command
uses them to create the servers and set up the log, and the server classes know nothing of
them. :data:`prefork.config.COMMAND_SETTINGS` lists them, :data:`prefork.config.ALL_SETTINGS`
lists them with the server settings.
"""

from __future__ import annotations

from typing import Any

from prefork.config.convert import LOG_LEVELS, addresses, log_level, optional_str, switch
from prefork.config.setting import HUP, RESTART, Setting

#: The address served when no ``bind`` is given.
DEFAULT_BIND = "127.0.0.1:8000"

#: The section of the reference these settings are listed in.
SECTION = "Command"

TARGET: Setting[str | None] = Setting(
    name="target",
    section=SECTION,
    default=None,
    convert=optional_str,
    flags=(),
    metavar="TARGET",
    help=(
        "The handler: module:Handler, path/to/file.py:Handler, or a module or file alone "
        "(its 'Handler', or its only socketserver.BaseRequestHandler subclass). "
        "Default (None): a demo HTTP handler."
    ),
)
BIND: Setting[tuple[str, ...]] = Setting(
    name="bind",
    section=SECTION,
    default=(DEFAULT_BIND,),
    convert=addresses,
    flags=("-b", "--bind"),
    metavar="ADDR",
    help=(
        "Address to listen on: HOST:PORT, [IPV6]:PORT, unix:PATH, or udp://HOST:PORT. Repeat "
        "the flag (or give a list) to listen on several. Default: " + DEFAULT_BIND + ". Ignored "
        "when listening sockets are inherited (systemd socket activation, USR2 upgrade)."
    ),
    action="append",
    at_hup=RESTART,
)
UDP: Setting[bool] = Setting(
    name="udp",
    section=SECTION,
    default=False,
    convert=switch,
    flags=("--udp",),
    metavar="on|off",
    help=(
        "Serve datagrams (UDP, or Unix datagram for unix:PATH) on every bind address. "
        "Implied by a socketserver.DatagramRequestHandler target."
    ),
    action="switch",
    at_hup=RESTART,
)
PRELOAD: Setting[bool] = Setting(
    name="preload",
    section=SECTION,
    default=False,
    convert=switch,
    flags=("--preload",),
    metavar="on|off",
    help=(
        "Import TARGET once in the master; workers share it (copy-on-write) and HUP restarts "
        "them with the same code. Off: the master imports TARGET only to check it, and each "
        "worker imports it afresh, so HUP serves edited code."
    ),
    action="switch",
)
LOG_LEVEL: Setting[str] = Setting(
    name="log_level",
    section=SECTION,
    default="info",
    convert=log_level,
    flags=("--log-level",),
    metavar="LEVEL",
    help="Level of the log: debug, info, warning, error or critical.",
    choices=LOG_LEVELS,
    at_hup=HUP,
)
LOG_FILE: Setting[str | None] = Setting(
    name="log_file",
    section=SECTION,
    default=None,
    convert=optional_str,
    flags=("--log-file",),
    metavar="PATH",
    help=(
        "Append the log to this file instead of stderr ('-': stderr); stdout and stderr "
        "(print(), faulthandler dumps) go there too. USR1 reopens it after a rotation."
    ),
)

#: The settings of this module, in the order of the docs and of ``prefork --help``.
COMMAND_SETTINGS: tuple[Setting[Any], ...] = (TARGET, BIND, UDP, PRELOAD, LOG_LEVEL, LOG_FILE)
