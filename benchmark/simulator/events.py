"""A discrete-event engine on simulated seconds: a heap of (time, sequence, event).

Events at the same time run in the order they were scheduled (the sequence number breaks
ties), so a run is a pure function of its inputs and seed. Cancelled events stay in the heap
and are skipped when they come up, which keeps cancellation O(1).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Any


class Event:
    """A scheduled call; ``cancel()`` it to make it a no-op."""

    __slots__ = ("args", "cancelled", "fn", "time")

    def __init__(self, time: float, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.time = time
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    """Simulated time only moves when the next event is taken off the heap."""

    def __init__(self) -> None:
        self.now = 0.0
        self.processed = 0
        self._heap: list[tuple[float, int, Event]] = []
        self._seq = itertools.count()
        self._stopped = False

    def at(self, time: float, fn: Callable[..., Any], *args: Any) -> Event:
        if time < self.now:
            raise ValueError(f"cannot schedule in the past ({time} < {self.now})")
        event = Event(time, fn, args)
        heapq.heappush(self._heap, (time, next(self._seq), event))
        return event

    def after(self, delay: float, fn: Callable[..., Any], *args: Any) -> Event:
        return self.at(self.now + max(0.0, delay), fn, *args)

    def every(self, period: float, fn: Callable[[], Any], *, first: float | None = None) -> None:
        """Call ``fn`` every ``period`` seconds (first at ``first``, default one period on)."""
        if period <= 0:
            raise ValueError("period must be > 0")

        def fire() -> None:
            fn()
            self.after(period, fire)

        self.at(self.now + period if first is None else first, fire)

    def stop(self) -> None:
        """End ``run`` after the current event."""
        self._stopped = True

    def run(self, until: float = math.inf) -> None:
        """Run events in time order until ``stop()``, an empty heap, or time ``until``."""
        heap = self._heap
        self._stopped = False
        while heap and not self._stopped:
            time, _, event = heap[0]
            if time > until:
                self.now = until
                return
            heapq.heappop(heap)
            if event.cancelled:
                continue
            self.now = time
            self.processed += 1
            event.fn(*event.args)

    def __len__(self) -> int:
        return len(self._heap)
