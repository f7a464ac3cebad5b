"""The ``prefork`` command (and ``python -m prefork``): serve a handler class from a pool.

``prefork [TARGET] [--bind ADDR]... [--udp] [--preload] [--workers N] [--graceful-timeout S]
[--name NAME] [--backlog N] [--log-level LEVEL] [--log-file PATH] [setting flags] [--config
PATH] [--print-config]``. TARGET is ``module:Handler``, ``path/to/file.py:Handler``, or a
module or file alone (its ``Handler``, or its only request handler class). Errors in what the
user gave (target, flags, configuration file, environment, addresses, binding, log file)
print one line on stderr and exit with 2.

Every argument but ``--config``, ``--print-config`` and ``--version`` is a setting of
:data:`prefork.config.ALL_SETTINGS`, also read from the configuration file and the
``PREFORK_<NAME>`` environment variables (:mod:`prefork.config.sources`: defaults < file <
environment < flags); the pool's first server keeps the :class:`Configuration`, so a HUP
reads the file again (:mod:`prefork.config.reload`).

Listening sockets handed to the process (systemd socket activation, or the old master of a
USR2 upgrade) replace the ``--bind`` list. Without ``--preload`` the master imports TARGET only
to check it, then forgets it (all but the standard library's modules), and every worker imports
it afresh, so a HUP serves edited code.

The command imports only what it uses: ``http.server`` (through :mod:`prefork.httpserver`),
``psutil`` and ``ipaddress`` are imported by the servers and settings that need them, as
start-up time is one of the figures prefork is measured by (docs/performance.md).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import socket
import socketserver
import stat
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from prefork import __version__, config, logs, upgrade
from prefork.command import (
    EXIT_ADDRESS_IN_USE,
    EXIT_BOOT_ERROR,
    EXIT_USAGE,
    AddressInUse,
    ArgumentParser,
    UsageError,
)
from prefork.config.files import ConfigError
from prefork.config.sources import Configuration, Value, resolve
from prefork.errors import PreforkError, WorkerBootError
from prefork.server import (
    PreforkMixIn,
    PreforkTCPServer,
    PreforkUDPServer,
    PreforkUnixDatagramServer,
    PreforkUnixStreamServer,
)
from prefork.sockets import Address, inherited_sockets, is_http_handler, is_wsgi_handler, parse_address
from prefork.spawn import pause_gc
from prefork.target import check_target, load_target, reimporting

log = logging.getLogger("prefork")

DEFAULT_BIND = config.DEFAULT_BIND
#: Tries to bind an address in use, BIND_RETRY_DELAY seconds apart (as gunicorn's 5 tries): the
#: workers of a killed master may hold it until their requests end.
BIND_ATTEMPTS = 5
BIND_RETRY_DELAY = 1.0
LOG_FORMAT = logs.LOG_FORMAT


def build_parser() -> ArgumentParser:
    """The ``prefork`` argument parser; its TARGET and flags come from
    :data:`config.ALL_SETTINGS`, one per setting (see :func:`_add_setting`)."""
    parser = ArgumentParser(
        prog="prefork",
        description="Serve a socketserver request handler from a supervised pool of preforked "
        "worker processes. With no TARGET, serves a demo HTTP handler on " + DEFAULT_BIND + ". "
        "Each setting is also read from a TOML file (--config, or [tool.prefork] of "
        "./pyproject.toml) and from PREFORK_<NAME> environment variables: defaults < file < "
        "environment < flags.",
        epilog="Signals to the master: TERM graceful stop, INT/QUIT fast stop, HUP graceful "
        "reload (and the configuration file read again), TTIN/TTOU one worker more/fewer, USR1 "
        "reopen log files, USR2 upgrade. Listening sockets passed by systemd socket activation "
        "(LISTEN_FDS) replace --bind.",
    )
    for setting in config.ALL_SETTINGS:
        _add_setting(parser, setting)
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="Read settings from this TOML file: its keys are the setting names (those quoted "
        "here), e.g. workers = 4. Default: the [tool.prefork] table of pyproject.toml in the "
        "working directory, if any. HUP reads it again.",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="Print each setting's value and where it came from (default, file, env, flag) as "
        "TOML, then exit without serving.",
    )
    parser.add_argument("--version", action="version", version=f"prefork {__version__}")
    return parser


def _add_setting(parser: ArgumentParser, setting: config.Setting[Any]) -> None:
    """Add ``setting``'s argument to ``parser``: TARGET when it has no flags, else its flags,
    taking one value (converted as it is parsed), repeated (``append``: converted by
    :func:`_flag_values`) or none (``switch``: ``--NAME``/``--no-NAME``). A flag not given
    leaves no attribute, so the file and the environment can set it."""
    help_text = f"{setting.help} (setting '{setting.name}')"
    common: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text}
    if not setting.flags:
        parser.add_argument(
            setting.name, nargs="?", metavar=setting.metavar, type=_argument_type(setting), **common
        )
    elif setting.action == "append":
        parser.add_argument(
            *setting.flags, dest=setting.name, action="append", metavar=setting.metavar, **common
        )
    elif setting.action == "switch":
        parser.add_argument(
            *setting.flags, dest=setting.name, action=argparse.BooleanOptionalAction, **common
        )
    elif setting.choices:  # argparse checks them: its "invalid choice" message
        parser.add_argument(
            *setting.flags, dest=setting.name, type=str.lower, choices=setting.choices, **common
        )
    else:
        parser.add_argument(
            *setting.flags, dest=setting.name, type=_argument_type(setting), metavar=setting.metavar, **common
        )


def _argument_type(setting: config.Setting[Any]) -> Any:
    def convert(text: str) -> Any:
        try:
            return setting.validate(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = setting.name
    return convert


def _flag_values(parser: ArgumentParser, args: argparse.Namespace) -> dict[str, Value]:
    """The settings given on the command line, converted, with their origin (``flag
    --workers``, ``argument TARGET``). A bad repeated flag's value exits as argparse does."""
    found = {}
    for setting in config.ALL_SETTINGS:
        if hasattr(args, setting.name):
            value = getattr(args, setting.name)
            if setting.action == "append" or setting.choices:
                try:
                    value = setting.validate(value)
                except ValueError as exc:
                    parser.error(f"argument {'/'.join(setting.flags)}: {exc}")
            origin = f"flag {setting.flags[-1]}" if setting.flags else f"argument {setting.metavar}"
            found[setting.name] = Value(value, origin)
    return found


