"""The ``prefork`` command (and ``python -m prefork``): serve a handler class from a pool.

``prefork [TARGET] [--bind ADDR]... [--udp] [--preload] [--workers N] [--graceful-timeout S]
[--name NAME] [--backlog N] [--log-level LEVEL] [--log-file PATH] [setting flags]``. TARGET is
``module:Handler``, ``path/to/file.py:Handler``, or a module or file alone (its ``Handler``, or
its only request handler class). Errors in what the user gave (target, flags, addresses,
binding, log file) print one line on stderr and exit with 2.

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
from typing import TYPE_CHECKING, Any, NoReturn

from prefork import __version__, config, logs, upgrade
from prefork.command import (
    EXIT_ADDRESS_IN_USE,
    EXIT_BOOT_ERROR,
    EXIT_USAGE,
    AddressInUse,
    ArgumentParser,
    UsageError,
)
from prefork.errors import PreforkError, WorkerBootError
from prefork.server import (
    PreforkMixIn,
    PreforkTCPServer,
    PreforkUDPServer,
    PreforkUnixDatagramServer,
    PreforkUnixStreamServer,
)
from prefork.sockets import Address, inherited_sockets, is_http_handler, parse_address
from prefork.spawn import pause_gc
from prefork.target import check_target, load_target, reimporting

if TYPE_CHECKING:
    pass

log = logging.getLogger("prefork")

DEFAULT_BIND = "127.0.0.1:8000"
#: Tries to bind an address in use, BIND_RETRY_DELAY seconds apart (as gunicorn's 5 tries): the
#: workers of a killed master may hold it until their requests end.
BIND_ATTEMPTS = 5
BIND_RETRY_DELAY = 1.0
LOG_FORMAT = logs.LOG_FORMAT


def build_parser() -> ArgumentParser:
    """The ``prefork`` argument parser; its setting flags come from :data:`config.SETTINGS`."""
    parser = ArgumentParser(
        prog="prefork",
        description="Serve a socketserver request handler from a supervised pool of preforked "
        "worker processes. With no TARGET, serves a demo HTTP handler on " + DEFAULT_BIND + ".",
        epilog="Signals to the master: TERM graceful stop, INT/QUIT fast stop, HUP graceful "
        "reload, TTIN/TTOU one worker more/fewer, USR1 reopen log files, USR2 upgrade. Listening "
        "sockets passed by systemd socket activation (LISTEN_FDS) replace --bind.",
    )
    parser.add_argument(
        "target",
        nargs="?",
        metavar="TARGET",
        help="The handler: module:Handler, path/to/file.py:Handler, or a module or file alone "
        "(its 'Handler', or its only socketserver.BaseRequestHandler subclass).",
    )
    parser.add_argument(
        "-b",
        "--bind",
        action="append",
        metavar="ADDR",
        help="Address to listen on: HOST:PORT, [IPV6]:PORT, unix:PATH, or udp://HOST:PORT. "
        f"Repeat to listen on several. Default: {DEFAULT_BIND}. Ignored when listening sockets "
        "are inherited (systemd socket activation, USR2 upgrade).",
    )
    parser.add_argument(
        "--udp",
        action="store_true",
        help="Serve datagrams (UDP, or Unix datagram for unix:PATH) on every --bind address. "
        "Implied by a socketserver.DatagramRequestHandler target.",
    )
    parser.add_argument(
        "--preload",
        action="store_true",
        help="Import TARGET once in the master; workers share it (copy-on-write) and HUP restarts "
        "them with the same code. Default: the master imports TARGET only to check it, and each "
        "worker imports it afresh, so HUP serves edited code.",
    )
    for setting in config.SETTINGS:
        parser.add_argument(
            *setting.flags,
            dest=setting.name,
            type=_argument_type(setting),
            metavar=setting.metavar,
            default=argparse.SUPPRESS,
            help=f"{setting.help} (setting '{setting.name}')",
        )
    parser.add_argument(
        "--log-level",
        default="info",
        type=str.lower,
        choices=["debug", "info", "warning", "error", "critical"],
        help="Level of the log. Default: info.",
    )
    parser.add_argument(
        "--log-file",
        metavar="PATH",
        help="Append the log to this file instead of stderr ('-': stderr); stdout and stderr "
        "(print(), faulthandler dumps) go there too. USR1 reopens it after a rotation.",
    )
    parser.add_argument("--version", action="version", version=f"prefork {__version__}")
    return parser


def _argument_type(setting: config.Setting[Any]) -> Any:
    def convert(text: str) -> Any:
        try:
            return setting.validate(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = setting.name
    return convert


def server_class_for(address: Address, handler: type[socketserver.BaseRequestHandler]) -> type[PreforkMixIn]:
    """The Prefork*Server class for ``address`` and ``handler`` (HTTP for http.server
    handlers, IPv6 when the address is)."""
    base: type[PreforkMixIn]
    speaks_http = is_http_handler(handler)
    if address.family == socket.AF_UNIX and speaks_http and not address.datagram:
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
    args = build_parser().parse_args(argv)
    try:
        logs.setup(
            args.log_level,
            args.log_file,
            getattr(args, "user", None),
            getattr(args, "group", None),
            log_format=getattr(args, "log_format", config.LOG_FORMAT.default),
        )
    except OSError as exc:
        print(f"prefork: error: cannot open log file {args.log_file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    settings = {s.name: getattr(args, s.name) for s in config.SETTINGS if hasattr(args, s.name)}
    try:
        handler: type[socketserver.BaseRequestHandler]
        pool_class: type[PreforkMixIn] | None = None
        try:
            config.pool_bounds(
                settings.get("workers") or 1, settings.get("min_workers"), settings.get("max_workers")
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if args.target:
            if args.preload and settings.get("gc_freeze", config.GC_FREEZE.default):
                pause_gc()  # until the first fork: see prefork.spawn
            handler = load_target(args.target) if args.preload else check_target(args.target)
        else:
            from prefork.demo import DemoHandler  # imports http.server: only when it is served

            handler = DemoHandler
        settings.setdefault("proc_name", args.target or "demo")
        datagram = args.udp or issubclass(handler, socketserver.DatagramRequestHandler)
        if datagram and issubclass(handler, socketserver.StreamRequestHandler):
            raise UsageError(f"{handler.__name__} is a stream handler: it cannot serve datagrams (--udp)")
        check_user_switch(settings.get("user"), settings.get("group"))
        listening = [(address, text, True) for address, text in inherited_addresses()]
        if listening and args.bind and not upgrade.upgrading():  # an upgrade's are --bind's
            log.info("Listening on %d inherited socket(s): --bind is ignored", len(listening))
        if not listening:
            binds = args.bind or [DEFAULT_BIND]
            try:
                listening = [(parse_address(text, datagram), text, False) for text in binds]
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        servers: list[PreforkMixIn] = []
        with contextlib.ExitStack() as stack:
            for address, text, inherited in listening:
                if not servers and args.target and not args.preload:
                    pool_class = reimporting(server_class_for(address, handler), args.target)
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
            try:
                servers[0].serve_forever()
            except WorkerBootError:
                return EXIT_BOOT_ERROR  # the master logged the cause
            except PreforkError as exc:  # the master could not start, e.g. no pid file
                raise UsageError(str(exc)) from None
    except UsageError as exc:
        print(f"prefork: error: {exc}", file=sys.stderr)
        return EXIT_ADDRESS_IN_USE if isinstance(exc, AddressInUse) else EXIT_USAGE
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
