"""What ``prefork bench`` runs, mode by mode: one run (:func:`run_once`), the pool sizes in
interleaved rounds (:func:`run_sizes`, also the SLO mode), and the step load
(:func:`run_steps`). Runs in the bench's parent process; each run starts its own server and
client processes and stops them before it returns.

Each mode returns an :class:`Outcome`: the lines to print, the figures for the files, the
recommendation and the exit status; :func:`prefork.bench.main` prints and writes them.

**A pool size where every request failed** is recorded as such (0 req/s; in the SLO mode,
"never"), said in a note, and the bench goes on with the next: only when every size failed
does it stop with status 1 (:data:`EXIT_FAILED`) and one line saying how.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prefork.bench.errors import BenchError
from prefork.bench.lifecycle import ensure_open_files
from prefork.bench.load import LoadSpec
from prefork.bench.memory import cost_model, median_memory, memory_lines, workers_fit
from prefork.bench.options import Options
from prefork.bench.parse import MAX_CONCURRENCY
from prefork.bench.probe import probe
from prefork.bench.protocols import ERROR_KINDS
from prefork.bench.report import (
    ProgressLine,
    figures,
    memory_table,
    notes,
    pool_name,
    recommendation_lines,
    table,
)
from prefork.bench.rounds import cpu_cap, recommend, schedule, summarize
from prefork.bench.runner import (
    PoolRun,
    Progress,
    client_count,
    measure,
    sample_memory_of,
    scoreboard_counts,
    scoreboard_master,
)
from prefork.bench.server import parse_listening, serving
from prefork.bench.slo import recommend_slo
from prefork.bench.steps import PoolSampler, series, step_lines, step_summaries, step_table
from prefork.config import usable_cpus
from prefork.sockets import Address

#: Exit status when a run failed: the server or a client, the probe, or every request at
#: every pool size.
EXIT_FAILED = 1
#: Exit status when no pool size met the SLO (``--slo``).
EXIT_SLO_MISSED = 3

Pids = Callable[[], list[int]]


@dataclass
class Outcome:
    """What a mode found: ``lines`` for stdout, the ``runs`` and ``extra`` figures for the
    files (JSON values), the ``recommendation``, and the exit ``status`` with, when it is not
    0, the one line to print on stderr (``error``)."""

    lines: list[str]
    runs: list[dict[str, Any]]
    recommendation: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    status: int = 0
    error: str | None = None


def _concurrency(options: Options, workers: int) -> int:
    """The requests in flight at most for a pool of ``workers``."""
    return min(options.concurrency * workers if options.per_worker else options.concurrency, MAX_CONCURRENCY)


def _clients(options: Options, concurrency: int) -> int:
    """The client processes for a load of ``concurrency`` requests in flight."""
    rate = max((s.rate for s in options.steps), default=None) if options.steps else options.rate
    return client_count(options.clients or usable_cpus(), concurrency, rate)


def _check_open_files(options: Options, workers: int) -> None:
    """Make sure a client process may open its share of the sockets of a pool of ``workers``
    (:func:`~prefork.bench.lifecycle.ensure_open_files`). Raises BenchError (``usage``)."""
    concurrency = _concurrency(options, workers)
    try:
        ensure_open_files(math.ceil(concurrency / _clients(options, concurrency)))
    except ValueError as exc:
        raise BenchError(str(exc), usage=True) from None


def _spec(options: Options, address: Address, protocol: str, workers: int) -> LoadSpec:
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
        concurrency=_concurrency(options, workers),
        duration=options.duration,
        rate=options.rate,
        warmup=0.0 if options.steps else options.warmup,
        requests=options.requests,
        keepalive=options.keepalive,
        timeout=options.timeout,
        expect=options.expect,
        host=host,
        steps=tuple((s.rate, s.seconds) for s in options.steps) or None,
        window=options.window if options.steps else None,
    )


@dataclass(frozen=True)
class _Target:
    """The server one run loads: where (``address``, and ``where`` to name it), in which
    ``protocol``, its pool size (``workers``, None: unknown), how to find its workers'
    pids and its master's pid, and its scoreboard file (``board``, None: none)."""

    address: Address
    where: str
    protocol: str
    workers: int | None
    pids: Pids
    master: int | None
    board: str | None