def server_class_for(address: Address, handler: type[socketserver.BaseRequestHandler]) -> type[PreforkMixIn]:
    """The Prefork*Server class for ``address`` and ``handler`` (WSGI for a WSGI
    application's handler, HTTP for http.server handlers, IPv6 when the address is).
    Raises UsageError for a WSGI application on a datagram address."""
    base: type[PreforkMixIn]
    speaks_http = is_http_handler(handler)
    if is_wsgi_handler(handler):
        if address.datagram:
            raise UsageError("a WSGI application cannot serve datagrams (--udp, udp://)")
        from prefork.wsgi.server import PreforkUnixWSGIServer, PreforkWSGIServer

        base = PreforkUnixWSGIServer if address.family == socket.AF_UNIX else PreforkWSGIServer
    elif address.family == socket.AF_UNIX and speaks_http and not address.datagram:
        from prefork.httpserver import PreforkUnixHTTPServer

        base = PreforkUnixHTTPServer
    elif address.family == socket.AF_UNIX:
        base = PreforkUnixDatagramServer if address.datagram else PreforkUnixStreamServer
    elif address.datagram:
        base = PreforkUDPServer
    elif speaks_http:
        from prefork.httpserver import PreforkHTTPServer

        base = PreforkHTTPServer
    else:
        base = PreforkTCPServer
    if address.family == socket.AF_INET6:
        return type(base.__name__ + "6", (base,), {"address_family": socket.AF_INET6})
    return base


def bind(
    address: Address,
    text: str,
    handler: type[socketserver.BaseRequestHandler],
    *,
    server_class: type[PreforkMixIn] | None = None,
    inherited: bool = False,
    **settings: Any,
) -> PreforkMixIn:
    """Create the server for ``address`` (of ``server_class``, by default
    :func:`server_class_for`'s). Raises UsageError when it cannot bind, AddressInUse
    (exit status 4) when the address is still in use after 5 tries, 1 s apart.

    With ``inherited``, ``address`` is that of a listening socket handed to this process, which
    the server adopts in its ``server_bind()`` instead of binding: a Unix socket file there is
    live and is left alone. Runs in the master.
    """
    cls = server_class or server_class_for(address, handler)
    attempt = 1
    while True:
        try:
            if address.family == socket.AF_UNIX and not inherited:
                _remove_stale_socket(str(address.server_address), text)
            return cls(address.server_address, handler, **settings)
        except OSError as exc:
            reason = f"{exc.strerror or exc} (errno {exc.errno})"
            if exc.errno != errno.EADDRINUSE:
                raise UsageError(f"cannot bind {text}: {reason}") from None
        except AddressInUse as exc:
            reason = str(exc)
        if attempt == BIND_ATTEMPTS:
            raise AddressInUse(f"cannot bind {text}: {reason}; tried {BIND_ATTEMPTS} times") from None
        log.warning("Cannot bind %s: %s; retrying in %g s", text, reason, BIND_RETRY_DELAY)
        time.sleep(BIND_RETRY_DELAY)
        attempt += 1


