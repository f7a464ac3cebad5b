"""The ``prefork`` command (and ``python -m prefork``): serve a handler class from a pool.

``prefork [TARGET] [--bind ADDR]... [--udp] [--workers N] [--graceful-timeout S] [--name NAME]
[--backlog N] [--log-level LEVEL]``. TARGET is ``module:Handler``, ``path/to/file.py:Handler``,
or a module or file alone (its ``Handler``, or its only request handler class). Errors in what
the user gave (target, flags, addresses, binding) print one line on stderr and exit with 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import importlib.util
import inspect
import logging
import os
import socket
import socketserver
import stat
import sys
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, NoReturn

from prefork import __version__, config
from prefork.demo import DemoHandler
from prefork.errors import WorkerBootError
from prefork.server import (
    PreforkHTTPServer,
    PreforkMixIn,
    PreforkTCPServer,
    PreforkUDPServer,
    PreforkUnixDatagramServer,
    PreforkUnixStreamServer,
)
from prefork.sockets import Address, parse_address

log = logging.getLogger("prefork")

#: Exit status for a usage error: bad target, flag value or address, or a failed bind.
EXIT_USAGE = 2
#: Exit status when workers failed to boot repeatedly (as gunicorn's).
EXIT_BOOT_ERROR = 3
DEFAULT_BIND = "127.0.0.1:8000"
LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"


class UsageError(Exception):
    """Something the user gave is wrong; the message says what and why, on one line."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with errors on one line of stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> ArgumentParser:
    """The ``prefork`` argument parser; its setting flags come from :data:`config.SETTINGS`."""
    parser = ArgumentParser(
        prog="prefork",
        description="Serve a socketserver request handler from a supervised pool of preforked "
        "worker processes. With no TARGET, serves a demo HTTP handler on " + DEFAULT_BIND + ".",
        epilog="Signals to the master: TERM graceful stop, INT/QUIT fast stop, HUP graceful "
        "reload, TTIN/TTOU one worker more/fewer.",
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
        f"Repeat to listen on several. Default: {DEFAULT_BIND}.",
    )
    parser.add_argument(
        "--udp",
        action="store_true",
        help="Serve datagrams (UDP, or Unix datagram for unix:PATH) on every --bind address. "
        "Implied by a socketserver.DatagramRequestHandler target.",
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
        help="Level of the log written to stderr. Default: info.",
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
    if not (inspect.isclass(obj) and issubclass(obj, socketserver.BaseRequestHandler)):
        raise UsageError(f"{target!r} is not a socketserver.BaseRequestHandler subclass")
    return obj


def _import(name: str) -> Any:
    if name.endswith(".py") or os.sep in name:
        path = Path(name)
        if not path.is_file():
            raise UsageError(f"cannot import {name!r}: no such file")
        sys.path.insert(0, str(path.resolve().parent))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise UsageError(f"cannot import {name!r}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
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
        if inspect.isclass(obj)
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
    elif issubclass(handler, BaseHTTPRequestHandler):
        base = PreforkHTTPServer
    else:
        base = PreforkTCPServer
    if address.family == socket.AF_INET6:
        return type(base.__name__ + "6", (base,), {"address_family": socket.AF_INET6})
    return base


def bind(
    address: Address, text: str, handler: type[socketserver.BaseRequestHandler], **settings: Any
) -> PreforkMixIn:
    """Create the server bound to ``address``. Raises UsageError when it cannot bind."""
    if address.family == socket.AF_UNIX:
        _remove_stale_socket(str(address.server_address), text)
    cls = server_class_for(address, handler)
    try:
        return cls(address.server_address, handler, **settings)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UsageError(f"cannot bind {text}: {reason} (errno {exc.errno})") from None


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
    """Run the ``prefork`` command; return its exit status. Runs in the master."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    settings = {s.name: getattr(args, s.name) for s in config.SETTINGS if hasattr(args, s.name)}
    try:
        handler: type[socketserver.BaseRequestHandler] = (
            load_target(args.target) if args.target else DemoHandler
        )
        settings.setdefault("proc_name", args.target or "demo")
        datagram = args.udp or issubclass(handler, socketserver.DatagramRequestHandler)
        binds = args.bind or [DEFAULT_BIND]
        try:
            addresses = [parse_address(text, datagram) for text in binds]
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        servers: list[PreforkMixIn] = []
        with contextlib.ExitStack() as stack:
            for address, text in zip(addresses, binds, strict=True):
                # The pool's settings go to the first server; each listener needs its backlog.
                backlog = {k: v for k, v in settings.items() if k == "request_queue_size"}
                server = bind(address, text, handler, **(backlog if servers else settings))
                stack.enter_context(server)
                if address.family == socket.AF_UNIX:
                    stack.callback(_unlink, str(address.server_address))
                servers.append(server)
            servers[0].listeners.extend(servers[1:])
            try:
                servers[0].serve_forever()
            except WorkerBootError:
                return EXIT_BOOT_ERROR  # the master logged the cause
    except UsageError as exc:
        print(f"prefork: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def run() -> NoReturn:
    """Console-script entry point."""
    sys.exit(main())
