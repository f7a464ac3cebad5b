"""When the open-loop clients of ``prefork bench`` send: one client's share of a schedule.

The load of ``--rate R``, or of one step of ``--step-load`` (R requests per second for T
seconds), is one schedule: request *m* is due *m / R* seconds after the start. The client
processes share it by dealing its requests out in turn: of ``stride`` clients, client
``phase`` sends requests ``phase``, ``phase + stride``, ``phase + 2 x stride``, ... of each
step. So together they send one request every 1/R seconds, evenly spaced, as one client
would: not in lockstep (every client at once, every stride/R seconds), and never more than
the rate (client *i*'s first request is due *i / R* seconds in, not at the start).

Pure: the load generator (:mod:`prefork.bench.loadgen`) keeps the clock; times here are
seconds from the start of the schedule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: A request due less than this many requests' time before a step's end is not in it (the
#: float error of rate x seconds must not add one).
_EPSILON = 1e-9


def due_in_step(rate: float, seconds: float) -> int:
    """How many requests a step of ``rate`` per second for ``seconds`` (finite) has: those
    due before its end. Raises nothing."""
    return math.ceil(rate * seconds - _EPSILON) if rate > 0 else 0


def client_share(requests: int, phase: int, stride: int) -> int:
    """How many of ``requests`` (numbered from 0) client ``phase`` of ``stride`` sends: those
    numbered ``phase``, ``phase + stride``, ... Raises nothing."""
    return max(0, -(-(requests - phase) // stride))


class Schedule:
    """One client's due times: ``steps`` ((requests per second, seconds), ...) one after the
    other (a rate of 0 sends nothing), of which this client
    sends requests ``phase``, ``phase + stride``, ... of each step (see the module's
    docstring). :meth:`next` gives them in order; :meth:`count` says how many there are.

    Raises ValueError for a ``stride`` below 1 or a ``phase`` not in 0 .. stride - 1.
    """

    def __init__(self, steps: Sequence[tuple[float, float]], phase: int = 0, stride: int = 1) -> None:
        if stride < 1 or not 0 <= phase < stride:
            raise ValueError(f"client {phase} of {stride}: no such client")
        self.steps = tuple(steps)
        self.phase = phase
        self.stride = stride
        self._step = 0  # the step now, its start (seconds) and the next request's number in it
        self._start = 0.0
        self._number = phase

    def next(self) -> float:
        """The due time (seconds from the start) of this client's next request, moving past
        it; ``math.inf`` once the steps are over."""
        while self._step < len(self.steps):
            rate, seconds = self.steps[self._step]
            if self._number < due_in_step(rate, seconds):
                due = self._start + self._number / rate
                self._number += self.stride
                return due
            self._step += 1
            self._start += seconds
            self._number = self.phase
        return math.inf

    def count(self) -> int:
        """How many requests this client sends over all the steps (whatever :meth:`next`
        gave already). Raises nothing."""
        return sum(client_share(due_in_step(r, s), self.phase, self.stride) for r, s in self.steps)
