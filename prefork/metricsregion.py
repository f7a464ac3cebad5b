"""The shared memory behind :mod:`prefork.metrics`: one area per worker slot, plus the retired area.

The master creates a :class:`MetricsRegion` before it forks (anonymous ``mmap`` with
``MAP_SHARED``: only the master, its workers and its exporter see it; no file). Each worker
writes only its own slot's area, the master only the retired area (and zeroes slots), the
exporter only reads: no lock across processes. Layout (native byte order)::

    region header (64 bytes): 0 magic "PFMR"  4 version (uint16)  8 capacity  12 slot values
        16 slot key bytes  20 retired values  24 retired key bytes  32 fold sequence (uint32 each)
    retired area, then slot 0 .. capacity-1 areas, each:
        area header (64 bytes): 0 values used  4 key bytes used (uint32)
        values: float64 array (SLOT_VALUES; the retired area RETIRED_FACTOR times more)
        keys: records, each a uint32 length + compact JSON
              [name, type, gauge mode, label names, label values, buckets, help, value index, count]

A series (one metric and label values) is registered on its first use in a worker: its record
and zeroed values are written, then "values used", then "key bytes used" last, so a reader
sees only whole records. Help is stored in the first record of a family in each area only.
A counter or gauge series has one value; a histogram ``len(buckets) + 1`` bucket counts (not
cumulative, the last for +Inf) then the sum. Values are float64: counts are exact up to 2**53.

Capacity per slot: :data:`SLOT_VALUES` values (2048: e.g. 140 histogram series with the 14
default buckets) and :data:`SLOT_KEY_BYTES` of records (16 KiB, about 150 series with two
labels); the retired area holds :data:`RETIRED_FACTOR` (8)
times more. A full slot registers no more series (their updates are no-ops, logged once per
process); a full retired area drops what it cannot fold (logged once). Memory: 32 KiB of
address space per slot, touched only where written.

The master folds a reaped worker's slot (:meth:`MetricsRegion.fold`): counters and histograms
are added into the retired area, then the slot is zeroed for its next worker. Folding bumps a
sequence number (odd while folding) that :meth:`MetricsRegion.collect` checks, retrying, so a
reader never counts a folded slot twice or not at all.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import mmap
import struct
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

log = logging.getLogger("prefork")

#: float64 values of one worker slot (a counter or gauge series takes 1, a histogram buckets + 2).
SLOT_VALUES = 2048
#: Bytes of series records of one worker slot.
SLOT_KEY_BYTES = 16384
#: How many times a slot's capacity the retired area (the folded exited workers) has.
RETIRED_FACTOR = 8
#: How gauge values of the live workers are combined (:class:`prefork.metrics.Gauge`).
GAUGE_MODES = ("sum", "max", "min", "all")
MAGIC = b"PFMR"
VERSION = 1
HEADER_SIZE = AREA_HEADER_SIZE = 64

_HEADER = struct.Struct("=4sH2xIIIII")  # magic, version, capacity, slot values/key bytes, retired
_U32 = struct.Struct("=I")
_USED = struct.Struct("=II")  # area header: values used, key bytes used
_SEQUENCE_OFFSET = 32
_READ_TRIES = 100  # collect(): a fold takes microseconds; 100 tries of 1 ms is a stuck master
_READ_PAUSE = 0.001

#: What identifies a series: (name, type, gauge mode, label names, label values, buckets).
SeriesKey = tuple[str, str, str, tuple[str, ...], tuple[str, ...], tuple[float, ...]]


class Sample(NamedTuple):
    """One sample as in the Prometheus text format: ``name`` with its suffix (``_total``,
    ``_bucket``, ``_count``, ``_sum``), ``labels``, and ``value``."""

    name: str
    labels: dict[str, str]
    value: float


class Family(NamedTuple):
    """A metric family: ``name`` (without suffix), ``type`` ("counter", "gauge" or
    "histogram"), ``help`` text, and its ``samples``."""

    name: str
    type: str
    help: str
    samples: list[Sample]


class WriterArea:
    """One area of the region (a worker slot, or the retired area), as its one writing process
    sees it: where the values and records are, and the index of the series it has registered.
    Built by :meth:`MetricsRegion.writer` (worker) or by the region itself (retired, master)."""

    def __init__(self, region: MetricsRegion, offset: int, values: int, key_bytes: int) -> None:
        self.memory, self.doubles = region._memory, region._doubles
        self.offset, self.values, self.key_bytes = offset, values, key_bytes
        self.base = (offset + AREA_HEADER_SIZE) // 8  # index of this area's value 0 in doubles
        self.keys = offset + AREA_HEADER_SIZE + 8 * values
        self.series: dict[SeriesKey, int] = {}  # key -> index in doubles; -1: not recorded (full)
        self.families: set[str] = set()  # whose help is written here
        self.values_used = self.key_used = 0

    def records(self) -> Iterator[tuple[SeriesKey, str, int, int]]:
        """(key, help, index in the region's doubles, count) of each published record. Stops at
        a record that does not parse (only while the master zeroes the area)."""
        (key_used,) = _U32.unpack_from(self.memory, self.offset + 4)
        position, end = self.keys, self.keys + min(key_used, self.key_bytes)
        while position + 4 <= end:
            (length,) = _U32.unpack_from(self.memory, position)
            if position + 4 + length > end:
                return
            try:
                name, kind, mode, names, values, buckets, help_, index, count = json.loads(
                    self.memory[position + 4 : position + 4 + length]
                )
                key = (str(name), str(kind), str(mode), tuple(names), tuple(values), tuple(buckets))
            except (ValueError, TypeError):
                return
            valid = isinstance(index, int) and isinstance(count, int) and 0 <= index <= self.values - count
            if not valid or count < 1:
                return
            yield key, str(help_), self.base + index, count
            position += 4 + length

    def adopt(self) -> None:
        """Take the records already in the area as this process's (normally none)."""
        self.values_used, self.key_used = _USED.unpack_from(self.memory, self.offset)
        for key, _help, index, _count in self.records():
            self.series[key] = index
            self.families.add(key[0])

    def register(self, key: SeriesKey, help_: str, count: int) -> int:
        """The index in the region's doubles of series ``key`` (``count`` values), registered
        on first use: zeroed values and record written, then published. -1 when the area has
        no room (it stays -1 in this process). Runs in the area's one writing process, under its
        lock."""
        index = self.series.get(key)
        if index is not None:
            return index
        text = help_ if key[0] not in self.families else ""
        record = json.dumps([*key, text, self.values_used, count], separators=(",", ":")).encode()
        if self.values_used + count > self.values or self.key_used + 4 + len(record) > self.key_bytes:
            self.series[key] = -1
            return -1
        index = self.base + self.values_used
        self.doubles[index : index + count] = memoryview(bytes(8 * count)).cast("d")
        position = self.keys + self.key_used
        _U32.pack_into(self.memory, position, len(record))
        self.memory[position + 4 : position + 4 + len(record)] = record
        self.values_used += count
        self.key_used += 4 + len(record)
        _U32.pack_into(self.memory, self.offset, self.values_used)
        _U32.pack_into(self.memory, self.offset + 4, self.key_used)  # publish: last
        self.series[key] = index
        self.families.add(key[0])
        return index

    def reset(self) -> None:
        """Zero the used part of the area, unpublishing its records first."""
        values_used, key_used = _USED.unpack_from(self.memory, self.offset)
        _USED.pack_into(self.memory, self.offset, 0, 0)
        start, values_used, key_used = (
            8 * self.base,
            min(values_used, self.values),
            min(key_used, self.key_bytes),
        )
        self.memory[start : start + 8 * values_used] = bytes(8 * values_used)
        self.memory[self.keys : self.keys + key_used] = bytes(key_used)
        self.series.clear()
        self.families.clear()
        self.values_used = self.key_used = 0


class MetricsRegion:
    """The shared memory of the application metrics: ``capacity`` worker slots (numbered as
    the scoreboard's, 0 to ``capacity - 1``) and the retired area. Created by the master before
    it forks; raises ValueError for a capacity or size below 1, OSError when it cannot map.

    ``slot_values`` (float64 values) and ``slot_key_bytes`` (bytes of records) size each slot;
    the retired area is ``retired_factor`` times larger.

    For the master: :meth:`fold`, :meth:`reset`, :meth:`close`. For a worker:
    :meth:`writer`, through :func:`prefork.metrics.attach`. For the exporter (or anyone):
    :meth:`collect`.
    """

    def __init__(
        self,
        capacity: int,
        *,
        slot_values: int = SLOT_VALUES,
        slot_key_bytes: int = SLOT_KEY_BYTES,
        retired_factor: int = RETIRED_FACTOR,
    ) -> None:
        if min(capacity, slot_values, slot_key_bytes, retired_factor) < 1:
            raise ValueError("metrics region capacity, values, key bytes and retired factor must be >= 1")
        self.capacity = capacity
        self.slot_values, self.slot_key_bytes = slot_values, slot_key_bytes
        retired_values, retired_keys = slot_values * retired_factor, slot_key_bytes * retired_factor
        self._slot_size = _area_size(slot_values, slot_key_bytes)
        self._slots_offset = HEADER_SIZE + _area_size(retired_values, retired_keys)
        self._memory = mmap.mmap(-1, self._slots_offset + capacity * self._slot_size, flags=mmap.MAP_SHARED)
        self._doubles = memoryview(self._memory).cast("d")
        _HEADER.pack_into(
            self._memory,
            0,
            MAGIC,
            VERSION,
            capacity,
            slot_values,
            slot_key_bytes,
            retired_values,
            retired_keys,
        )
        self._retired = WriterArea(self, HEADER_SIZE, retired_values, retired_keys)
        self._retired_full_logged = False

    def close(self) -> None:
        """Unmap the memory. Runs in the master (or any process done with it); a process
        attached to this region must :func:`~prefork.metrics.detach` first."""
        self._doubles.release()
        self._memory.close()

    def __enter__(self) -> MetricsRegion:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def writer(self, slot: int) -> WriterArea:
        """The area of ``slot`` for the one process writing it, taking the records already
        there. Raises ValueError when ``slot`` is out of range."""
        area = self._area(slot)
        area.adopt()
        return area

    def _area(self, slot: int) -> WriterArea:
        if not 0 <= slot < self.capacity:
            raise ValueError(f"metrics slot {slot} out of range 0..{self.capacity - 1}")
        offset = self._slots_offset + slot * self._slot_size
        return WriterArea(self, offset, self.slot_values, self.slot_key_bytes)

    # -- for the master ---------------------------------------------------------------------

    def fold(self, slot: int) -> None:
        """Add the counters and histograms of ``slot`` into the retired area (by series key;
        new series appended), then zero the slot for its next worker. Gauges are dropped. Runs
        in the master, after the slot's worker was reaped and before the slot is reused. When
        the retired area is full, the series that do not fit are lost (logged once). Raises
        ValueError when ``slot`` is out of range."""
        area = self._area(slot)
        helps: dict[str, str] = {}
        with self._folding():
            for key, help_, index, count in list(area.records()):
                help_ = helps.setdefault(key[0], help_)  # an area's first record of a family has it
                if key[1] == "gauge":
                    continue
                target = self._retired.register(key, help_, count)
                if target < 0:
                    if not self._retired_full_logged:
                        self._retired_full_logged = True
                        log.warning("metrics retired area full: counts of exited workers lost (%s)", key[0])
                    continue
                for offset in range(count):
                    self._doubles[target + offset] += self._doubles[index + offset]
            area.reset()

    def reset(self, slot: int) -> None:
        """Zero ``slot`` (its used part) without folding it. Runs in the master, while no
        worker writes the slot. Raises ValueError when ``slot`` is out of range."""
        area = self._area(slot)
        with self._folding():
            area.reset()

    @contextlib.contextmanager
    def _folding(self) -> Iterator[None]:
        (sequence,) = _U32.unpack_from(self._memory, _SEQUENCE_OFFSET)
        _U32.pack_into(self._memory, _SEQUENCE_OFFSET, (sequence + 1) & 0xFFFFFFFF)  # odd: folding
        try:
            yield
        finally:
            _U32.pack_into(self._memory, _SEQUENCE_OFFSET, (sequence + 2) & 0xFFFFFFFF)

    # -- for the exporter -------------------------------------------------------------------

    def collect(self, live: Mapping[int, int] | Iterable[int] | None = None) -> list[Family]:
        """The metric families, by name: each series summed over the retired area and the slots.

        ``live`` is a mapping of the live workers' slots to their worker numbers (or an
        iterable of slots, then numbered by slot; None: every slot holding data). Counters and
        histograms are read from every slot holding data, listed or not, so an exited worker
        not folded yet still counts: they never go down. Gauges are read from the ``live``
        slots only, combined by their mode (``"all"``: label ``worker``). A family's type and
        help come from the first record seen (retired area, then slots in order); a series
        declared otherwise (type, mode, label names, buckets) under the same name elsewhere is
        skipped. Runs in the exporter (or any process that has the mapping); raises nothing
        for a region being written, retrying while the master folds.
        """
        if live is None or isinstance(live, Mapping):
            workers = None if live is None else dict(live)
        else:
            workers = {slot: slot for slot in live}
        for _ in range(_READ_TRIES):
            (sequence,) = _U32.unpack_from(self._memory, _SEQUENCE_OFFSET)
            if not sequence & 1:
                families = self._read(workers)
                if _U32.unpack_from(self._memory, _SEQUENCE_OFFSET)[0] == sequence:
                    return families
            time.sleep(_READ_PAUSE)
        return self._read(workers)

    def _read(self, workers: dict[int, int] | None) -> list[Family]:
        declared: dict[str, tuple[SeriesKey, str]] = {}  # name -> first key and help seen
        sums: dict[tuple[str, tuple[str, ...]], list[float]] = {}  # (name, label values) -> values
        areas: list[tuple[int, WriterArea]] = [(-1, self._retired)]
        for slot in range(self.capacity):
            offset = self._slots_offset + slot * self._slot_size
            if _U32.unpack_from(self._memory, offset + 4)[0]:
                areas.append((slot, self._area(slot)))
        for slot, area in areas:
            for key, help_, index, count in area.records():
                name, kind, mode, _names, labelvalues, _buckets = key
                first, _help = declared.setdefault(name, (key, help_))
                if first[:4] != key[:4] or first[5] != key[5]:
                    continue
                if kind == "gauge":
                    if slot < 0 or (workers is not None and slot not in workers):
                        continue
                    if mode == "all":
                        labelvalues = (*labelvalues, str(slot if workers is None else workers[slot]))
                values = list(self._doubles[index : index + count])
                total = sums.setdefault((name, labelvalues), values)
                if total is values:
                    continue
                if mode in ("max", "min"):
                    total[0] = max(total[0], values[0]) if mode == "max" else min(total[0], values[0])
                else:
                    for position, value in enumerate(values):
                        total[position] += value
        families = {name: Family(name, key[1], help_, []) for name, (key, help_) in declared.items()}
        for (name, labelvalues), values in sorted(sums.items()):
            _name, kind, mode, names, _values, buckets = declared[name][0]
            labels = dict(zip((*names, "worker") if mode == "all" else names, labelvalues, strict=False))
            families[name].samples.extend(_samples(name, kind, labels, buckets, values))
        return [family for _name, family in sorted(families.items()) if family.samples]


def _samples(
    name: str, kind: str, labels: dict[str, str], buckets: tuple[float, ...], values: list[float]
) -> list[Sample]:
    if kind == "counter":
        return [Sample(name + "_total", labels, values[0])]
    if kind == "gauge":
        return [Sample(name, labels, values[0])]
    samples, count = [], 0.0
    for bound, value in zip((*buckets, math.inf), values, strict=False):
        count += value
        samples.append(Sample(name + "_bucket", {**labels, "le": _go_float(bound)}, count))
    return [*samples, Sample(name + "_count", labels, count), Sample(name + "_sum", labels, values[-1])]


def _go_float(value: float) -> str:
    """``value`` as Go (and prometheus_client) writes an ``le`` bound: ``+Inf``, ``0.25``, ``1e+07``."""
    if value == math.inf:
        return "+Inf"
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to exponents sooner than Python
        return f"{text[0]}.{text[1:dot]}".rstrip("0.") + f"e+{dot - 1:02d}"
    return text


def _area_size(values: int, key_bytes: int) -> int:
    return -(-(AREA_HEADER_SIZE + 8 * values + key_bytes) // 64) * 64  # whole cache lines