def run_once(
    options: Options, workers: int | None, round_: int, progress: ProgressLine, *, first: bool
) -> PoolRun:
    """Start TARGET with ``workers`` workers (None: the server's choice), or use
    ``--address``; probe it if ``first`` (:func:`~prefork.bench.probe.probe`); load it; read
    its memory; stop it. In the step-load mode, sample its workers while loading.

    ``round_``: the round (from 0); ``progress``: the live line. With ``--address`` the count
    of workers in ``--scoreboard-file``, when there are any, is the pool size. Raises
    BenchError when the server does not start, does not answer the probe, or a client
    process fails (a run where every request failed is no error here: see
    :func:`failure`); OSError when a process cannot be started. The server and the clients
    are stopped before either (or a KeyboardInterrupt) leaves.
    """
    label = ("the server's pool" if workers is None else pool_name({"workers": workers})) + (
        f", round {round_ + 1}/{options.rounds}" if options.rounds > 1 else ""
    )
    sampler = PoolSampler(None)

    def tick(elapsed: float, completed: int) -> None:
        progress.update(label, elapsed, options.duration, completed)
        if options.steps:
            sampler.sample(elapsed)

    try:
        if options.address is not None:
            run = _load(options, _running(options, workers), first, sampler, tick)
        else:
            assert options.target is not None
            extra = options.server_args
            with serving(options.target, workers, unix=options.unix, udp=options.udp, extra=extra) as srv:
                address, suggested = parse_listening(srv.listening)
                protocol = suggested if options.protocol == "auto" else options.protocol
                target = _Target(
                    address, srv.listening, protocol, workers, srv.worker_pids, srv.pid, srv.scoreboard
                )
                run = _load(options, target, first, sampler, tick)
    finally:
        sampler.close()
        progress.clear()
    run.round = round_
    run.samples = sampler.samples
    return run


def _running(options: Options, workers: int | None) -> _Target:
    """The server at ``--address``: its pool size from its scoreboard, else ``workers``."""
    assert options.address is not None
    protocol = options.protocol
    if protocol == "auto":
        protocol = "udp" if options.address.datagram else "line"
    board = options.scoreboard

    def pids() -> list[int]:
        return sorted(scoreboard_counts(board) or {})

    where = options.address_text or ""
    return _Target(
        options.address, where, protocol, len(pids()) or workers, pids, scoreboard_master(board), board
    )


def _load(options: Options, target: _Target, first: bool, sampler: PoolSampler, tick: Progress) -> PoolRun:
    """Probe ``target`` if ``first``, load it (``tick``: called while measuring), then read
    its processes' memory; the run's figures (its ``round`` and ``samples`` not yet set)."""
    pool = target.workers or len(target.pids()) or None
    spec = _spec(options, target.address, target.protocol, pool or 1)
    if first:
        probe(spec, target.where)
    sampler.path = target.board
    _check_open_files(options, pool or 1)
    clients = _clients(options, spec.concurrency)
    got = measure(spec, clients, target.pids, target.board, tick)
    return PoolRun(
        workers=target.workers,
        protocol=target.protocol,
        address=target.where,
        load=got.load,
        window=got.window,
        duration=options.duration,
        count_limited=options.requests is not None,
        per_worker=got.per_worker,
        clients=clients,
        machine_cpu=got.machine_cpu,
        concurrency=spec.concurrency,
        keepalive=spec.keepalive,
        memory=sample_memory_of(target.master, target.pids()),
    )


def failure(size: dict[str, Any]) -> str | None:
    """How every request of ``size`` (a run's figures, or a pool size's summary) failed, as
    ``bad reply 30, 12 never sent``; None unless every one did (none came back good, and
    some failed or came due unsent). Raises nothing."""
    if size["ok"] or not (size["errors"] or size["unsent"]):
        return None
    kinds = {kind: count for kind, count in size["errors_by_kind"].items() if count}
    ordered = sorted(kinds, key=lambda k: ERROR_KINDS.index(k) if k in ERROR_KINDS else len(ERROR_KINDS))
    why = ", ".join(f"{kind} {kinds[kind]:,}" for kind in ordered)
    if size["unsent"]:
        why += (", " if why else "") + f"{size['unsent']:,} never sent"
    return why


def _failures(runs: list[dict[str, Any]], outcome: Outcome, slo: bool = False) -> bool:
    """Note each pool size of ``runs`` where every request failed, into ``outcome``; when
    every size failed, set its status and error too. Return whether every size failed."""
    failed = [(run, why) for run in runs if (why := failure(run)) is not None]
    for run, why in failed:
        counted = "0 req/s, and the SLO missed" if slo else "0 req/s"
        outcome.lines.append(
            f"note: with {pool_name(run)} every request failed ({why}): counted as {counted}"
        )
    if not failed or len(failed) < len(runs):
        return False
    if len(failed) == 1:
        run, why = failed[0]
        error = f"every request to {run['address']} failed with {pool_name(run)} ({why})"
    else:
        error = "every request failed, with every pool size: " + "; ".join(
            f"{pool_name(run)}: {why}" for run, why in failed
        )
    outcome.status, outcome.error = EXIT_FAILED, f"error: {error}"
    return True