def inherited_addresses() -> list[tuple[Address, str]]:
    """The address of each listening socket handed to this process (systemd socket
    activation, or the old master of a USR2 upgrade), in order, with its text for messages
    (``HOST:PORT``, ``udp://HOST:PORT``, ``unix:PATH``; ``unix:@NAME`` for an abstract one).

    Empty when no socket was handed over. Raises UsageError for a socket that is not TCP, UDP
    or Unix. Runs in the master.
    """
    found = []
    for sock in inherited_sockets():
        try:  # a view: closing it leaves the inherited descriptor open
            datagram, family, name = sock.type == socket.SOCK_DGRAM, sock.family, sock.getsockname()
        finally:
            sock.close()
        scheme = "udp://" if datagram else ""
        if family == socket.AF_UNIX:
            path = os.fsdecode(name) if isinstance(name, bytes) else str(name)
            shown = "@" + path[1:] if path.startswith("\0") else path
            found.append((Address(socket.AF_UNIX, path, datagram), f"{scheme}unix:{shown}"))
        elif family in (socket.AF_INET, socket.AF_INET6):
            host, port = str(name[0]), int(name[1])
            shown = f"[{host}]" if family == socket.AF_INET6 else host
            found.append((Address(family, (host, port), datagram), f"{scheme}{shown}:{port}"))
        else:
            raise UsageError(f"cannot serve an inherited socket of family {family!r}")
    return found


