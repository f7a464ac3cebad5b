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
import importlib
import importlib.machinery
import importlib.util
import logging
import os
import socket
import socketserver
import stat
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

from prefork import __version__, config, logs, upgrade
from prefork.command import EXIT_BOOT_ERROR, EXIT_USAGE, ArgumentParser, UsageError
from prefork.errors import PreforkError, WorkerBootError
from prefork.server import (
    PreforkMixIn,
    PreforkTCPServer,
    PreforkUDPServer,
    PreforkUnixDatagramServer,
    PreforkUnixStreamServer,
)
from prefork.sockets import Address, inherited_sockets, parse_address

if TYPE_CHECKING:
    from prefork.workers.base import Worker

log = logging.getLogger("prefork")

DEFAULT_BIND = "127.0.0.1:8000"
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


def load_target(target: str) -> type[socketserver.BaseRequestHandler]:
    """Import the handler class named by ``target``. Raises UsageError saying why not."""
    module_name, _, attr = target.partition(":")
    try:
        module = _import(module_name)
    except UsageError:
        raise
    except BaseException as exc:  # anything the user's module raises, SystemExit included
        raise UsageError(f"cannot import {target!r}: {type(exc).__name__}: {exc}") from None
    if attr:
        obj: Any = module
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise UsageError(f"cannot load {target!r}: {module_name!r} has no attribute {part!r}")
            obj = getattr(obj, part)
    else:
        obj = _find_handler(module, target)
    if not (isinstance(obj, type) and issubclass(obj, socketserver.BaseRequestHandler)):
        raise UsageError(f"{target!r} is not a socketserver.BaseRequestHandler subclass")
    return obj


def _import(name: str) -> Any:
    if name.endswith(".py") or os.sep in name:
        if not os.path.isfile(name):
            raise UsageError(f"cannot import {name!r}: no such file")
        sys.path.insert(0, os.path.dirname(os.path.realpath(name)))
        stem = os.path.splitext(os.path.basename(name))[0]
        spec = importlib.util.spec_from_file_location(stem, name)
        if spec is None or spec.loader is None:
            raise UsageError(f"cannot import {name!r}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[stem] = module
        spec.loader.exec_module(module)
        return module
    if os.getcwd() not in sys.path:  # as `python -m` does, so local modules are found
        sys.path.insert(0, os.getcwd())
    return importlib.import_module(name)


def _find_handler(module: Any, target: str) -> Any:
    if hasattr(module, "Handler"):
        return module.Handler
    found = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, socketserver.BaseRequestHandler)
        and obj.__module__ == module.__name__
    ]
    if len(found) != 1:
        names = ", ".join(sorted(o.__name__ for o in found)) or "none"
        raise UsageError(f"{target!r}: name the handler as {target}:NAME (handler classes found: {names})")
    return found[0]


