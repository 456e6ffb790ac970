"""Work waiting on one queue, in the order consumers take it: first come, first served, or
Kiosk's fair share.

Fair share is the rule of ``kiosk.queue``'s claim (and ``kiosk.fairshare``): one line per owner,
the next job is the oldest of the owner with the least virtual time (jobs started; ties by
name), and an owner whose line was empty comes back at the last claim's virtual time. Every
simulated user has weight 1, so virtual times are whole numbers and a run of claims by one owner
can be taken in one step: up to the point where the next owner's turn comes.

Each take is booked in a :class:`~benchmark.simulator.fairness.ShareLedger` against what a
perfectly fair scheduler would have given every owner with work waiting at that moment, so a run
can say how far each owner's claims were from their fair share.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import TYPE_CHECKING

from benchmark.simulator.fairness import ShareLedger
from benchmark.simulator.model import QUEUE_ORDERS
from kiosk.fairshare import Standing

if TYPE_CHECKING:
    from benchmark.simulator.workload import Submission

Part = list  # [Submission, units]: consecutive units of one submission


class WaitingLines:
    """Units of work (images, or zips) waiting on one queue, by owner."""

    def __init__(self, order: str = "fair") -> None:
        if order not in QUEUE_ORDERS:
            raise ValueError(f"unknown queue order {order!r}; known: {list(QUEUE_ORDERS)}")
        self.order = order
        self.waiting = 0
        self.waiting_of: dict[str, int] = {}
        self.claims = ShareLedger()
        self._fifo: deque[Part] = deque()
        self._lines: dict[str, deque[Part]] = {}
        self._heap: list[tuple[float, str]] = []  # owners with work waiting, by virtual time
        self._vtime: dict[str, float] = {}
        self._now = 0.0  # the virtual time of the last claim

    def __len__(self) -> int:
        return self.waiting

    def standings(self) -> list[Standing]:
        """Each owner with work waiting, and their virtual time (fair share only)."""
        return [
            Standing(owner, vtime, self.waiting_of[owner]) for vtime, owner in sorted(self._heap)
        ]

    def push(self, sub: Submission, units: int = 1, front: bool = False) -> None:
        """``units`` of ``sub`` join its owner's line: at the back, or at the front for work
        handed back (the janitor's requeue)."""
        if units <= 0:
            return
        owner = sub.owner
        if self.order == "fifo":
            line = self._fifo
        else:
            line = self._lines.setdefault(owner, deque())
            if not line:
                vtime = max(self._vtime.get(owner, 0.0), self._now)
                heapq.heappush(self._heap, (vtime, owner))
        if front:
            line.appendleft([sub, units])
        else:
            line.append([sub, units])
        self.waiting += units
        self.waiting_of[owner] = self.waiting_of.get(owner, 0) + units

    def take(self, n: int) -> list[Part]:
        """Up to ``n`` units, in the queue's order."""
        n = min(n, self.waiting)
        if n <= 0:
            return []
        demands = dict(self.waiting_of)
        self.waiting -= n
        taken = self._take_fifo(n) if self.order == "fifo" else self._take_fair(n)
        served: dict[str, float] = {}
        for sub, units in taken:
            served[sub.owner] = served.get(sub.owner, 0) + units
        self.claims.book(demands, served)
        return taken

    # ---- internals
    def _leaves(self, owner: str, units: int) -> None:
        left = self.waiting_of[owner] - units
        if left:
            self.waiting_of[owner] = left
        else:
            del self.waiting_of[owner]

    def _take_fifo(self, n: int) -> list[Part]:
        taken = _pop_units(self._fifo, n)
        for sub, units in taken:
            self._leaves(sub.owner, units)
        return taken

    def _take_fair(self, n: int) -> list[Part]:
        taken: list[Part] = []
        heap = self._heap
        while n > 0:
            vtime, owner = heap[0]
            run = n
            if len(heap) > 1:
                nxt = min(heap[1:3])
                gap = nxt[0] - vtime  # this owner's claims before the next owner's turn
                run = min(n, math.floor(gap) + 1 if owner < nxt[1] else max(1, math.ceil(gap)))
            line = self._lines[owner]
            run = min(run, self.waiting_of[owner])
            taken.extend(_pop_units(line, run))
            self._leaves(owner, run)
            self._now = vtime + run - 1
            after = vtime + run
            self._vtime[owner] = after
            if line:
                heapq.heapreplace(heap, (after, owner))
            else:
                heapq.heappop(heap)
            n -= run
        return taken


def _pop_units(line: deque[Part], n: int) -> list[Part]:
    """The first ``n`` units of ``line``, as parts; a part cut in two leaves its rest in line."""
    out: list[Part] = []
    while n > 0:
        head = line[0]
        if head[1] <= n:
            line.popleft()
            out.append(head)
            n -= head[1]
        else:
            head[1] -= n
            out.append([head[0], n])
            n = 0
    return out
