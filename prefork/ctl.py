"""``prefork status`` and ``prefork ctl``: the operator's client of a master's control socket.

``prefork status [--socket PATH | --name NAME | --pid PID] [--json] [--watch] [--interval S]
[--timeout S]`` prints the pool at a glance (as Apache's mod_status or uwsgitop): the server,
its totals and restarts, then one row per worker. ``prefork ctl [selection] COMMAND [ARGS]``
sends one command: ``workers N``, ``add [K]``, ``remove [K]``, ``reload``, ``stop [--fast]``,
``upgrade``, ``reopen``, ``status`` (the snapshot as JSON).

Which server: ``--socket PATH`` names its control socket; else every socket of this user's
runtime directory (:func:`prefork.runtime.find_sockets`) is asked for its status, the stale
ones (nobody listening) are skipped, and ``--name``/``--pid`` keep those that match. The one
left is used; none or several is a usage error listing them.

The protocol (one JSON line each way, one request per connection) and the snapshot are those
of the master's :mod:`prefork.control` and :mod:`prefork.stats`; the table, with resident
memory and CPU time read by the client (psutil, as the server's user), is drawn by
:mod:`prefork.ctltable`. Everything runs in the client's process. Exit status: 0; 1 when the
master refused the command (``ok: false``) or was lost during ``--watch``; 2 for bad usage or
when no server answered (one line on stderr); 130 when interrupted outside ``--watch``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from prefork import runtime
from prefork.command import EXIT_USAGE, ArgumentParser
from prefork.ctltable import add_process_info, render
from prefork.errors import PreforkError

__all__ = [
    "CommandRefused",
    "ControlError",
    "NoServer",
    "add_process_info",
    "call",
    "choose_server",
    "main",
    "render",
]

#: The largest reply read (bytes): a snapshot of a thousand workers is well under 1 MiB.
MAX_REPLY = 16 * 1024 * 1024
#: The largest request the master reads (bytes, the protocol's limit).
MAX_REQUEST = 64 * 1024
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
#: Clear the screen and go home (ANSI): ``--watch`` redraws in place on a terminal.
CLEAR = "\x1b[H\x1b[2J"


class ControlError(PreforkError):
    """A control call failed: no server, no reply in time, an unreadable reply, or the master
    refused. The message is one line."""


class NoServer(ControlError):
    """Nobody listens at the socket path (ECONNREFUSED), or there is no such file (ENOENT):
    the server is gone and the socket, if any, is stale."""


class CommandRefused(ControlError):
    """The master answered ``{"ok": false, "error": ...}``; the message is its error."""


def call(path: str, request: Mapping[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send ``request`` (a JSON-able mapping, e.g. ``{"command": "status"}``) to the control
    socket at ``path`` and return the master's reply, a dict whose ``ok`` is true.

    One connection, one JSON line each way. ``timeout`` (seconds) bounds the whole call:
    connecting, sending and reading the reply (at most :data:`MAX_REPLY` bytes). Runs in the
    client's process. Raises :class:`NoServer` on ECONNREFUSED/ENOENT ("no server at PATH"),
    :class:`CommandRefused` on an ``ok: false`` reply, :class:`ControlError` on any other
    failure (other connect errors, timeout, a reply that is not one JSON object, too large).
    """
    line = json.dumps(dict(request), separators=(",", ":")).encode() + b"\n"
    if len(line) > MAX_REQUEST:
        raise ControlError(f"request too large ({len(line)} bytes; the limit is {MAX_REQUEST})")
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.settimeout(timeout)
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NoServer(f"no server at {path}") from None
        except TimeoutError:
            raise ControlError(f"cannot connect to {path}: timed out after {timeout:g} s") from None
        except OSError as exc:
            raise ControlError(f"cannot connect to {path}: {exc.strerror or exc}") from None
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.sendall(line)
            data = _read_line(sock, deadline, path)
        except TimeoutError:
            raise ControlError(f"no reply from {path} within {timeout:g} s") from None
        except OSError as exc:
            raise ControlError(f"connection to {path} failed: {exc.strerror or exc}") from None
    return _parse_reply(data, path)


def _read_line(sock: socket.socket, deadline: float, path: str) -> bytes:
    """Read up to the first newline or EOF, before ``deadline`` (monotonic seconds)."""
    data = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            return bytes(data)
        data += chunk
        if len(data) > MAX_REPLY:
            raise ControlError(f"reply from {path} is larger than {MAX_REPLY} bytes")
        if b"\n" in chunk:
            return bytes(data[: data.index(b"\n")])


