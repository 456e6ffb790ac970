"""Linking a movie's frames while the rest are still being segmented.

Why: a movie's fan-in used to link every frame after the last one was segmented, so linking
came on top of segmentation. Now the waiting movie asks the queue to wake it early
(``wake_at``: once that many frames ended); the tracking consumer links the frames segmented so
far, keeps the linker in memory and parks the movie again. Once the last frame ends, little is
left to link before the results are written.

What may go wrong costs time, never results: the linkers live in one consumer's memory, so a
movie woken on another consumer (or after a restart) links its frames again from the first,
and the tracks are the same either way (:class:`consumers.processing.linking.Linker`). The
wakes halve what remains each time, so a movie whose every wake lands on a fresh consumer
links its frames about log2(frames / :data:`LEAST`) times at most.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from consumers.processing.linking import Linker

LEAST = 8
"""No early wake is asked for once fewer frames than this remain: the last wake links them."""
KEPT = 4
"""Movies whose linkers one consumer keeps (the oldest is dropped beyond that)."""
MAX_AGE = 1800.0
"""Seconds a linker is kept after its last wake: a movie whose frames take longer between
two wakes links them again from the first."""


def next_wake(ended: int, total: int) -> int | None:
    """Frames ended at which to wake the movie next: half way through what remains; None when
    fewer than :data:`LEAST` remain (only the last frame's end wakes it then)."""
    remaining = total - ended
    if remaining < LEAST:
        return None
    return ended + (remaining + 1) // 2


@dataclass
class Ahead:
    """A movie's frames linked so far, and frame 0's shape once read (every frame must share
    it)."""

    linker: Linker
    shape: tuple[int, int] | None = None


class LinkersInHand:
    """The movies this consumer linked ahead, by job key: a few, each for a while. A movie that
    ended elsewhere (finished on another consumer, failed, deleted) is never asked for again,
    so its linker goes once :data:`KEPT` newer ones are kept or after ``max_age`` seconds."""

    def __init__(
        self,
        kept: int = KEPT,
        max_age: float = MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kept = kept
        self._max_age = max_age
        self._clock = clock
        self._movies: OrderedDict[str, tuple[float, Ahead]] = OrderedDict()

    def take(self, key: str) -> Ahead | None:
        """The movie's linker, now the caller's (keep it again with :meth:`keep`)."""
        self._forget_old()
        kept = self._movies.pop(key, None)
        return None if kept is None else kept[1]

    def keep(self, key: str, ahead: Ahead) -> None:
        self._movies[key] = (self._clock(), ahead)
        self._forget_old()
        while len(self._movies) > self._kept:
            self._movies.popitem(last=False)

    def _forget_old(self) -> None:
        oldest = self._clock() - self._max_age
        while self._movies and next(iter(self._movies.values()))[0] < oldest:
            self._movies.popitem(last=False)

    def __len__(self) -> int:
        return len(self._movies)
