"""The scoreboard: one slot of shared memory per worker, as Apache's.

The master creates it before forking the pool, so every worker inherits the same mapping. Each
worker writes only its own slot (state, requests served, start of the current request); the
master assigns and frees slots and reads them all, for request timeouts, recycling and stats.
On the request path a worker does two ``struct.pack_into`` calls on memory it already has: no
file I/O and no system call (``time.monotonic()`` is read from the vDSO on Linux).

By default the memory is anonymous (``mmap`` with ``MAP_SHARED``), so only the master and its
workers see it. With ``scoreboard_file`` it is backed by that file, and any process can read it
with :meth:`Scoreboard.open`, as Apache's ``ScoreBoardFile``.

Slot layout (64 bytes, native byte order)::

    0 pid (int32)   4 number (int32)   8 generation (int32)   12 state (uint8) + 3 pad
    16 request_started (double, time.monotonic(); 0 when not busy)
    24 requests (uint64)   32 denied (uint64)   40 booted_at (double, time.time(); 0 while starting)

A reader may see a slot while its worker writes it; each field is written whole, but two
fields may be from two moments (a stats view, not a lock).
"""

from __future__ import annotations

import contextlib
import enum
import functools
import mmap
import os
import struct
import time
from collections.abc import Callable
from typing import NamedTuple

from prefork.errors import PreforkError
from prefork.pidfile import create_beside

#: Bytes per worker slot, and of the header before the first slot.
SLOT_SIZE = 64
#: Fewest slots of a pool's scoreboard (:meth:`Scoreboard.for_pool`).
POOL_MIN_SLOTS = 1024
HEADER_SIZE = 64
MAGIC = b"PFSB"
VERSION = 1

_HEADER = struct.Struct("=4sHHI")  # magic, version, slot size, capacity
_STOPPING = struct.Struct("=B")  # header offset 12: the whole pool is stopping gracefully
_SLOT = struct.Struct("=iiiB3xdQQd")  # pid, number, generation, state, started, requests, denied, booted
_IDENTITY = struct.Struct("=iii")  # pid, number, generation (offset 0)
_PID = struct.Struct("=i")  # offset 0
_BUSY = struct.Struct("=B3xd")  # state, request_started (offset 12)
_DONE = struct.Struct("=B3xdQ")  # state, request_started, requests (offset 12)
_STATE = struct.Struct("=B")  # offset 12
_DENIED = struct.Struct("=Q")  # offset 32
_BOOTED = struct.Struct("=d")  # offset 40


class WorkerState(enum.IntEnum):
    """The state of a worker in its slot (EMPTY: the slot is free)."""

    EMPTY = 0
    STARTING = 1  # forked, not ready yet
    IDLE = 2  # waiting for a request
    BUSY = 3  # processing a request since request_started
    STOPPING = 4  # told to stop, or leaving by itself (recycling)


class WorkerStats(NamedTuple):
    """A copy of one worker's slot, read by :meth:`Scoreboard.read` or :meth:`Scoreboard.slots`.

    ``request_started`` is a ``time.monotonic()`` value (0.0 when not busy), ``booted_at`` a
    ``time.time()`` value (0.0 while starting); ``requests`` counts requests processed,
    ``denied`` connections refused by ``verify_request``.
    """

    slot: int
    pid: int
    number: int
    generation: int
    state: WorkerState
    requests: int
    denied: int
    request_started: float
    booted_at: float

    def busy_for(self, now: float | None = None) -> float:
        """Seconds this worker has been processing its current request (0.0 if not busy)."""
        if self.state is not WorkerState.BUSY or not self.request_started:
            return 0.0
        return max(0.0, (time.monotonic() if now is None else now) - self.request_started)


