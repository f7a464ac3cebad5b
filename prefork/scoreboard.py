"""The scoreboard: one slot of shared memory per worker, as Apache's.

The master creates it before forking, so every worker inherits the mapping. Each worker
writes only its own slot; on the request path that is two stores and one histogram increment
into memory it already has (no file I/O, no system call). The master assigns and frees slots
(finding free ones in its own record, :meth:`Scoreboard.assign`, never from a state a worker
writes) and reads them all, for request timeouts, recycling and stats. Every store copies the
packed bytes in (``memory[a:b] = S.pack(...)``), never with ``struct.pack_into``, which zeroes
its target first: a reader would see a live slot EMPTY, or its counts 0, for a moment.

The master keeps the pool's figures in the header, and in a totals slot the counts of exited
workers: reaping a worker, it folds its counters into the totals (:meth:`Scoreboard.retire`),
so totals plus live slots only grow. A fold is bracketed by a sequence number, odd while
folding (a seqlock): :meth:`Scoreboard.consistent` reads again when a fold ran meanwhile.

The memory is anonymous (``MAP_SHARED``), or backed by ``scoreboard_file`` for other
processes to read with :meth:`Scoreboard.open`, as Apache's ``ScoreBoardFile``.

Header layout (256 bytes, native byte order)::

    0 magic "PFSB"   4 version (uint16)   6 slot size (uint16)   8 capacity (uint32)
    12 pool stopping (uint8)   16 fold sequence (uint64, odd while the master folds)
    24 master pid (int32)   28 generation (int32)   32 workers wanted (int32)
    40 master started_at (double, time.time())
    48 listen queue length (int64, -1: unknown)   56 listen queue limit (int64, -1: unknown)
    64 restarts by cause (7 x uint64, in the order of RESTART_CAUSES)   120 boot failures (uint64)
    128 a dynamic pool's min_workers, max_workers (2 x int32; 0: a fixed pool)

Slot layout (256 bytes, native byte order; the totals slot has the same layout)::

    0 pid (int32)   4 number (int32)   8 generation (int32)   12 state (uint8) + 3 pad
    16 request_started (double, time.monotonic(); 0 when not busy)
    24 requests (uint64)   32 busy_seconds (double: the sum of request durations)
    40 denied (uint64)   48 booted_at (double, time.time(); 0 while starting)   56 errors (uint64)
    64 request durations: one uint64 count per bucket of DURATION_BUCKETS, then +Inf (12 x 8)
    160 TLS handshakes failed (uint64)   168 connections refused for their PROXY header (uint64)

A reader may see a slot while its worker writes it; each field is written whole, but two
fields may be from two moments (a stats view, not a lock).

The records read out of it (:class:`~prefork.figures.WorkerStats`, :class:`~prefork.figures.PoolFigures`)
are in :mod:`prefork.figures`.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import time
from collections.abc import Callable
from typing import TypeVar

from prefork.errors import PreforkError
from prefork.figures import DURATION_BUCKETS, RESTART_CAUSES, PoolFigures, WorkerState, WorkerStats
from prefork.pidfile import create_beside

#: Bytes per worker slot, and of the header before the totals slot.
SLOT_SIZE = 256
#: Fewest slots of a pool's scoreboard (:meth:`Scoreboard.for_pool`).
POOL_MIN_SLOTS = 1024
HEADER_SIZE = 256
T = TypeVar("T")
_FIRST_SLOT = HEADER_SIZE + SLOT_SIZE  # the totals slot comes first
MAGIC = b"PFSB"
VERSION = 2

_HEADER = struct.Struct("=4sHHI")  # magic, version, slot size, capacity
_STOPPING = struct.Struct("=B")  # header offset 12: the whole pool is stopping gracefully
_U64 = struct.Struct("=Q")
_SEQUENCE = 16  # header offset of the fold sequence number
_POOL = struct.Struct("=iii4xd")  # offset 24: master pid, generation, workers wanted, started_at
_QUEUE = struct.Struct("=qq")  # offset 48: listen queue length and limit
_RESTARTS = 64  # header offset of the restart counts
_BOOT_FAILURES = _RESTARTS + 8 * len(RESTART_CAUSES)
_BOUNDS = struct.Struct("=ii")  # offset 128: a dynamic pool's min and max workers (0: fixed)
#: At slot offset 24: requests, busy_seconds, denied, (booted_at skipped), errors, durations.
_COUNTERS = struct.Struct(f"=QdQ8xQ{len(DURATION_BUCKETS) + 1}QQQ")
_SLOT = struct.Struct(f"=iiiB3xdQdQdQ{len(DURATION_BUCKETS) + 1}QQQ")
_PID = struct.Struct("=i")  # offset 0
_IDENTITY = struct.Struct("=iiiB")  # pid, number, generation, state (offset 0)
_STARTED = struct.Struct("=d")  # request_started (offset 16: one aligned 8-byte store)
_TALLY = struct.Struct("=Qd")  # requests, busy_seconds (offset 24)
_DONE = struct.Struct("=B3xdQd")  # state, request_started, requests, busy_seconds (offset 12)
_DENIED = 40
_BOOTED = struct.Struct("=d")  # offset 48
_ERRORS = 56
_DURATIONS = 64
_TLS_FAILURES = _DURATIONS + 8 * (len(DURATION_BUCKETS) + 1)  # then PROXY refusals


class Scoreboard:
    """Shared memory with one slot per worker. Created by the master before the first fork.

    ``capacity`` is the number of slots; ``path``, when given, backs the memory with a file
    created there, mode ``0o644`` less the umask: a new file of an unpredictable name
    (:func:`~prefork.pidfile.create_beside`) renamed onto ``path``, so an upgraded master never
    truncates the old master's scoreboard, and a symlink at ``path`` is replaced, not followed.
    It is removed by :meth:`close`. Raises OSError when the file cannot be created (then no
    temporary file is left behind).

    Each method says which process calls it: the master (:meth:`assign`, :meth:`retire`, the
    pool's figures), a worker on its own slot, or any reader (:meth:`read`, :meth:`slots`,
    :meth:`pool`, :meth:`consistent`; :meth:`open` in another process).
    """

    def __init__(self, capacity: int, path: str | None = None, *, _readonly_fd: int = -1) -> None:
        self.path = path
        self._inode: tuple[int, int] | None = None
        if _readonly_fd >= 0:  # Scoreboard.open()
            self._memory = mmap.mmap(_readonly_fd, 0, access=mmap.ACCESS_READ)
            magic, version, slot_size, capacity = _HEADER.unpack_from(self._memory)
            if magic != MAGIC or version != VERSION or slot_size != SLOT_SIZE:
                self._memory.close()
                raise ValueError(f"{path} is not a prefork scoreboard (version {VERSION})")
            self.capacity = capacity
            return
        self.capacity = capacity
        size = _FIRST_SLOT + capacity * SLOT_SIZE
        if path is None:
            self._memory = mmap.mmap(-1, size, flags=mmap.MAP_SHARED)
        else:
            # A new file of an unpredictable name (O_EXCL, O_NOFOLLOW), renamed onto path:
            # a symlink planted at path or at a temporary name is replaced, never followed.
            fd, temporary = create_beside(path, 0o644)
            try:
                os.ftruncate(fd, size)
                self._memory = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
                try:
                    status = os.fstat(fd)
                    os.replace(temporary, path)
                except BaseException:
                    self._memory.close()
                    raise
                self._inode = (status.st_dev, status.st_ino)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
            finally:
                os.close(fd)
        _store(self._memory, 0, _HEADER, MAGIC, VERSION, SLOT_SIZE, capacity)
        _store(self._memory, 48, _QUEUE, -1, -1)
        self._taken: set[int] = set()  # the master's record of the slots in use

    @classmethod
    def for_pool(cls, workers: int, path: str | None = None) -> Scoreboard:
        """A new scoreboard for a pool of ``workers``: :data:`POOL_MIN_SLOTS` slots, or 4 per
        worker if more (a reload doubles the pool for a while; TTIN grows it up to a quarter
        of the slots). ``path`` as for the constructor. Runs in the master. Raises
        :class:`~prefork.errors.PreforkError` when the file cannot be created."""
        try:
            return cls(max(POOL_MIN_SLOTS, 4 * workers), path)
        except OSError as exc:
            raise PreforkError(f"cannot create scoreboard file {path}: {exc.strerror or exc}") from None

    @classmethod
    def open(cls, path: str) -> Scoreboard:
        """Map the scoreboard file of a running master (its ``scoreboard_file``) read-only.

        Raises OSError if it cannot be opened, ValueError if it is not a scoreboard.
        """
        fd = os.open(path, os.O_RDONLY)
        try:
            return cls(0, path, _readonly_fd=fd)
        finally:
            os.close(fd)

    def set_pool_stopping(self) -> None:
        """Say that the whole pool is stopping gracefully (not one worker retiring): a worker
        told to stop then serves what is queued before it exits. Runs in the master."""
        _store(self._memory, _HEADER.size, _STOPPING, 1)

    def pool_stopping(self) -> bool:
        """Whether the master said the whole pool is stopping gracefully."""
        return bool(_STOPPING.unpack_from(self._memory, _HEADER.size)[0])

    def detach(self) -> None:
        """From now on, write to a private copy instead of the shared slots: for a process
        that must not touch the pool's scoreboard (a process forked by a handler, which
        shares the worker's mapping). Runs in that process."""
        self._memory = mmap.mmap(-1, len(self._memory), flags=mmap.MAP_PRIVATE)
        self._inode = None

    def close(self) -> None:
        """Unmap the memory; the creating master also removes its file (if still its own)."""
        if self._inode is not None and self.path is not None:
            try:
                status = os.stat(self.path)
                if (status.st_dev, status.st_ino) == self._inode:
                    os.unlink(self.path)
            except OSError:
                pass
            self._inode = None
        self._memory.close()

    def __enter__(self) -> Scoreboard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reading ----------------------------------------------------------------------------

    def read(self, slot: int) -> WorkerStats:
        """A copy of slot number ``slot`` (-1: the totals slot, the counts of exited workers)."""
        fields = _SLOT.unpack_from(self._memory, _offset(slot))
        pid, number, generation, state, started, requests, busy, denied, booted, errors = fields[:10]
        state = WorkerState(state)
        durations, (tls_failures, proxy_refused) = fields[10:-2], fields[-2:]
        return WorkerStats(
            slot,
            pid,
            number,
            generation,
            state,
            requests,
            denied,
            started,
            booted,
            errors,
            busy,
            durations,
            tls_failures,
            proxy_refused,
        )

    def pool(self) -> PoolFigures:
        """The figures the master keeps in the header."""
        pid, generation, wanted, started_at = _POOL.unpack_from(self._memory, 24)
        length, limit = _QUEUE.unpack_from(self._memory, 48)
        restarts = struct.unpack_from(f"={len(RESTART_CAUSES)}Q", self._memory, _RESTARTS)
        (boot_failures,) = _U64.unpack_from(self._memory, _BOOT_FAILURES)
        low, high = _BOUNDS.unpack_from(self._memory, 128)
        return PoolFigures(
            pid,
            generation,
            wanted,
            started_at,
            None if length < 0 else length,
            None if limit < 0 else limit,
            dict(zip(RESTART_CAUSES, restarts, strict=True)),
            boot_failures,
            low or None,
            high or None,
        )

    def consistent(self, read: Callable[[], T]) -> T:
        """``read()``, called again while the master folded a worker into the totals
        meanwhile (a seqlock's reader), at most 100 times; returns its last result."""
        result = read()
        for _ in range(100):
            (before,) = _U64.unpack_from(self._memory, _SEQUENCE)
            if before % 2 == 0:
                result = read()
                if _U64.unpack_from(self._memory, _SEQUENCE)[0] == before:
                    break
            time.sleep(0.0001)
        return result

    def state(self, slot: int) -> WorkerState:
        """The state of slot number ``slot`` (one byte read)."""
        return WorkerState(self._memory[_offset(slot) + 12])

    def slots(self) -> list[WorkerStats]:
        """Copies of every slot in use, by slot number."""
        found = []
        for slot in range(self.capacity):
            if self._memory[_offset(slot) + 12] != WorkerState.EMPTY:
                found.append(self.read(slot))
        return found

    # -- for the master ---------------------------------------------------------------------

    def assign(self, number: int, generation: int) -> int | None:
        """Take a free slot for a worker about to be forked (state STARTING); return its
        number, or None when all ``capacity`` slots are in use. Free means not taken in the
        master's own record (never read from the shared state, which workers write). Runs in
        the master."""
        for slot in range(self.capacity):
            if slot not in self._taken:
                self._taken.add(slot)
                offset = _offset(slot)
                self._memory[offset : offset + SLOT_SIZE] = bytes(SLOT_SIZE)
                _store(self._memory, offset, _IDENTITY, 0, number, generation, WorkerState.STARTING)
                return slot
        return None

    def set_pid(self, slot: int, pid: int) -> None:
        """Record the pid of the worker forked for ``slot``. Runs in the master."""
        _store(self._memory, _offset(slot), _PID, pid)

    def release(self, slot: int) -> None:
        """Free ``slot`` after its worker was reaped. Runs in the master."""
        self._taken.discard(slot)
        self._memory[_offset(slot) : _offset(slot) + SLOT_SIZE] = bytes(SLOT_SIZE)

    def retire(self, slot: int, also: Callable[[int], None] | None = None) -> WorkerStats:
        """Fold the counters of ``slot``, whose worker was reaped, into the totals slot, call
        ``also(slot)`` (e.g. fold its application metrics) in the same fold, free the slot and
        return what it held. Readers using :meth:`consistent` see the counts either in the slot
        or in the totals, never both. Runs in the master."""
        stats = self.read(slot)
        memory, totals = self._memory, _offset(-1) + 24
        (sequence,) = _U64.unpack_from(memory, _SEQUENCE)
        _store(memory, _SEQUENCE, _U64, sequence + 1)
        try:
            old = _COUNTERS.unpack_from(memory, totals)
            new = _COUNTERS.unpack_from(memory, _offset(slot) + 24)
            _store(memory, totals, _COUNTERS, *(a + b for a, b in zip(old, new, strict=True)))
            if also is not None:
                also(slot)
            self.release(slot)
        finally:
            _store(memory, _SEQUENCE, _U64, sequence + 2)
        return stats

    def set_pool(self, pid: int, generation: int, wanted: int, started_at: float) -> None:
        """Record the master's ``pid``, the pool's ``generation`` and ``wanted`` size, and the
        master's start (``time.time()``, seconds). Runs in the master."""
        _store(self._memory, 24, _POOL, pid, generation, wanted, started_at)

    def set_bounds(self, low: int | None, high: int | None) -> None:
        """Record a dynamic pool's bounds, ``min_workers`` .. ``max_workers`` (None: a fixed
        pool). Runs in the master."""
        _store(self._memory, 128, _BOUNDS, low or 0, high or 0)

    def count_restart(self, cause: str) -> None:
        """Count a worker that left the pool for ``cause``, one of :data:`RESTART_CAUSES`
        (ValueError otherwise). Runs in the master."""
        self._add_one(_RESTARTS + 8 * RESTART_CAUSES.index(cause))

    def count_boot_failure(self) -> None:
        """Count a worker that exited before it was ready. Runs in the master."""
        self._add_one(_BOOT_FAILURES)

    def set_listen_queue(self, length: int | None, limit: int | None) -> None:
        """Record the listen queue's ``length`` and ``limit`` (connections; None: unknown).
        Runs in the master."""
        _store(self._memory, 48, _QUEUE, -1 if length is None else length, -1 if limit is None else limit)

    # -- for a worker, on its own slot ------------------------------------------------------

    def set_state(self, slot: int, state: WorkerState) -> None:
        """Set the state of ``slot``. Runs in the worker."""
        self._memory[_offset(slot) + 12] = state

    def booted(self, slot: int, pid: int) -> None:
        """Mark ``slot`` IDLE, booted now, with ``pid``. Runs in the worker."""
        offset = _offset(slot)
        _store(self._memory, offset, _PID, pid)
        _store(self._memory, offset + 48, _BOOTED, time.time())
        self._memory[offset + 12] = WorkerState.IDLE

    def request_started(self, slot: int) -> None:
        """Mark ``slot`` BUSY since now. Runs in the worker, on the request path."""
        offset = _offset(slot)
        _store(self._memory, offset + 16, _STARTED, time.monotonic())  # the time, then the state:
        self._memory[offset + 12] = WorkerState.BUSY  # a reader never sees BUSY with a torn time

    def request_finished(
        self, slot: int, requests: int, state: WorkerState = WorkerState.IDLE, busy_seconds: float = 0.0
    ) -> None:
        """Mark ``slot`` ``state`` (IDLE), not busy, having served ``requests`` requests in all,
        busy ``busy_seconds`` seconds in all. Runs in the worker, on the request path."""
        _store(self._memory, _offset(slot) + 12, _DONE, state, 0.0, requests, busy_seconds)

    def request_stores(self, slot: int) -> tuple[mmap.mmap, slice, int, slice]:
        """Where the request path's writes of ``slot`` go, for a worker that makes them inline
        (no call but the packing): ``(memory, started_at, state_at, done_at)``; a request
        starts with ``memory[started_at] = pack_started(now)`` then ``memory[state_at] =
        WorkerState.BUSY`` (in that order: the time is one aligned 8-byte store, written
        before the state says BUSY), and ends with ``memory[done_at] = pack_done(state, 0.0,
        requests, busy_seconds)``. Runs in the worker; after :meth:`detach`, ask again."""
        offset = _offset(slot) + 12
        return self._memory, slice(offset + 4, offset + 12), offset, slice(offset, offset + _DONE.size)

    def durations(self, slot: int) -> memoryview:
        """The request-duration counts of ``slot`` as a writable memoryview of uint64, one per
        bucket of :data:`DURATION_BUCKETS` then +Inf: the worker adds one with
        ``view[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1`` (a bucket's bound is
        inclusive, as Prometheus' ``le``). Runs in the worker. The view must be released
        before :meth:`close`; :meth:`detach` makes earlier views private too."""
        offset = _offset(slot) + _DURATIONS
        return memoryview(self._memory)[offset : offset + 8 * (len(DURATION_BUCKETS) + 1)].cast("Q")

    def request_progress(self, slot: int, requests: int, started: float, busy_seconds: float = 0.0) -> None:
        """Mark ``slot`` BUSY since ``started`` (a ``time.monotonic()`` value: the oldest
        request still in flight) with ``requests`` served so far, busy ``busy_seconds`` in
        all. Runs in the worker (the ``thread`` worker, whose requests overlap)."""
        offset = _offset(slot)
        _store(self._memory, offset + 16, _STARTED, started)  # as request_started: time, then state
        self._memory[offset + 12] = WorkerState.BUSY
        _store(self._memory, offset + 24, _TALLY, requests, busy_seconds)

    def count_denied(self, slot: int) -> None:
        """Add one connection refused by ``verify_request`` to ``slot``. Runs in the worker."""
        self._add_one(_offset(slot) + _DENIED)

    def count_tls_failure(self, slot: int) -> None:
        """Add one failed TLS handshake to ``slot``. Runs in the worker."""
        self._add_one(_offset(slot) + _TLS_FAILURES)

    def count_proxy_refused(self, slot: int) -> None:
        """Add one connection closed for its PROXY header (missing, malformed, or from a peer
        not allowed to send one) to ``slot``. Runs in the worker."""
        self._add_one(_offset(slot) + _TLS_FAILURES + 8)

    def count_error(self, slot: int) -> None:
        """Add one request whose processing raised (a ``handle_error`` call) to ``slot``.
        Runs in the worker."""
        self._add_one(_offset(slot) + _ERRORS)

    def _add_one(self, offset: int) -> None:
        _store(self._memory, offset, _U64, _U64.unpack_from(self._memory, offset)[0] + 1)


def _offset(slot: int) -> int:
    return _FIRST_SLOT + slot * SLOT_SIZE


#: The request path's packings (see :meth:`Scoreboard.request_stores`): the start ``now``;
#: ``state``, not busy, ``requests`` and ``busy_seconds`` in all.
pack_started: Callable[[float], bytes] = _STARTED.pack
pack_done: Callable[[WorkerState, float, int, float], bytes] = _DONE.pack


def _store(memory: mmap.mmap, offset: int, packer: struct.Struct, *values: object) -> None:
    """Copy ``packer.pack(*values)`` into ``memory`` at ``offset`` (no zeroing first, unlike
    ``struct.pack_into``: a reader sees each field's old value or its new one)."""
    memory[offset : offset + packer.size] = packer.pack(*values)
