"""Fair share between the owners of waiting jobs: the order a queue's consumers start them in.

The claim is one Lua step in :mod:`kiosk.queue`: it takes the oldest job of the owner with the
least virtual time (jobs started over the owner's weight; ties by name) and charges them
``1 / weight``. An owner whose line was empty comes back at the last claim's virtual time, so
waiting nothing earns no credit. This module is the same rule in Python, pure, for queue
positions and for the test that holds the two together.

Why start counts and not consumer-seconds: a queue's jobs are one job type, so their times are
alike, and a count needs no bookkeeping when a job ends, fails or is taken back; zip and movie
children count for the owner of their parent, since they carry the parent's owner.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

DEFAULT_WEIGHT = 1.0


@dataclass(frozen=True)
class Line:
    """One owner's waiting jobs on one queue, oldest first, and where the owner stands."""

    owner: str
    vtime: float  # the owner's virtual time: the next job starts at it
    jobs: Sequence[str]
    weight: float = DEFAULT_WEIGHT


def weight_of(value: object) -> float:
    """A stored weight as the claim reads it: anything but a positive number counts as 1."""
    try:
        weight = float(str(value))
    except ValueError:
        return DEFAULT_WEIGHT
    return weight if weight > 0 else DEFAULT_WEIGHT


def start_order(lines: Iterable[Line]) -> Iterator[str]:
    """The waiting jobs in the order claims will start them, if nothing else arrives."""
    heap = [(line.vtime, line.owner, 0, line) for line in lines if line.jobs]
    heapq.heapify(heap)
    while heap:
        vtime, owner, index, line = heapq.heappop(heap)
        yield line.jobs[index]
        if index + 1 < len(line.jobs):
            heapq.heappush(heap, (vtime + 1 / line.weight, owner, index + 1, line))