def run_sizes(options: Options, progress: ProgressLine) -> Outcome:
    """Run every pool size of ``options`` in interleaved rounds
    (:func:`~prefork.bench.rounds.schedule`), sum each size up and recommend one: in the SLO
    mode the smallest that met it, else by the noise rule of :mod:`prefork.bench.rounds`
    (none with ``--address``; none when every size failed, exit status 1). Raises as
    :func:`run_once`."""
    for size in options.sizes:
        _check_open_files(options, size or 1)
    by_size: dict[int | None, list[dict[str, Any]]] = {size: [] for size in options.sizes}
    for number, (round_, size) in enumerate(schedule(options.sizes, options.rounds)):
        run = run_once(options, size, round_, progress, first=number == 0)
        by_size[size].append(figures(run, options.objectives))
    sizes = [summarize(rounds) | median_memory(rounds) for rounds in by_size.values()]
    model = cost_model(sizes)
    fit = workers_fit(model, options.memory_limit) if model and options.memory_limit else None
    outcome = Outcome(
        [table(sizes)],
        sizes,
        extra={"memory": model and {**model, "limit_bytes": options.memory_limit, "workers_fit": fit}},
    )
    memory = memory_table(sizes)
    if memory:
        outcome.lines += [
            "",
            "memory after the load, MiB (USS: its own pages; PSS: shared ones divided among their users):",
            memory,
        ]
    outcome.lines += notes(sizes) + memory_lines(model, options.memory_limit, fit)
    if _failures(sizes, outcome, slo=bool(options.objectives)):
        return outcome
    if options.objectives:
        _judge_slo(options, sizes, fit, outcome)
    elif options.address is None:
        cap, share = cpu_cap(sizes, usable_cpus())
        rec = recommend(sizes, open_loop=options.rate is not None, caps={"cpu": cap, "memory": fit})
        outcome.recommendation = rec
        unknown = next((s["compute_share_unknown"] for s in sizes if s.get("compute_share_unknown")), None)
        outcome.lines += recommendation_lines(rec, sizes, share, None if cap is not None else unknown)
    return outcome


def _judge_slo(options: Options, sizes: list[dict[str, Any]], fit: int | None, outcome: Outcome) -> None:
    """The SLO mode's verdict, into ``outcome``: the smallest pool size that met the SLO (with
    ``--address``: whether the server met it); exit status 3 when none did."""
    assert options.rate is not None
    if options.address is not None:
        size = sizes[0]
        slo = " and ".join(str(o) for o in options.objectives) + f" at {options.rate:g} req/s"
        met, rounds = size["slo_met_rounds"], size["rounds_run"]
        verdict = f"{'met' if size['slo_met'] else 'missed'} {slo} ({met} of {rounds} rounds met it)"
        outcome.lines.append(f"SLO: the server {verdict}")
        if not size["slo_met"]:
            outcome.status, outcome.error = EXIT_SLO_MISSED, f"the server {verdict}"
        return
    rec = recommend_slo(sizes, options.objectives, options.rate, fit)
    outcome.recommendation = rec
    if rec["workers"] is None:
        outcome.lines.append(f"recommendation: none: {rec['reason']}")
        outcome.status, outcome.error = EXIT_SLO_MISSED, rec["reason"]
    else:
        outcome.lines.append(f"recommendation: {pool_name(rec)}: {rec['reason']}")


def run_steps(options: Options, progress: ProgressLine) -> Outcome:
    """Run the step load once on each pool size of ``options`` (the server's own pool when
    none was given), sampling its workers; the time series and each step's summary for each
    (exit status 1 when every request of every size failed). Raises as :func:`run_once`."""
    for size in options.sizes:
        _check_open_files(options, size or 1)
    outcome = Outcome([], [])
    for number, size in enumerate(options.sizes):
        run = run_once(options, size, 0, progress, first=number == 0)
        found = figures(run)
        rows = series(run.load, options.steps, options.window, run.samples)
        steps = step_summaries(run.load, options.steps, options.window, run.samples, options.settle)
        found |= {"series": rows, "samples": run.samples, "steps": steps}
        outcome.runs.append(found)
        name = "the server's own pool" if size is None else pool_name(found)
        if number:
            outcome.lines.append("")
        outcome.lines += [f"step load on {name}:", step_table(rows), *step_lines(steps, options.settle)]
        if options.address is not None and options.scoreboard is None:
            outcome.lines.append("note: the workers were not sampled: give the server's --scoreboard-file")
    _failures(outcome.runs, outcome)
    return outcome