def server_class_for(address: Address, handler: type[socketserver.BaseRequestHandler]) -> type[PreforkMixIn]:
    """The Prefork*Server class for ``address`` and ``handler`` (HTTP for http.server
    handlers, IPv6 when the address is)."""
    base: type[PreforkMixIn]
    if address.family == socket.AF_UNIX:
        base = PreforkUnixDatagramServer if address.datagram else PreforkUnixStreamServer
    elif address.datagram:
        base = PreforkUDPServer
    elif (http := sys.modules.get("http.server")) and issubclass(handler, http.BaseHTTPRequestHandler):
        from prefork.httpserver import PreforkHTTPServer  # http.server is imported already

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
    :func:`server_class_for`'s). Raises UsageError when it cannot bind.

    With ``inherited``, ``address`` is that of a listening socket handed to this process, which
    the server adopts in its ``server_bind()`` instead of binding: a Unix socket file there is
    live and is left alone. Runs in the master.
    """
    if address.family == socket.AF_UNIX and not inherited:
        _remove_stale_socket(str(address.server_address), text)
    cls = server_class or server_class_for(address, handler)
    try:
        return cls(address.server_address, handler, **settings)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UsageError(f"cannot bind {text}: {reason} (errno {exc.errno})") from None


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
            return  # bind() will report it
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
    raise UsageError(f"cannot bind unix:{path}: a server is already listening there")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``prefork`` command; return its exit status. Runs in the master.

    ``prefork bench ...`` is the pool-size load tester (:mod:`prefork.bench`).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from prefork.bench import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        logs.setup(args.log_level, args.log_file, getattr(args, "user", None), getattr(args, "group", None))
    except OSError as exc:
        print(f"prefork: error: cannot open log file {args.log_file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    settings = {s.name: getattr(args, s.name) for s in config.SETTINGS if hasattr(args, s.name)}
    try:
        handler: type[socketserver.BaseRequestHandler]
        pool_class: type[PreforkMixIn] | None = None
        if args.target:
            handler = load_target(args.target) if args.preload else check_target(args.target)
        else:
            from prefork.demo import DemoHandler  # imports http.server: only when it is served

            handler = DemoHandler
        settings.setdefault("proc_name", args.target or "demo")
        datagram = args.udp or issubclass(handler, socketserver.DatagramRequestHandler)
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
        return EXIT_USAGE
    return 0


def check_target(target: str) -> type[socketserver.BaseRequestHandler]:
    """Import the handler class named by ``target`` as :func:`load_target`, then forget the
    modules that import added (``sys.modules``), so that workers import them afresh.

    The standard library's modules stay (they cannot change without a new interpreter, which
    takes a USR2 upgrade), so a worker imports only the user's and third-party modules: the
    target's own code and its packages are fresh after a HUP, and a worker's boot does not
    pay for ``http.server`` or ``email`` again. Extension and built-in modules stay too: most
    cannot be initialised twice in one process. Module-level code of the target has run in
    the master, once. Runs in the master, without ``--preload``. Raises UsageError saying why
    the target cannot be loaded.
    """
    before = set(sys.modules)
    try:
        return load_target(target)
    finally:
        for name in set(sys.modules) - before:
            module = sys.modules.get(name)
            if module is None or not (_is_extension(module) or _is_stdlib(name, module)):
                sys.modules.pop(name, None)


def _is_extension(module: ModuleType) -> bool:
    spec = getattr(module, "__spec__", None)
    origin = getattr(spec, "origin", None) or ""
    return origin == "built-in" or origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


#: The directory of the standard library's pure-Python modules (where ``os`` comes from).
STDLIB_DIR = os.path.dirname(os.__file__) + os.sep


def _is_stdlib(name: str, module: ModuleType) -> bool:
    """True for a module of the standard library: a name it documents, loaded from its
    directory (not a user's module of the same name, nor a package in site-packages)."""
    path = getattr(module, "__file__", None) or ""
    return (
        name.partition(".")[0] in sys.stdlib_module_names
        and path.startswith(STDLIB_DIR)
        and "-packages" + os.sep not in path[len(STDLIB_DIR) :]
    )


class ReimportingMixIn(PreforkMixIn):
    """Mixed in front of the CLI's pool server without ``--preload``: each worker imports
    ``target`` afresh in ``post_fork()``, so new workers (after a HUP) serve edited code."""

    #: The TARGET to import, as given on the command line.
    target: str = ""

    def post_fork(self, worker: Worker) -> None:
        """Import ``target`` and serve its handler on this server and its ``listeners``. Runs
        in each worker. An import error raises: a boot failure, handled by the master."""
        importlib.invalidate_caches()  # a file added since the master started is found
        handler = load_target(self.target)
        for server in (self, *self.listeners):
            server.RequestHandlerClass = handler
        super().post_fork(worker)


def reimporting(cls: type[PreforkMixIn], target: str) -> type[PreforkMixIn]:
    """Return ``cls`` with :class:`ReimportingMixIn` in front, importing ``target``."""
    return type(cls.__name__, (ReimportingMixIn, cls), {"target": target})


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
