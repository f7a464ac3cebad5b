"""The command line of ``prefork bench``: its parser, the checks on what it is given, and
:class:`Options`, what the checks make of it.

Times are in seconds once checked, sizes in bytes, payloads bytes (the values are parsed by
:mod:`prefork.bench.parse`, :mod:`prefork.bench.slo` and :mod:`prefork.bench.steps`). Every
check raises ValueError with one line saying what is wrong, which :func:`prefork.bench.main`
prints as a usage error.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shlex
import socket
from dataclasses import dataclass
from typing import Any

from prefork.bench.parse import (
    integer,
    number,
    parse_concurrency,
    parse_duration,
    parse_pool_sizes,
    parse_size,
    unescape,
)
from prefork.bench.plot import check_plotting
from prefork.bench.protocols import PROTOCOLS
from prefork.bench.report import environment
from prefork.bench.slo import Objective, parse_slo
from prefork.bench.steps import Step, parse_steps
from prefork.command import ArgumentParser
from prefork.config import usable_cpus
from prefork.sockets import Address, parse_address

#: Bounds on what one invocation may ask for (each run is bounded in time and count).
MAX_DURATION = 3600.0
MAX_ROUNDS = 20
MAX_REQUESTS = 10**9
#: The most windows the step-load mode's series may have (each holds a small histogram in
#: every client process: about 17 KB for a --timeout of 5 s).
MAX_WINDOWS = 10_000
#: --duration when only --requests is given: the cap on each pool size's run, in seconds.
REQUESTS_TIME_CAP = 60.0


def build_parser() -> ArgumentParser:
    """The ``prefork bench`` argument parser; its errors exit with status 2. Raises nothing."""
    parser = ArgumentParser(
        prog="prefork bench",
        description="Load a handler at several pool sizes and recommend one: for each size, start "
        "'prefork TARGET --workers N' on loopback, drive load at it, stop it, and report req/s, "
        "latency, errors, the spread across workers and the workers' CPU and memory; in rounds, "
        "so that a gain inside the noise is not taken for one.",
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
        type=number,
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
    load.add_argument(
        "-n", "--requests", type=integer, metavar="N", help="Stop each pool size after N requests."
    )
    load.add_argument(
        "-r",
        "--rounds",
        type=integer,
        default=3,
        metavar="N",
        help="Measure each pool size N times, the sizes interleaved (1, 2, 4, 4, 2, 1, ...); the table "
        "shows medians and ranges, and a larger pool is recommended only for a gain beyond the noise. "
        "Default: 3.",
    )
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
        type=integer,
        metavar="N",
        help="Client processes sharing the load. Default: the usable CPUs (at most --concurrency).",
    )
    modes = parser.add_argument_group("modes")
    modes.add_argument(
        "--slo",
        metavar="pNN=TIME,...",
        help="SLO mode, with --rate: find the smallest pool whose every round met these latency "
        "objectives (e.g. p99=50ms; failed and unsent requests count as too slow). Exit status 3 "
        "when no size met them.",
    )
    modes.add_argument(
        "--step-load",
        metavar="STEPS",
        help="Step-load mode: open loop at rates that change, e.g. '10/s for 10s, 250/s for 20s, 10/s "
        "for 60s'; shows the workers (from the scoreboard) and the latency per --window over time. "
        "--workers: the pool sizes to run it on (default: the server's own, e.g. a dynamic pool's "
        "bounds given with --server-args).",
    )
    modes.add_argument(
        "--window",
        default="1s",
        metavar="TIME",
        help=f"Step-load mode: the time per row of the series (at most {MAX_WINDOWS:,} rows). Default: 1s.",
    )
    modes.add_argument(
        "--settle",
        default="5s",
        metavar="TIME",
        help="Step-load mode: each step's first TIME is its ramp, its p99 reported apart. Default: 5s.",
    )
    modes.add_argument(
        "--memory-limit",
        metavar="SIZE",
        help="Say how many workers fit in SIZE (512M, 2G, 1.5GiB: K = 1024 bytes) from the memory "
        "measured, and recommend no more.",
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
    output.add_argument(
        "--plot",
        metavar="PATH",
        help="Write a PNG of throughput and p99 against pool size (step-load mode: against time).",
    )
    return parser


@dataclass(frozen=True)
class Options:
    """The checked command line (times in seconds, sizes in bytes). ``sizes``: the pool sizes
    to run (None: the server's own choice, in the step-load mode without ``--workers``)."""

    target: str | None
    sizes: list[int | None]
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
    rounds: int = 1
    objectives: tuple[Objective, ...] = ()
    steps: tuple[Step, ...] = ()
    window: float = 1.0
    settle: float = 5.0
    memory_limit: int | None = None

    @property
    def json_path(self) -> str | None:
        """Where the JSON goes: ``--out``, or beside a ``--out PATH.csv``; None without it."""
        if self.out is None:
            return None
        return self.out.removesuffix(".csv") + ".json" if self.out.endswith(".csv") else self.out

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
            "rounds": self.rounds,
            "slo": [str(o) for o in self.objectives] or None,
            "steps": [{"rate": s.rate, "seconds": s.seconds} for s in self.steps] or None,
            "window_s": self.window if self.steps else None,
            "settle_s": self.settle if self.steps else None,
            "memory_limit_bytes": self.memory_limit,
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
    non-loopback ``--address`` without ``--allow-remote``, an output file that is a directory
    or in a directory that does not exist, or ``--plot`` without matplotlib.
    """
    if (args.target is None) == (args.address is None):
        raise ValueError("give a TARGET to start, or --address of a running server (not both)")
    modes = _check_modes(args)
    steps: tuple[Step, ...] = modes["steps"]
    given = args.workers is not None
    sizes: list[int | None] = list(parse_pool_sizes(args.workers) if given else default_pool_sizes())
    if not given and (steps or args.address is not None):
        sizes = [None]  # the server's own pool size
    concurrency, per_worker = parse_concurrency(args.concurrency)
    if args.duration is not None:
        duration = parse_duration(args.duration)
    else:  # --requests alone: the duration is a cap
        duration = REQUESTS_TIME_CAP if args.requests is not None else 10.0
    if steps:
        duration = sum(step.seconds for step in steps)
    warmup, timeout = parse_duration(args.warmup), parse_duration(args.timeout)
    if not 0 < duration <= MAX_DURATION or warmup > MAX_DURATION:
        raise ValueError(f"--duration must be more than 0 and at most {MAX_DURATION:g}s (and --warmup too)")
    if not 0 < timeout <= MAX_DURATION:
        raise ValueError("--timeout must be more than 0")
    if args.requests is not None and not 1 <= args.requests <= MAX_REQUESTS:
        raise ValueError(f"--requests must be 1 to {MAX_REQUESTS:,}")
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
        if args.plot and not steps:
            raise ValueError(
                "--plot compares pool sizes; with --address there is one (but --step-load plots)"
            )
    elif args.scoreboard_file:
        raise ValueError("--scoreboard-file goes with --address (a started TARGET gets its own)")
    _check_outputs(args.out, args.plot)
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
        **modes,
    )


def _check_outputs(out: str | None, plot: str | None) -> None:
    """Check that the files ``--out`` (and the JSON beside a CSV) and ``--plot`` can be
    written: not a directory, in one that exists. Raises ValueError."""
    paths = [out, plot]
    if out is not None and out.endswith(".csv"):
        paths.append(out.removesuffix(".csv") + ".json")
    for path in paths:
        if path is None:
            continue
        if not path:
            raise ValueError("--out and --plot need a file name")
        if os.path.isdir(path):
            raise ValueError(f"cannot write {path}: it is a directory, not a file")
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise ValueError(f"cannot write {path}: no such directory")


def _check_modes(args: argparse.Namespace) -> dict[str, Any]:
    """The rounds and the modes' values of ``args`` (the :class:`Options` fields ``rounds``,
    ``objectives``, ``steps``, ``window``, ``settle``, ``memory_limit``). Raises ValueError."""
    if not 1 <= args.rounds <= MAX_ROUNDS:
        raise ValueError(f"--rounds must be 1 to {MAX_ROUNDS}")
    objectives = tuple(parse_slo(args.slo)) if args.slo is not None else ()
    if objectives and args.rate is None:
        raise ValueError("--slo needs --rate R: the load, in requests per second, the SLO must hold at")
    steps = tuple(parse_steps(args.step_load)) if args.step_load is not None else ()
    if steps:
        if objectives or args.rate is not None or args.requests is not None or args.duration is not None:
            raise ValueError(
                "--step-load sets the rate and the duration: no --rate, --slo, --requests or --duration"
            )
        if sum(step.seconds for step in steps) > MAX_DURATION:
            raise ValueError(f"the steps last more than {MAX_DURATION:g}s")
    window, settle = parse_duration(args.window), parse_duration(args.settle)
    if not 0 < window <= MAX_DURATION:
        raise ValueError("--window must be more than 0")
    if settle > MAX_DURATION:
        raise ValueError(f"--settle must be at most {MAX_DURATION:g}s")
    total = sum(step.seconds for step in steps)
    if total / window > MAX_WINDOWS:
        raise ValueError(
            f"--window {args.window} cuts the steps' {total:g} s into more than {MAX_WINDOWS:,} windows: "
            f"give at least {total / MAX_WINDOWS:.3g}s"
        )
    return {
        "rounds": 1 if steps else args.rounds,
        "objectives": objectives,
        "steps": steps,
        "window": window,
        "settle": settle,
        "memory_limit": None if args.memory_limit is None else parse_size(args.memory_limit),
    }
