"""Measuring one run: the client processes, and what they and the server's processes did.

Everything here runs in the bench's parent process. :func:`measure` drives the load from
client processes (:class:`~prefork.bench.client_process.ClientProcess`), and samples the
workers (psutil, ``/proc/PID/schedstat``) and their request counts (the scoreboard) at the
start and the end of the measured window; :func:`sample_memory_of` reads the master's and
the workers' memory once the load stopped. The server under test is
:mod:`prefork.bench.server`'s. Nothing is killed by name: only the processes started here.

**How much of a request's time a worker computes** (``compute_share``, which caps the
recommendation: :func:`prefork.bench.rounds.cpu_cap`): the workers' CPU time over the time
their requests took (the scoreboard's busy seconds; without a scoreboard, the window) less
the time they waited for a CPU (the run-queue wait of ``/proc/PID/schedstat``). So measured,
a CPU-bound handler computes all of its time, even on a machine whose CPUs other processes
share, where it waits for a CPU part of the time. It is unknown (and the cap off,
:func:`share_unknown`) where the kernel keeps no ``schedstat``, and for workers that run
several threads (the ``thread`` worker class): their busy seconds overlap, and the
``schedstat`` of a process is its main thread's.
"""

from __future__ import annotations

import dataclasses
import math
import os
import selectors
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from prefork.bench.client_process import ClientProcess
from prefork.bench.errors import BenchError
from prefork.bench.lifecycle import held_signals
from prefork.bench.load import LoadResult, LoadSpec
from prefork.bench.memory import memory_figures, sample_memory
from prefork.bench.server import START_TIMEOUT

#: Seconds client processes get, beyond warmup + duration + request timeout, to report.
CLIENT_GRACE = 15.0
#: Seconds from telling the client processes to go to when they all start.
START_DELAY = 0.05


@dataclass(frozen=True)
class WorkerSample:
    """One worker process at one moment: CPU seconds (user + system), RSS bytes, seconds it
    waited on a run queue for a CPU (None: unknown), the requests it served and their
    seconds in all (from the scoreboard; None without one), and its threads."""

    pid: int
    cpu: float
    rss: int
    requests: int | None
    runq: float | None = None
    busy: float | None = None
    threads: int = 1


@dataclass
class WorkerLoad:
    """One worker's load over the measured window: ``requests`` served (None without a
    scoreboard), ``cpu`` seconds used (user + system), ``rss`` bytes at the end, seconds it
    waited for a CPU (``runq``; None: unknown) and its requests took (``busy``; None without
    a scoreboard), and its ``threads`` at the end."""

    pid: int
    requests: int | None
    cpu: float
    rss: int
    runq: float | None = 0.0
    busy: float | None = None
    threads: int = 1


@dataclass
class PoolRun:
    """What was measured for one run of one pool size: the merged client result, ``window``
    (seconds over which worker CPU was sampled), ``duration`` (seconds asked for),
    ``count_limited`` (a ``--requests`` limit was given), each worker's figures, the client
    processes, how busy the machine's CPUs were (percent of all of them), the load's
    concurrency and keepalive, the ``memory`` figures after the load
    (:func:`~prefork.bench.memory.memory_figures`), the ``round`` and, in the step-load
    mode, the pool's ``samples``. ``workers`` is None for a server of unknown pool size."""

    workers: int | None
    protocol: str
    address: str
    load: LoadResult
    window: float
    duration: float
    count_limited: bool
    per_worker: list[WorkerLoad] = field(default_factory=list)
    clients: int = 0
    machine_cpu: float = 0.0
    concurrency: int = 0
    keepalive: bool = False
    memory: dict[str, Any] = field(default_factory=dict)
    round: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)


def scoreboard_counts(path: str | None) -> dict[int, tuple[int, float]] | None:
    """(requests, busy seconds) so far of each worker pid, from the scoreboard file at
    ``path`` (None if there is none, or it cannot be read). Raises nothing."""
    if path is None or not os.path.exists(path):
        return None
    try:
        from prefork.scoreboard import Scoreboard

        board = Scoreboard.open(path)
    except (OSError, ValueError, ImportError):
        return None
    try:
        return {s.pid: (s.requests, s.busy_seconds) for s in board.slots() if s.pid > 0}
    finally:
        board.close()


def scoreboard_master(path: str | None) -> int | None:
    """The master's pid, from the scoreboard file at ``path`` (None if unknown). Raises nothing."""
    if path is None:
        return None
    try:
        from prefork.scoreboard import Scoreboard

        with Scoreboard.open(path) as board:
            return board.pool().master_pid or None
    except (OSError, ValueError, ImportError):
        return None


