"""``prefork bench``: measure a handler under load at several pool sizes, and recommend one.

``prefork bench TARGET --workers 1,2,4,8 [--rounds 3] [--concurrency 64 | --rate R]
[--duration 10s | --requests N] [--protocol auto|line|http|raw|udp] [--payload P]
[--slo p99=50ms --rate R | --step-load STEPS] [--memory-limit 2G] [--out results.json]
[--plot results.png]``. For each pool size, in each round (the sizes interleaved), the bench
(the parent process) starts ``python -m prefork TARGET --workers N`` on loopback
(:mod:`prefork.bench.server`), drives load at it from client processes
(:mod:`prefork.bench.client_process`, each running :mod:`prefork.bench.loadgen`), reads its
processes' memory, stops it, and reports throughput, latency percentiles, errors by kind,
the spread across workers, the workers' CPU and memory (:mod:`prefork.bench.report`), with
the medians and ranges over the rounds and a recommendation that never takes a gain inside
the noise for one (:mod:`prefork.bench.rounds`). The SLO mode finds the smallest pool that
meets latency objectives (:mod:`prefork.bench.slo`); the step-load mode shows the pool
following a load that changes (:mod:`prefork.bench.steps`). With ``--address`` it loads a
server already running instead, at one pool size. The modes are :mod:`prefork.bench.modes`.

Modules, each importing only those after it: ``modes`` (what runs), ``options`` (the command
line), ``plot``, ``report`` (figures, tables, files), ``rounds`` (order, summaries, the noise
rule), ``slo``, ``steps``, ``runner`` (measuring one run), ``probe`` (is the server there,
and does it speak the protocol), ``server`` (the server under test), ``memory`` (USS, PSS,
what a worker costs), ``client_process`` (the parent's side of a client process; ``client`` is the child's),
``loadgen`` (the request loop), ``protocols`` (framing), ``schedule`` (the open loop's due
times), ``load`` (LoadSpec, LoadResult), ``parse`` (values of the command line), ``text``,
``lifecycle`` (signals held while stopping, children that die with the bench, open files),
``errors``.

Exit status: 0 after a run, 1 when a run failed (the server died, a client process failed,
the target refused connections, every request at every pool size failed, a file could not be
written; one line on stderr), 2 for bad input (one line on stderr; also a server that speaks
HTTP to a non-HTTP protocol), 3 when no pool size met the SLO, 130 when interrupted (Ctrl-C,
SIGTERM or SIGHUP).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from prefork.bench.errors import BenchError
from prefork.bench.modes import EXIT_FAILED, EXIT_SLO_MISSED, Outcome, run_sizes, run_steps
from prefork.bench.options import Options, build_parser, check_options
from prefork.bench.plot import plot, plot_steps
from prefork.bench.report import ProgressLine, write_csv, write_json
from prefork.command import EXIT_USAGE

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_SLO_MISSED", "main"]

EXIT_INTERRUPTED = 130
#: The signals that stop the bench as Ctrl-C does (SIGHUP: its terminal went away).
_STOPPING = (signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def main(argv: Sequence[str]) -> int:
    """Run ``prefork bench`` with the arguments ``argv`` (without ``bench``); return its exit
    status (0, :data:`EXIT_FAILED`, :data:`~prefork.command.EXIT_USAGE`,
    :data:`~prefork.bench.modes.EXIT_SLO_MISSED` or :data:`EXIT_INTERRUPTED`).

    Runs in the bench's parent process; the servers and client processes it starts are
    stopped before it returns. SIGTERM and SIGHUP stop it as Ctrl-C does. Raises SystemExit
    (status 2, one line on stderr) for bad arguments.
    """
    parser = build_parser()
    args = parser.parse_args(list(argv))
    try:
        options = check_options(args)
    except ValueError as exc:
        parser.error(str(exc))
    progress = ProgressLine()
    # SIGTERM and SIGHUP stop the bench as Ctrl-C does: the server and the clients are stopped first.
    previous = {sig: signal.signal(sig, _interrupt) for sig in _STOPPING} if _in_main_thread() else {}
    try:
        outcome: Outcome = run_steps(options, progress) if options.steps else run_sizes(options, progress)
    except BenchError as exc:
        print(f"prefork bench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.usage else EXIT_FAILED
    except KeyboardInterrupt:
        print("prefork bench: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for line in outcome.lines:
        print(line)
    try:
        _write_files(options, outcome)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"prefork bench: error: cannot write{where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    if outcome.error:
        print(f"prefork bench: {outcome.error}", file=sys.stderr)
    return outcome.status


def _write_files(options: Options, outcome: Outcome) -> None:
    """Write ``--out`` (and the JSON beside a CSV) and ``--plot``. Raises OSError."""
    parameters = options.parameters()
    if options.out and options.json_path:
        if options.out.endswith(".csv"):
            write_csv(options.out, parameters, outcome.runs)
        write_json(options.json_path, parameters, outcome.runs, outcome.recommendation, outcome.extra)
    if options.plot and options.steps:
        plot_steps(options.plot, outcome.runs, parameters)
    elif options.plot:
        plot(options.plot, outcome.runs, parameters, outcome.recommendation)