def _remove_stale_socket(path: str, text: str) -> None:
    """Unlink a Unix socket file nobody listens on (left by a crash); refuse a live one."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise UsageError(f"cannot bind unix:{path}: a file that is not a socket is there")
    except OSError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)
            return
        except OSError as exc:
            if exc.errno == errno.EPROTOTYPE:  # a datagram socket: assume it is stale
                os.unlink(path)
            return
    raise AddressInUse("a server is already listening there")


def check_user_switch(user: int | None, group: int | None) -> None:
    """Raise UsageError when workers are to switch to another ``user`` or ``group`` (ids)
    and this process may not (it is not root): say it at start, not as a boot failure."""
    if os.geteuid() == 0:
        return
    if (user is not None and user != os.geteuid()) or (group is not None and group != os.getegid()):
        raise UsageError("--user and --group need the master to run as root (or as that user)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``prefork`` command; return its exit status. Runs in the master.

    ``prefork bench ...`` is the pool-size load tester (:mod:`prefork.bench`); ``prefork status
    ...`` and ``prefork ctl ...`` are the control socket's client (:mod:`prefork.ctl`). Only a
    first argument of exactly ``bench``, ``status`` or ``ctl`` is a subcommand: a TARGET of
    that name is served as ``prefork status:Handler``, ``prefork ./status.py``, ``prefork --
    status`` or with a flag first (``prefork -w 2 status``).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from prefork.bench import main as bench_main

        return bench_main(argv[1:])
    if argv[:1] in (["status"], ["ctl"]):
        from prefork.ctl import main as ctl_main

        return ctl_main(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        conf = resolve(_flag_values(parser, args), os.environ, args.config)
    except ConfigError as exc:
        print(f"prefork: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.print_config:
        for warning in conf.warnings:
            print(f"prefork: warning: {warning}", file=sys.stderr)
        print(conf.describe())
        return 0
    try:
        logs.setup(
            conf["log_level"], conf["log_file"], conf["user"], conf["group"], log_format=conf["log_format"]
        )
    except OSError as exc:
        where, path, reason = conf.where("log_file"), conf["log_file"], exc.strerror or exc
        print(f"prefork: error: {where}cannot open log file {path}: {reason}", file=sys.stderr)
        return EXIT_USAGE
    for warning in conf.warnings:
        log.warning("%s", warning)
    try:
        return serve(conf)
    except UsageError as exc:
        print(f"prefork: error: {exc}", file=sys.stderr)
        return EXIT_ADDRESS_IN_USE if isinstance(exc, AddressInUse) else EXIT_USAGE


def serve(conf: Configuration) -> int:
    """Serve TARGET as the configuration ``conf`` says, until a stop; return the exit
    status (0, or 3 when workers failed to boot). The pool's first server keeps ``conf``, so
    a HUP reads its file again. Raises UsageError (exit 2) or AddressInUse (exit 4) for
    what cannot start. Runs in the master."""
    settings = conf.given_values(config.SETTINGS)
    target, preload = conf["target"], conf["preload"]
    handler: type[socketserver.BaseRequestHandler]
    pool_class: type[PreforkMixIn] | None = None
    try:
        config.pool_bounds(conf["workers"] or 1, conf["min_workers"], conf["max_workers"])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if target:
        if preload and conf["gc_freeze"]:
            pause_gc()  # until the first fork: see prefork.spawn
        handler = load_target(target) if preload else check_target(target)
    else:
        from prefork.demo import DemoHandler  # imports http.server: only when it is served

        handler = DemoHandler
    settings.setdefault("proc_name", target or "demo")
    datagram = conf["udp"] or issubclass(handler, socketserver.DatagramRequestHandler)
    if datagram and issubclass(handler, socketserver.StreamRequestHandler):
        raise UsageError(f"{handler.__name__} is a stream handler: it cannot serve datagrams (--udp)")
    check_user_switch(conf["user"], conf["group"])
    listening = [(address, text, True) for address, text in inherited_addresses()]
    if listening and conf.given("bind") and not upgrade.upgrading():  # an upgrade's are bind's
        given = "--bind" if conf.origin("bind").startswith("flag") else f"bind ({conf.origin('bind')})"
        log.info("Listening on %d inherited socket(s): %s is ignored", len(listening), given)
    if not listening:
        try:
            listening = [(parse_address(text, datagram), text, False) for text in conf["bind"]]
        except ValueError as exc:
            raise UsageError(f"{conf.where('bind')}{exc}") from None
    servers: list[PreforkMixIn] = []
    with contextlib.ExitStack() as stack:
        for address, text, inherited in listening:
            if not servers and target and not preload:
                pool_class = reimporting(server_class_for(address, handler), target)
            # The pool's settings go to the first server; each listener needs its backlog.
            backlog = {k: v for k, v in settings.items() if k == "request_queue_size"}
            server = bind(
                address,
                text,
                handler,
                server_class=None if servers else pool_class,
                inherited=inherited,
                **(backlog if servers else settings),
            )
            if address.family == socket.AF_UNIX:  # registered first, so run after server_close
                stack.callback(_unlink_unused, str(address.server_address), address.datagram)
            stack.enter_context(server)
            servers.append(server)
        servers[0].listeners.extend(servers[1:])
        servers[0].configuration = conf
        try:
            servers[0].serve_forever()
        except WorkerBootError:
            return EXIT_BOOT_ERROR  # the master logged the cause
        except PreforkError as exc:  # the master could not start, e.g. no pid file
            raise UsageError(str(exc)) from None
    return 0


def _unlink_unused(path: str, datagram: bool) -> None:
    """Remove the Unix socket file at ``path`` unless a socket is still bound there: after a
    USR2 upgrade the new master listens on it, and under socket activation systemd does.
    Runs in the master at exit, after ``server_close()``."""
    if not path or path.startswith("\0"):  # unnamed or abstract: no file
        return
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.stat(path).st_mode) and not _unix_path_in_use(path, datagram):
            os.unlink(path)


def _unix_path_in_use(path: str, datagram: bool) -> bool:
    """Whether a socket is bound to ``path``. Reads /proc/net/unix on Linux: connecting to find
    out would queue a connection, which makes systemd start a socket-activated service again."""
    try:
        with open("/proc/net/unix", encoding="utf-8", errors="surrogateescape") as table:
            next(table, None)
            return any(line.rstrip("\n").split(None, 7)[7:] == [path] for line in table)
    except OSError:
        pass
    kind = socket.SOCK_DGRAM if datagram else socket.SOCK_STREAM
    with socket.socket(socket.AF_UNIX, kind) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            return False
        except OSError:
            return True
    return True


def run() -> NoReturn:
    """Console-script entry point."""
    sys.exit(main())