def run_queue_seconds(pid: int) -> float | None:
    """Seconds process ``pid`` (its main thread) has waited on a run queue for a CPU, from
    ``/proc/PID/schedstat`` (None where the kernel does not keep it). Raises nothing."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as stat:
            return int(stat.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def sample_workers(pids: list[int], scoreboard: str | None) -> dict[int, WorkerSample]:
    """CPU, RSS, run-queue wait and requests of each live worker in ``pids``, now, by pid; a
    worker gone is left out. ``scoreboard``: the server's scoreboard file, or None. Raises
    nothing."""
    counts = scoreboard_counts(scoreboard)
    found: dict[int, WorkerSample] = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                times = proc.cpu_times()
                rss = proc.memory_info().rss
                threads = proc.num_threads()
        except psutil.Error:
            continue
        requests, busy = (None, None) if counts is None or pid not in counts else counts[pid]
        cpu = times.user + times.system
        found[pid] = WorkerSample(pid, cpu, rss, requests, run_queue_seconds(pid), busy, threads)
    return found


def window_loads(before: dict[int, WorkerSample], after: dict[int, WorkerSample]) -> list[WorkerLoad]:
    """Each worker's load between the samples ``before`` and ``after`` (by pid, ascending);
    a worker born within the window counts from zero. Raises nothing."""
    loads = []
    for pid, end in sorted(after.items()):
        start = before.get(pid)
        requests, busy = end.requests, end.busy
        if requests is not None and start is not None and start.requests is not None:
            requests -= start.requests
        if busy is not None and start is not None and start.busy is not None:
            busy -= start.busy
        cpu = end.cpu - (start.cpu if start is not None else 0.0)
        waited = 0.0 if start is None else start.runq
        runq = None if end.runq is None or waited is None else max(0.0, end.runq - waited)
        loads.append(WorkerLoad(pid, requests, cpu, end.rss, runq, busy, end.threads))
    return loads


def share_unknown(loads: list[WorkerLoad]) -> str | None:
    """Why the compute share of ``loads`` cannot be told (see the module's docstring), as a
    clause to print; None when it can, or when the workers computed nothing. Raises nothing."""
    if sum(w.cpu for w in loads) <= 0:
        return None
    if any(w.threads > 1 for w in loads):
        return (
            "the workers run several threads (as the thread worker class does): their requests' "
            "times overlap, and /proc/PID/schedstat counts the main thread's waits only"
        )
    if any(w.runq is None for w in loads):
        return "/proc/PID/schedstat is missing: the time the workers waited for a CPU is unknown"
    return None


def compute_share(loads: list[WorkerLoad], window: float) -> float | None:
    """The share of a request's time the workers computed over ``window`` seconds (see the
    module's docstring), 0 to 1; None when they computed nothing or it cannot be told
    (:func:`share_unknown`). Raises nothing."""
    cpu = sum(w.cpu for w in loads)
    if cpu <= 0 or share_unknown(loads) is not None:
        return None
    computing = sum(max(w.cpu, (window if w.busy is None else w.busy) - (w.runq or 0.0)) for w in loads)
    return min(1.0, cpu / computing)


def sample_memory_of(master: int | None, workers: list[int]) -> dict[str, Any]:
    """The memory figures (:func:`~prefork.bench.memory.memory_figures`) of the ``master``
    pid and the ``workers``' pids, now: a few milliseconds per process, so call it once the
    load stopped. Raises nothing."""
    found = sample_memory(([master] if master is not None else []) + workers)
    main = found.pop(master) if master is not None and master in found else None
    return memory_figures(main, [found[pid] for pid in sorted(found)])


#: Called with (elapsed seconds, measured requests finished so far) while a run goes on.
Progress = Callable[[float, int], None]


@dataclass
class Measured:
    """One pool size's measurement: the merged client ``load``, ``window`` (seconds between the
    two samples of the workers), each worker's figures, and ``machine_cpu``: how busy all the
    machine's CPUs were over the window, in percent (server, clients and anything else)."""

    load: LoadResult
    window: float
    per_worker: list[WorkerLoad]
    machine_cpu: float


@dataclass(frozen=True)
class _Snapshot:
    at: float
    workers: dict[int, WorkerSample]
    busy: float  # machine-wide CPU seconds not idle, summed over CPUs
    total: float


def _snapshot(worker_pids: Callable[[], list[int]], scoreboard: str | None) -> _Snapshot:
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    total = sum(times)
    return _Snapshot(time.monotonic(), sample_workers(worker_pids(), scoreboard), total - idle, total)


