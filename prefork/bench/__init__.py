"""``prefork bench``: measure a handler under load at several pool sizes, and recommend one.

``prefork bench TARGET --workers 1,2,4,8 [--concurrency 64 | --rate R] [--duration 10s |
--requests N] [--protocol auto|line|http|raw|udp] [--payload P] [--out results.json]
[--plot results.png]``. For each pool size the bench (the parent process) starts
``python -m prefork TARGET --workers N`` on loopback (:mod:`prefork.bench.runner`), drives
load at it from client processes (:mod:`prefork.bench.client_process`, each running
:mod:`prefork.bench.loadgen`), stops it, and reports throughput, latency percentiles, errors
by kind, the spread of requests across workers and the workers' CPU and memory
(:mod:`prefork.bench.report`). With ``--address`` it loads a server already running instead,
at one pool size. The command line is parsed and checked by :mod:`prefork.bench.options`.

Modules, each importing only those after it: ``options`` (the command line), ``report``
(figures, table, files, plot), ``runner`` (the server under test, measuring one pool size),
``client_process`` (the parent's side of a client process; ``client`` is the child's),
``loadgen`` (the request loop), ``load`` (LoadSpec, LoadResult), ``protocols`` (framing).

Exit status: 0 after a run, 1 when a run failed (the server died, a client process failed),
2 for bad input (one line on stderr), 130 when interrupted.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from prefork.bench.load import LoadSpec
from prefork.bench.options import MAX_CONCURRENCY, Options, build_parser, check_options
from prefork.bench.report import ProgressLine, figures, notes, plot, recommend, table, write_csv, write_json
from prefork.bench.runner import BenchError, PoolRun, measure, parse_listening, scoreboard_requests, serving
from prefork.command import EXIT_USAGE
from prefork.config import usable_cpus
from prefork.sockets import Address

__all__ = ["main"]

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def _spec(options: Options, address: Address, protocol: str, workers: int) -> LoadSpec:
    concurrency = options.concurrency * workers if options.per_worker else options.concurrency
    payload = options.payload if options.payload is not None else b"/" if protocol == "http" else b"ping"
    if address.family == socket.AF_UNIX:
        host = "localhost"
    else:
        name, port = address.server_address[0], address.server_address[1]
        host = f"[{name}]:{port}" if ":" in str(name) else f"{name}:{port}"
    return LoadSpec(
        family=int(address.family),
        address=address.server_address,
        protocol=protocol,
        payload=payload,
        concurrency=min(concurrency, MAX_CONCURRENCY),
        duration=options.duration,
        rate=options.rate,
        warmup=options.warmup,
        requests=options.requests,
        keepalive=options.keepalive,
        timeout=options.timeout,
        expect=options.expect,
        host=host,
    )


def run_pool_size(options: Options, workers: int, progress: ProgressLine) -> PoolRun:
    """Start TARGET with ``workers`` workers (or use ``--address``), load it, stop it.

    ``workers``: the pool size (with ``--address``: the one given, or 0; the count of workers
    in ``--scoreboard-file``, when there are any, wins); ``progress``: the live line. Raises
    BenchError when the server does not start or a client process fails, OSError when a
    process cannot be started; the server and the clients are stopped before either (or a
    KeyboardInterrupt) leaves.
    """

    def tick(elapsed: float, completed: int) -> None:
        progress.update(workers, elapsed, options.duration, completed)

    if options.address is not None:
        protocol = options.protocol
        if protocol == "auto":
            protocol = "udp" if options.address.datagram else "line"
        scoreboard = options.scoreboard
        pool: int | None = len(_scoreboard_pids(scoreboard)) or workers or None
        spec = _spec(options, options.address, protocol, pool or 1)
        clients = _clients(options, spec)
        got = measure(spec, clients, lambda: _scoreboard_pids(scoreboard), scoreboard, tick)
        listening = options.address_text or ""
    else:
        assert options.target is not None
        pool = workers
        extra = options.server_args
        with serving(options.target, workers, unix=options.unix, udp=options.udp, extra=extra) as srv:
            address, suggested = parse_listening(srv.listening)
            protocol = suggested if options.protocol == "auto" else options.protocol
            spec = _spec(options, address, protocol, workers)
            clients = _clients(options, spec)
            got = measure(spec, clients, srv.worker_pids, srv.scoreboard, tick)
            listening = srv.listening
    progress.clear()
    return PoolRun(
        workers=pool,
        protocol=protocol,
        address=listening,
        load=got.load,
        window=got.window,
        duration=options.duration,
        count_limited=options.requests is not None,
        per_worker=got.per_worker,
        clients=clients,
        machine_cpu=got.machine_cpu,
        concurrency=spec.concurrency,
        keepalive=spec.keepalive,
    )


def _scoreboard_pids(path: str | None) -> list[int]:
    return sorted(scoreboard_requests(path) or {})


def _clients(options: Options, spec: LoadSpec) -> int:
    return max(1, min(options.clients or usable_cpus(), spec.concurrency))


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def main(argv: Sequence[str]) -> int:
    """Run ``prefork bench`` with the arguments ``argv`` (without ``bench``); return its exit
    status (0, :data:`EXIT_FAILED`, :data:`~prefork.command.EXIT_USAGE` or
    :data:`EXIT_INTERRUPTED`).

    Runs in the bench's parent process; the servers and client processes it starts are
    stopped before it returns. Raises SystemExit (status 2, one line on stderr) for bad
    arguments, OSError when ``--out`` or ``--plot`` cannot be written.
    """
    parser = build_parser()
    args = parser.parse_args(list(argv))
    try:
        options = check_options(args)
    except ValueError as exc:
        parser.error(str(exc))
    progress = ProgressLine()
    sizes = options.sizes if options.address is None else options.sizes[:1] if args.workers else [0]
    runs = []
    # SIGTERM stops the bench as Ctrl-C does: the server and the clients are stopped first.
    previous = signal.signal(signal.SIGTERM, _interrupt) if _in_main_thread() else None
    try:
        for workers in sizes:
            runs.append(figures(run_pool_size(options, workers, progress)))
    except BenchError as exc:
        progress.clear()
        print(f"prefork bench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.usage else EXIT_FAILED
    except KeyboardInterrupt:
        progress.clear()
        print("prefork bench: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    parameters = options.parameters()
    recommendation = recommend(runs) if options.address is None else None
    print(table(runs))
    for line in notes(runs, recommendation):
        print(line)
    if options.out:
        if options.out.endswith(".csv"):
            write_csv(options.out, parameters, runs)
            write_json(options.out.removesuffix(".csv") + ".json", parameters, runs, recommendation)
        else:
            write_json(options.out, parameters, runs, recommendation)
    if options.plot:
        plot(options.plot, runs, parameters, recommendation)
    return 0