def _parse_reply(data: bytes, path: str) -> dict[str, Any]:
    if not data.strip():
        raise ControlError(f"the server at {path} closed the connection without a reply")
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError(f"unreadable reply from {path} (not JSON): {data[:60]!r}") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ControlError(f"unreadable reply from {path} (not a JSON object with 'ok'): {data[:60]!r}")
    if not reply["ok"]:
        error = " ".join(str(reply.get("error") or "no reason given").split())
        raise CommandRefused(error)
    return reply


def fetch_status(path: str, timeout: float = 5.0) -> dict[str, Any]:
    """The pool snapshot of the master at ``path`` (its ``status`` reply). Raises as
    :func:`call`, and :class:`ControlError` when the reply carries no snapshot."""
    snapshot = call(path, {"command": "status"}, timeout).get("status")
    if not isinstance(snapshot, dict):
        raise ControlError(f"unreadable reply from {path}: no 'status' object")
    return snapshot


# -- choosing the server ---------------------------------------------------------------------


class Server(NamedTuple):
    """A live server found in the runtime directory: its socket, name, master pid, and the
    snapshot its master answered (None when it answered something else)."""

    path: str
    name: str
    pid: int | None
    snapshot: dict[str, Any] | None


def choose_server(name: str | None = None, pid: int | None = None, timeout: float = 5.0) -> Server:
    """The one live server of this user's runtime directory matching ``name`` and ``pid``
    (either None: any). Each socket is asked for its status (``timeout`` seconds each); stale
    ones are skipped. Runs in the client's process. Raises :class:`ControlError` (a usage
    error, one line) when none or several match, or the directory is not private."""
    try:
        directory, paths = runtime.runtime_dir(), runtime.find_sockets()
    except PreforkError as exc:
        raise ControlError(str(exc)) from None
    live = []
    for path in paths:
        owner = runtime.socket_owner(path)
        snapshot: dict[str, Any] | None = None
        try:
            snapshot = fetch_status(path, timeout)
        except NoServer:
            continue
        except ControlError:
            pass  # alive but not answering as expected: still a candidate, named by its path
        found_name = str(snapshot["name"]) if snapshot and "name" in snapshot else owner[0] if owner else "?"
        found_pid = snapshot.get("master_pid") if snapshot else owner[1] if owner else None
        names = {found_name, owner[0] if owner else found_name}
        if (name is None or name in names) and (pid is None or pid == found_pid):
            live.append(Server(path, found_name, found_pid, snapshot))
    wanted = " ".join(f for f in (f"named {name}" if name else "", f"with pid {pid}" if pid else "") if f)
    if not live:
        raise ControlError(
            f"no running prefork server {wanted or 'found'} for this user (looked in {directory})"
        )
    if len(live) > 1:
        listed = ", ".join(f"{s.name} (pid {s.pid}): {s.path}" for s in live)
        raise ControlError(
            f"several prefork servers are running: {listed}; choose with --name, --pid or --socket"
        )
    return live[0]


# -- the commands ------------------------------------------------------------------------------


def _selection(parser: argparse.ArgumentParser, default: Any) -> None:
    """Add the options choosing the server (and the timeout) to ``parser``."""
    parser.add_argument("--socket", metavar="PATH", default=default, help="The master's control socket.")
    parser.add_argument("--name", default=default, help="The server's name (its proc_name).")
    parser.add_argument("--pid", type=int, default=default, help="The master's process id.")
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=5.0 if default is None else default,
        help="Give up on a master that has not answered in this time. Default: 5.",
    )


def build_parser(command: str) -> ArgumentParser:
    """The argument parser of ``prefork status`` or (``command == "ctl"``) ``prefork ctl``."""
    if command == "status":
        parser = ArgumentParser(prog="prefork status", description="Show a running prefork server's pool.")
        _selection(parser, None)
        parser.add_argument("--json", action="store_true", help="Print the snapshot as one JSON object.")
        parser.add_argument("--watch", action="store_true", help="Redraw every --interval until Ctrl-C.")
        parser.add_argument(
            "--interval",
            type=float,
            default=1.0,
            metavar="SECONDS",
            help="Time between the two snapshots that rates are measured over (0: one snapshot, "
            "no rates), and between redraws under --watch. Default: 1.",
        )
        return parser
    parser = ArgumentParser(prog="prefork ctl", description="Send a command to a running prefork master.")
    _selection(parser, None)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub: dict[str, argparse.ArgumentParser] = {}
    for name, text in [
        ("workers", "set the pool to N workers"),
        ("add", "add K workers (default 1)"),
        ("remove", "remove K workers (default 1)"),
        ("reload", "replace the workers gracefully (as SIGHUP)"),
        ("stop", "stop the server, gracefully unless --fast (as SIGTERM / SIGQUIT)"),
        ("upgrade", "start a new master on the same sockets (as SIGUSR2)"),
        ("reopen", "reopen the log files (as SIGUSR1)"),
        ("status", "print the pool's snapshot as JSON (as prefork status --json)"),
    ]:
        sub[name] = commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        _selection(sub[name], argparse.SUPPRESS)
    sub["workers"].add_argument("count", metavar="N", type=_count(1))
    for name in ("add", "remove"):
        sub[name].add_argument("count", metavar="K", type=_count(1), nargs="?", default=1)
    sub["stop"].add_argument("--fast", action="store_true", help="Do not wait for requests in progress.")
    return parser