def client_count(wanted: int, concurrency: int, rate: float | None) -> int:
    """How many client processes share a load: ``wanted``, but no more than the requests in
    flight (``concurrency``) and, open loop, than ``rate`` (the highest, requests per
    second, rounded up): a client of less than one request a second would only add a
    process. At least 1. Raises nothing."""
    count = min(wanted, concurrency)
    if rate is not None:
        count = min(count, math.ceil(rate))
    return max(1, count)


def measure(
    spec: LoadSpec,
    clients: int,
    worker_pids: Callable[[], list[int]],
    scoreboard: str | None,
    progress: Progress | None = None,
) -> Measured:
    """Drive ``spec`` from ``clients`` client processes (at most its concurrency), each with
    its share of the concurrency, the open loop's schedule and the request count; sample the
    workers (and the machine's CPU) at the start and the end of the measured window.

    Bounded: client processes that have not reported ``CLIENT_GRACE`` seconds after the run
    should have ended are killed, and BenchError is raised; so it is when a client process
    exits without a result (with the one line it wrote, if it wrote one). ``worker_pids``:
    called for the pids to sample; ``scoreboard``: the server's scoreboard file, or None;
    ``progress(elapsed s, completed)``: called while measuring. Raises OSError when a client
    process cannot be started. The client processes started are killed before it returns or
    raises (a KeyboardInterrupt included).
    """
    clients = max(1, min(clients, spec.concurrency))
    procs: list[ClientProcess] = []
    selector = selectors.DefaultSelector()
    try:
        for index in range(clients):
            procs.append(ClientProcess(_share(spec, index, clients)))
        for proc in procs:
            selector.register(proc.stdout, selectors.EVENT_READ, proc)
        deadline = time.monotonic() + START_TIMEOUT
        while not all(p.ready for p in procs):
            _pump(selector, deadline, "the client processes did not start")
        begin = time.monotonic() + START_DELAY
        for proc in procs:
            proc.go(begin)
        measure_start = begin + (0.0 if spec.steps else spec.warmup)
        measure_end = measure_start + spec.duration
        deadline = measure_end + spec.timeout + CLIENT_GRACE
        before: _Snapshot | None = None
        after: _Snapshot | None = None
        while selector.get_map():
            now = time.monotonic()
            if before is None and now >= measure_start:
                before = _snapshot(worker_pids, scoreboard)
            if before is not None and after is None and (now >= measure_end or all(p.result for p in procs)):
                after = _snapshot(worker_pids, scoreboard)
            wake = measure_start if before is None else measure_end if after is None else deadline
            _pump(selector, deadline, "the client processes did not finish", max(0.0, min(wake - now, 0.25)))
            if progress is not None and before is not None:
                progress(time.monotonic() - before.at, sum(p.completed for p in procs))
        before = before or _snapshot(worker_pids, scoreboard)  # all clients ended at once
        after = after or _snapshot(worker_pids, scoreboard)
        merged = LoadResult()
        for proc in procs:
            if proc.result is None:
                if proc.error:
                    raise BenchError(f"a client process failed: {proc.error}")
                raise BenchError(f"a client process exited with status {proc.proc.wait()} without a result")
            merged.merge(proc.result)
        total = after.total - before.total
        machine = 100 * (after.busy - before.busy) / total if total > 0 else 0.0
        window = max(1e-9, after.at - before.at)
        return Measured(merged, window, window_loads(before.workers, after.workers), machine)
    finally:
        with held_signals():  # a second Ctrl-C must not leave a client process running
            selector.close()
            for proc in procs:
                proc.kill()


def _pump(selector: selectors.BaseSelector, deadline: float, what: str, timeout: float = 0.25) -> None:
    """Read the client lines ready within ``timeout`` s; unregister clients at EOF."""
    if time.monotonic() > deadline:
        raise BenchError(f"{what} in time")
    for key, _ in selector.select(timeout):
        proc: ClientProcess = key.data
        if not proc.read_available():
            selector.unregister(key.fileobj)


def _share(spec: LoadSpec, index: int, clients: int) -> LoadSpec:
    """Client ``index``'s part of ``spec`` (of ``clients``): its concurrency and request
    count, and in open loop its turn in the schedule (``phase`` of ``stride``: every
    ``clients``-th request, from request ``index`` on)."""

    def part(total: int) -> int:
        return total // clients + (1 if index < total % clients else 0)

    requests = None if spec.requests is None else part(spec.requests)
    return dataclasses.replace(
        spec, concurrency=part(spec.concurrency), requests=requests, phase=index, stride=clients
    )
