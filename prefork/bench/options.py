"""The command line of ``prefork bench``: its parser, the checks on what it is given, and
:class:`Options`, what the checks make of it.

Times are in seconds once checked (``10s``, ``500ms``, ``1m`` on the command line); payloads
are bytes (``\\n``, ``\\xHH`` escapes on the command line). Every check raises ValueError
with one line saying what is wrong, which :func:`prefork.bench.main` prints as a usage error.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import shlex
import socket
from dataclasses import dataclass
from typing import Any

from prefork.bench.protocols import PROTOCOLS
from prefork.bench.report import check_plotting, environment
from prefork.command import ArgumentParser
from prefork.config import usable_cpus
from prefork.sockets import Address, parse_address

#: Bounds on what one invocation may ask for (each run is bounded in time and count).
MAX_DURATION = 3600.0
MAX_CONCURRENCY = 10_000
MAX_POOL_SIZE = 1024
#: --duration when only --requests is given: the cap on each pool size's run, in seconds.
REQUESTS_TIME_CAP = 60.0

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``10``, ``2.5s``, ``500ms``, ``1m``, ``1h``. Raises ValueError."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"bad duration {text!r}: expected a number with an optional ms, s, m or h")
    return float(match[1]) * _SCALE[match[2]]


def parse_pool_sizes(text: str) -> list[int]:
    """Pool sizes in ``1,2,4,8`` (ascending, without repeats). Raises ValueError."""
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"bad pool sizes {text!r}: expected numbers separated by commas") from None
    if not sizes or sizes[0] < 1 or sizes[-1] > MAX_POOL_SIZE:
        raise ValueError(f"bad pool sizes {text!r}: each must be 1 to {MAX_POOL_SIZE}")
    return sizes


def parse_concurrency(text: str) -> tuple[int, bool]:
    """``64`` (requests in flight) or ``2x`` (per worker): (number, per_worker).

    Raises ValueError unless the number is 1 to :data:`MAX_CONCURRENCY`.
    """
    per_worker = text.endswith("x")
    try:
        value = int(text.removesuffix("x"))
    except ValueError:
        raise ValueError(f"bad concurrency {text!r}: expected N or Nx (N per worker)") from None
    if not 1 <= value <= MAX_CONCURRENCY:
        raise ValueError(f"bad concurrency {text!r}: must be 1 to {MAX_CONCURRENCY}")
    return value, per_worker


_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|[nrt0\\])")
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"0": b"\0", b"\\": b"\\"}


def unescape(text: str) -> bytes:
    r"""``text`` as UTF-8 bytes, with ``\n``, ``\r``, ``\t``, ``\0``, ``\\`` and ``\xHH`` decoded.

    Other backslashes stay as they are. Raises UnicodeEncodeError (a ValueError) for text
    that is not valid Unicode (undecodable bytes of a command line).
    """

    def one(match: re.Match[bytes]) -> bytes:
        code = match[1]
        return bytes([int(code[1:], 16)]) if code.startswith(b"x") else _ESCAPES[code]

    return _ESCAPE.sub(one, text.encode())


def build_parser() -> ArgumentParser:
    """The ``prefork bench`` argument parser; its errors exit with status 2. Raises nothing."""
    parser = ArgumentParser(
        prog="prefork bench",
        description="Load a handler at several pool sizes and recommend one: for each size, start "
        "'prefork TARGET --workers N' on loopback, drive load at it, stop it, and report req/s, "
        "latency, errors, the spread across workers and the workers' CPU and memory.",
    )
    parser.add_argument("target", nargs="?", metavar="TARGET", help="The handler, as for 'prefork TARGET'.")
    parser.add_argument(
        "-w",
        "--workers",
        metavar="N,N,...",
        help="Pool sizes to measure, comma-separated. Default: 1, 2, 4, ... up to twice the usable CPUs.",
    )
    load = parser.add_argument_group("load")
    load.add_argument(
        "-c",
        "--concurrency",
        default="64",
        metavar="N|Nx",
        help="Requests in flight at most (closed loop: always this many), or Nx: N per worker. Default: 64.",
    )
    load.add_argument(
        "--rate",
        type=float,
        metavar="R",
        help="Open loop: start R requests per second whatever the replies; latency counts from when each "
        "was due. --concurrency still bounds those in flight.",
    )
    load.add_argument(
        "-d",
        "--duration",
        metavar="TIME",
        help=f"Measured time per pool size (10, 10s, 500ms, 1m). Default: 10s, or a cap of "
        f"{REQUESTS_TIME_CAP:g}s with --requests.",
    )
    load.add_argument("-n", "--requests", type=int, metavar="N", help="Stop each pool size after N requests.")
    load.add_argument(
        "--warmup", default="1s", metavar="TIME", help="Load before measuring, not counted. Default: 1s."
    )
    load.add_argument(
        "--protocol",
        default="auto",
        choices=("auto", *PROTOCOLS),
        help="line: send PAYLOAD and a newline, read a line; http: GET PAYLOAD (a path); raw: send "
        "PAYLOAD, half-close, read to EOF; udp: a datagram each way. Default auto: from where the "
        "server listens (http://, udp://, else line).",
    )
    load.add_argument(
        "--payload",
        metavar="BYTES",
        help=r"What to send (\n, \r, \t, \xHH escapes). Default: ping, or / for http.",
    )
    load.add_argument(
        "--expect", metavar="BYTES", help="A good reply contains these bytes (escapes as --payload)."
    )
    load.add_argument(
        "--keepalive",
        action="store_true",
        help="Reuse connections (line, http). Default: a connection per request.",
    )
    load.add_argument(
        "--timeout",
        default="5s",
        metavar="TIME",
        help="Per request, counted as a timeout after. Default: 5s.",
    )
    load.add_argument(
        "--clients",
        type=int,
        metavar="N",
        help="Client processes sharing the load. Default: the usable CPUs (at most --concurrency).",
    )
    server = parser.add_argument_group("server")
    server.add_argument("--unix", action="store_true", help="Serve TARGET on a Unix socket, not 127.0.0.1.")
    server.add_argument(
        "--udp", action="store_true", help="Serve TARGET over UDP (implied by --protocol udp)."
    )
    server.add_argument(
        "--server-args", default="", metavar="ARGS", help="More 'prefork' flags for the server, one string."
    )
    server.add_argument(
        "--address",
        metavar="ADDR",
        help="Load a server already running at ADDR (HOST:PORT, udp://HOST:PORT, unix:PATH) instead of "
        "starting TARGET; one pool size only.",
    )
    server.add_argument(
        "--scoreboard-file",
        metavar="PATH",
        help="With --address: that server's scoreboard file, for the spread across workers and their CPU.",
    )
    server.add_argument(
        "--allow-remote",
        action="store_true",
        help="Allow an --address that is not loopback or a Unix socket.",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "-o",
        "--out",
        metavar="PATH",
        help="Write every figure as JSON; PATH.csv: CSV, and the JSON beside it.",
    )
    output.add_argument("--plot", metavar="PATH", help="Write a PNG of throughput and p99 against pool size.")
    return parser


@dataclass(frozen=True)
class Options:
    """The checked command line (times in seconds)."""

    target: str | None
    sizes: list[int]
    concurrency: int
    per_worker: bool
    rate: float | None
    duration: float
    requests: int | None
    warmup: float
    protocol: str
    payload: bytes | None
    expect: bytes | None
    keepalive: bool
    timeout: float
    clients: int | None
    unix: bool
    udp: bool
    server_args: list[str]
    address: Address | None
    address_text: str | None
    scoreboard: str | None
    out: str | None
    plot: str | None

    def parameters(self) -> dict[str, Any]:
        """The run's parameters and the machine's (:func:`~prefork.bench.report.environment`),
        for the JSON and CSV files; times in seconds. Raises nothing."""
        return {
            "target": self.target or self.address_text,
            "pool_sizes": self.sizes,
            "concurrency": f"{self.concurrency}x" if self.per_worker else self.concurrency,
            "rate": self.rate,
            "duration_s": self.duration,
            "requests": self.requests,
            "warmup_s": self.warmup,
            "protocol": self.protocol,
            "payload": None if self.payload is None else self.payload.decode("latin-1"),
            "keepalive": self.keepalive,
            "timeout_s": self.timeout,
            "clients": self.clients,
            "unix": self.unix,
            "machine": environment(),
        }


def default_pool_sizes() -> list[int]:
    """1, 2, 4, ... up to twice the usable CPUs, and the number of CPUs itself (ascending).
    Raises nothing."""
    cpus = usable_cpus()
    sizes = {cpus}
    size = 1
    while size <= 2 * cpus:
        sizes.add(size)
        size *= 2
    return sorted(sizes)


def _is_loopback(address: Address) -> bool:
    if address.family == socket.AF_UNIX:
        return True
    host = str(address.server_address[0])
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def check_options(args: argparse.Namespace) -> Options:
    """Turn ``args`` (from :func:`build_parser`) into :class:`Options`.

    Raises ValueError, with one line saying what is wrong, for bad or conflicting values, a
    non-loopback ``--address`` without ``--allow-remote``, an output directory that does not
    exist, or ``--plot`` without matplotlib.
    """
    if (args.target is None) == (args.address is None):
        raise ValueError("give a TARGET to start, or --address of a running server (not both)")
    sizes = parse_pool_sizes(args.workers) if args.workers else default_pool_sizes()
    concurrency, per_worker = parse_concurrency(args.concurrency)
    requests_only = args.requests is not None and args.duration is None
    duration = REQUESTS_TIME_CAP if requests_only else parse_duration(args.duration or "10s")
    warmup, timeout = parse_duration(args.warmup), parse_duration(args.timeout)
    if not 0 < duration <= MAX_DURATION or warmup > MAX_DURATION:
        raise ValueError(f"--duration must be more than 0 and at most {MAX_DURATION:g}s (and --warmup too)")
    if not 0 < timeout <= MAX_DURATION:
        raise ValueError("--timeout must be more than 0")
    if args.requests is not None and args.requests < 1:
        raise ValueError("--requests must be at least 1")
    if args.rate is not None and not 0 < args.rate <= 1e7:
        raise ValueError("--rate must be more than 0 (requests per second)")
    if args.clients is not None and not 1 <= args.clients <= 256:
        raise ValueError("--clients must be 1 to 256")
    if args.protocol == "raw" and args.keepalive:
        raise ValueError("--keepalive needs a protocol with framed replies (line, http), not raw")
    address = None
    if args.address is not None:
        if args.workers and len(sizes) > 1:
            raise ValueError("with --address there is one pool size (the running server's)")
        address = parse_address(args.address, args.protocol == "udp")
        if not args.allow_remote and not _is_loopback(address):
            raise ValueError(f"{args.address} is not a loopback address (pass --allow-remote to load it)")
        if address.family != socket.AF_UNIX and address.server_address[1] == 0:
            raise ValueError("--address needs the server's port")
        if args.plot:
            raise ValueError("--plot compares pool sizes; with --address there is one")
    elif args.scoreboard_file:
        raise ValueError("--scoreboard-file goes with --address (a started TARGET gets its own)")
    for path in (args.out, args.plot):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise ValueError(f"cannot write {path}: no such directory")
    if args.plot:
        missing = check_plotting()
        if missing:
            raise ValueError(missing)
    return Options(
        target=args.target,
        sizes=sizes,
        concurrency=concurrency,
        per_worker=per_worker,
        rate=args.rate,
        duration=duration,
        requests=args.requests,
        warmup=warmup,
        protocol=args.protocol,
        payload=None if args.payload is None else unescape(args.payload),
        expect=None if args.expect is None else unescape(args.expect),
        keepalive=args.keepalive,
        timeout=timeout,
        clients=args.clients,
        unix=args.unix,
        udp=args.udp or args.protocol == "udp",
        server_args=shlex.split(args.server_args),
        address=address,
        address_text=args.address,
        scoreboard=args.scoreboard_file,
        out=args.out,
        plot=args.plot,
    )
