"""Stop requests from SIGTERM and SIGINT, counted without taking any lock.

A signal handler runs in the main thread between bytecodes; one that sets a threading.Event
can deadlock if the main thread was inside that Event's own lock. So handlers only count, and
service loops poll :attr:`StopSignals.count` every fraction of a second.
"""

from __future__ import annotations

import signal
from types import FrameType


class StopSignals:
    def __init__(self) -> None:
        self.count = 0

    def install(self) -> StopSignals:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
