"""Fair share between the owners of waiting jobs: the order a queue's consumers start them in.

The claim is one Lua step in :mod:`kiosk.queue`: it takes the oldest job of the owner with the
least virtual time (jobs started over the owner's weight; ties by name) and charges them
``1 / weight``. An owner whose line was empty comes back at the last claim's virtual time, so
waiting nothing earns no credit. This module is the same rule in Python, pure, for queue
positions (:func:`jobs_before`, without reading the jobs themselves) and for the test that holds
the two together.

Why start counts and not consumer-seconds: a queue's jobs are one job type, so their times are
alike, and a count needs no bookkeeping when a job ends, fails or is taken back; zip and movie
children count for the owner of their parent, since they carry the parent's owner.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

DEFAULT_WEIGHT = 1.0
MAX_WEIGHT = 100.0
MIN_WEIGHT = 1 / MAX_WEIGHT
"""Weights are clamped to these (a tiny weight would make virtual times infinite)."""


@dataclass(frozen=True)
class Standing:
    """Where one owner with work waiting on a queue stands."""

    owner: str
    vtime: float  # the owner's virtual time: their next job starts at it
    waiting: int
    weight: float = DEFAULT_WEIGHT


@dataclass(frozen=True)
class Line:
    """One owner's waiting jobs on one queue, oldest first, and where the owner stands."""

    owner: str
    vtime: float
    jobs: Sequence[str]
    weight: float = DEFAULT_WEIGHT

    @property
    def standing(self) -> Standing:
        return Standing(self.owner, self.vtime, len(self.jobs), self.weight)


def weight_of(value: object) -> float:
    """A stored weight as the claim reads it: anything but a positive finite number counts as
    1, and the rest is clamped to MIN_WEIGHT..MAX_WEIGHT."""
    try:
        weight = float(str(value))
    except ValueError:
        return DEFAULT_WEIGHT
    if not (math.isfinite(weight) and weight > 0):
        return DEFAULT_WEIGHT
    return min(max(weight, MIN_WEIGHT), MAX_WEIGHT)


def start_order(lines: Iterable[Line]) -> Iterator[str]:
    """The waiting jobs in the order claims will start them, if nothing else arrives."""
    heap = [(line.vtime, line.owner, 0, line) for line in lines if line.jobs]
    heapq.heapify(heap)
    while heap:
        vtime, owner, index, line = heapq.heappop(heap)
        yield line.jobs[index]
        if index + 1 < len(line.jobs):
            heapq.heappush(heap, (vtime + 1 / line.weight, owner, index + 1, line))


def jobs_before(standings: Sequence[Standing], owner: str, index: int) -> int:
    """How many waiting jobs start before ``owner``'s ``index``-th (0: their oldest), if
    nothing else arrives: its position in :func:`start_order`, from the owners' standings
    alone. (Exact where weights have exact binary reciprocals, 1, 2, 0.5, ...; otherwise a
    tie decided by the last bit of a float may put it one place off.)"""
    mine = next(s for s in standings if s.owner == owner)
    start = mine.vtime + index / mine.weight
    before = index
    for other in standings:
        if other.owner == owner:
            continue
        # the other's k-th job starts at vtime + k / weight; ties go to the smaller name
        ahead = (start - other.vtime) * other.weight
        if other.owner < owner:
            count = math.floor(ahead) + 1 if ahead >= 0 else 0
        else:
            count = math.ceil(ahead) if ahead > 0 else 0
        before += min(count, other.waiting)
    return before