class Scoreboard:
    """Shared memory with one slot per worker. Created by the master before the first fork.

    ``capacity`` is the number of slots; ``path``, when given, backs the memory with a file
    created there, mode ``0o644`` less the umask: a new file of an unpredictable name
    (:func:`~prefork.pidfile.create_beside`) renamed onto ``path``, so an upgraded master never
    truncates the old master's scoreboard, and a symlink at ``path`` is replaced, not followed.
    It is removed by :meth:`close`. Raises OSError when the file cannot be created (then no
    temporary file is left behind).

    For the master: :meth:`assign`, :meth:`set_pid`, :meth:`release`, :meth:`read`,
    :meth:`close`. For a worker, on its own slot: :meth:`set_state`, :meth:`booted`,
    :meth:`request_started`, :meth:`request_finished`, :meth:`request_writers`,
    :meth:`count_denied`. For anyone:
    :meth:`slots`, and :meth:`open` for another process.
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
        size = HEADER_SIZE + capacity * SLOT_SIZE
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
        _HEADER.pack_into(self._memory, 0, MAGIC, VERSION, SLOT_SIZE, capacity)

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
        _STOPPING.pack_into(self._memory, _HEADER.size, 1)

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
        """A copy of slot number ``slot``."""
        pid, number, generation, state, started, requests, denied, booted = _SLOT.unpack_from(
            self._memory, _offset(slot)
        )
        return WorkerStats(
            slot, pid, number, generation, WorkerState(state), requests, denied, started, booted
        )

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
        number, or None when all ``capacity`` slots are in use. Runs in the master."""
        for slot in range(self.capacity):
            offset = _offset(slot)
            if self._memory[offset + 12] == WorkerState.EMPTY:
                _SLOT.pack_into(self._memory, offset, 0, number, generation, WorkerState.STARTING, 0, 0, 0, 0)
                return slot
        return None

    def set_pid(self, slot: int, pid: int) -> None:
        """Record the pid of the worker forked for ``slot``. Runs in the master."""
        _PID.pack_into(self._memory, _offset(slot), pid)

    def release(self, slot: int) -> None:
        """Free ``slot`` after its worker was reaped. Runs in the master."""
        self._memory[_offset(slot) : _offset(slot) + SLOT_SIZE] = bytes(SLOT_SIZE)

    # -- for a worker, on its own slot ------------------------------------------------------

    def set_state(self, slot: int, state: WorkerState) -> None:
        """Set the state of ``slot``. Runs in the worker."""
        _STATE.pack_into(self._memory, _offset(slot) + 12, state)

    def booted(self, slot: int, pid: int) -> None:
        """Mark ``slot`` IDLE, booted now, with ``pid``. Runs in the worker."""
        offset = _offset(slot)
        _PID.pack_into(self._memory, offset, pid)
        _BOOTED.pack_into(self._memory, offset + 40, time.time())
        _STATE.pack_into(self._memory, offset + 12, WorkerState.IDLE)

    def request_started(self, slot: int) -> None:
        """Mark ``slot`` BUSY since now. Runs in the worker, on the request path."""
        _BUSY.pack_into(self._memory, _offset(slot) + 12, WorkerState.BUSY, time.monotonic())

    def request_finished(self, slot: int, requests: int, state: WorkerState = WorkerState.IDLE) -> None:
        """Mark ``slot`` ``state`` (IDLE), not busy, having served ``requests`` requests in all.
        Runs in the worker, on the request path."""
        _DONE.pack_into(self._memory, _offset(slot) + 12, state, 0.0, requests)

    def request_writers(
        self, slot: int
    ) -> tuple[Callable[[float], None], Callable[[WorkerState, float, int], None]]:
        """The two writes of the request path for ``slot``, bound to its offset once: each is a
        ``functools.partial`` of ``struct.pack_into``, so a call runs no Python code (the sync
        worker makes both for every request). ``started(time.monotonic())`` writes what
        :meth:`request_started` does; ``finished(state, 0.0, requests)`` what
        :meth:`request_finished` does. Runs in the worker."""
        offset = _offset(slot) + 12
        return (
            functools.partial(_BUSY.pack_into, self._memory, offset, WorkerState.BUSY),
            functools.partial(_DONE.pack_into, self._memory, offset),
        )

    def request_progress(self, slot: int, requests: int, started: float) -> None:
        """Mark ``slot`` BUSY since ``started`` (a ``time.monotonic()`` value: the oldest
        request still in flight) with ``requests`` served so far. Runs in the worker (the
        ``thread`` worker, whose requests overlap)."""
        _DONE.pack_into(self._memory, _offset(slot) + 12, WorkerState.BUSY, started, requests)

    def count_denied(self, slot: int) -> None:
        """Add one connection refused by ``verify_request`` to ``slot``. Runs in the worker."""
        offset = _offset(slot) + 32
        (denied,) = _DENIED.unpack_from(self._memory, offset)
        _DENIED.pack_into(self._memory, offset, denied + 1)


def _offset(slot: int) -> int:
    return HEADER_SIZE + slot * SLOT_SIZE