def _count(least: int) -> Any:
    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be {least} or more: {value}")
        return value

    return count


def _workers(count: int) -> str:
    return f"{count} worker" + ("" if count == 1 else "s")


def _confirmation(args: argparse.Namespace, reply: Mapping[str, Any]) -> str:
    """The one line ``prefork ctl`` prints after the master answered ok."""
    size = reply.get("workers")
    pool = f"pool set to {_workers(size)}" if isinstance(size, int) else "pool resized"
    if args.command == "workers":
        return pool
    if args.command in ("add", "remove"):
        return f"{'added' if args.command == 'add' else 'removed'} {_workers(args.count)}: {pool}"
    return {
        "reload": "reload started: workers are being replaced gracefully",
        "stop": "fast stop started" if getattr(args, "fast", False) else "graceful stop started",
        "upgrade": "upgrade started: a new master is starting",
        "reopen": "log files reopened",
    }[args.command]


def _request(args: argparse.Namespace) -> dict[str, Any]:
    if args.command in ("workers", "add", "remove"):
        return {"command": args.command, "count": args.count}
    if args.command == "stop":
        return {"command": "stop", "mode": "fast" if args.fast else "graceful"}
    return {"command": args.command}


def _watch(path: str, args: argparse.Namespace, first: dict[str, Any]) -> int:
    """Redraw the table every ``args.interval`` seconds until Ctrl-C (exit 0); exit 1 when the
    server is lost."""
    tty, previous, snapshot = sys.stdout.isatty(), None, first
    try:
        while True:
            table = render(snapshot, previous)
            sys.stdout.write(f"{CLEAR}{table}\n" if tty else f"{table}\n\n")
            sys.stdout.flush()
            time.sleep(args.interval)
            previous = snapshot
            try:
                snapshot = fetch_status(path, args.timeout)
            except ControlError as exc:
                print(f"prefork status: lost the server: {exc}", file=sys.stderr)
                return EXIT_FAILED
            add_process_info(snapshot)
    except KeyboardInterrupt:
        return 0


def _run(command: str, args: argparse.Namespace) -> int:
    if args.socket is not None:
        path, snapshot = args.socket, None
    else:
        server = choose_server(args.name, args.pid, args.timeout)
        path, snapshot = server.path, server.snapshot
    if command == "ctl" and args.command != "status":
        reply = call(path, _request(args), args.timeout)
        print(_confirmation(args, reply))
        return 0
    snapshot = snapshot or fetch_status(path, args.timeout)
    add_process_info(snapshot)
    if command == "ctl" or args.json:
        print(json.dumps(snapshot, indent=2, sort_keys=True))
        return 0
    if args.watch:
        return _watch(path, args, snapshot)
    previous = None
    if args.interval > 0:
        time.sleep(args.interval)
        previous, snapshot = snapshot, fetch_status(path, args.timeout)
        add_process_info(snapshot)
    print(render(snapshot, previous))
    return 0


def main(argv: Sequence[str]) -> int:
    """Run ``prefork status ARGS`` or ``prefork ctl ARGS`` (``argv[0]`` is ``status`` or
    ``ctl``); return the exit status: 0; 1 (:data:`EXIT_FAILED`) when the master answered
    ``ok: false`` or was lost under ``--watch``; 2 (:data:`~prefork.command.EXIT_USAGE`) when
    no server answered; 130 when interrupted outside ``--watch``. Runs in the client's process.
    Raises SystemExit (status 2, one line of usage on stderr) for bad arguments.
    """
    command = argv[0]
    parser = build_parser(command)
    args = parser.parse_args(list(argv[1:]))
    if args.socket is not None and (args.name is not None or args.pid is not None):
        parser.error("--socket cannot be combined with --name or --pid")
    if args.timeout <= 0:
        parser.error(f"--timeout must be positive: {args.timeout:g}")
    if command == "status" and (args.interval < 0 or (args.watch and args.interval <= 0)):
        parser.error(f"--interval must be positive: {args.interval:g}")
    if command == "status" and args.json and args.watch:
        parser.error("--json and --watch cannot be combined")
    try:
        return _run(command, args)
    except CommandRefused as exc:
        print(f"prefork {command}: the master refused: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ControlError as exc:
        print(f"prefork {command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"prefork {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (prefork status --watch | head): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error again at exit
        return 0
