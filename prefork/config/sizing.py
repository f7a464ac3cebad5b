"""The settings of the pool's size and memory: a dynamic pool's bounds (``min_workers``,
``max_workers``) and ``gc_freeze``. Listed in :data:`prefork.config.SETTINGS` with the others;
:func:`pool_bounds` checks them together."""

from __future__ import annotations

from prefork.config.convert import switch, workers_count
from prefork.config.setting import Setting

MIN_WORKERS: Setting[int | None] = Setting(
    name="min_workers",
    section="Pool",
    default=None,
    convert=workers_count,
    flags=("--min-workers",),
    metavar="N",
    help=(
        "The fewest workers of a dynamic pool (one with max_workers): it shrinks to this when "
        "idle, one worker per 5 s. Default (None): 1."
    ),
)
MAX_WORKERS: Setting[int | None] = Setting(
    name="max_workers",
    section="Pool",
    default=None,
    convert=workers_count,
    flags=("--max-workers",),
    metavar="N",
    help=(
        "Make the pool dynamic, up to N workers: it starts with 'workers' (within the bounds) "
        "and grows when no worker is idle or connections wait in the listen queue, forking 1, "
        "2, 4 ... up to 32 workers a second, as Apache's prefork MPM. Default (None): a fixed "
        "pool of 'workers'."
    ),
)
GC_FREEZE: Setting[bool] = Setting(
    name="gc_freeze",
    section="Pool",
    default=True,
    convert=switch,
    flags=("--gc-freeze",),
    metavar="on|off",
    help=(
        "Keep the memory the master imported shared with the workers, as CPython advises for "
        "fork without exec: gc.disable() while --preload imports TARGET, gc.freeze() before "
        "each fork, gc.enable() in the worker. off: the collector is left alone."
    ),
)


def pool_bounds(workers: int, min_workers: int | None, max_workers: int | None) -> tuple[int, int, int]:
    """The pool's starting size and bounds: ``(size, low, high)``. A fixed pool (no
    ``max_workers``) is ``(workers, workers, workers)``; a dynamic pool starts with
    ``workers`` brought within ``min_workers`` (default 1) .. ``max_workers``. Raises
    ValueError when ``min_workers`` is over ``max_workers``, or given without it."""
    if max_workers is None:
        if min_workers is not None:
            raise ValueError("min_workers needs max_workers (a dynamic pool)")
        return workers, workers, workers
    low = 1 if min_workers is None else min_workers
    if low > max_workers:
        raise ValueError(f"min_workers ({low}) is over max_workers ({max_workers})")
    return min(max(workers, low), max_workers), low, max_workers
