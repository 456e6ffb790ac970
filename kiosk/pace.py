"""How fast a queue moves, and when a job will start and finish: the estimates users see.

Throughput is measured where it is decided: each time a consumer settles a job (done, failed,
retried or parked waiting for its children) the queue's pace hash counts it, if the queue had
work waiting at the previous settle (then the consumers, not the arrivals, set the pace). The
counts and the seconds they took both decay with time constant ``TAU``, so their ratio is an
exponentially weighted average of the throughput over the last minutes, without the bias a
plain decayed rate has right after an idle spell. A job's seconds are an exponentially
weighted average over jobs (``ALPHA``). The update is one Lua step in :mod:`kiosk.queue`.

A waiting job starts after the ``position`` jobs ahead of it (fair-share order,
:func:`kiosk.fairshare.jobs_before`) and one more settle: (position + 1) / throughput from now.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from kiosk.keys import PaceField

TAU = 120.0
"""Seconds: the throughput is an average over about the last two minutes (60 s and 300 s
measured no better in benchmark.eta_accuracy; 300 s followed a changing load worse)."""
ALPHA = 0.2
"""The latest job's weight in the average seconds of a job."""


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and value >= 0 else None


@dataclass(frozen=True)
class Pace:
    """A queue's measured pace; None where nothing has been measured yet."""

    rate: float | None = None  # jobs per second settled while work was waiting
    seconds: float | None = None  # a job's recent average seconds

    @classmethod
    def of(cls, fields: Mapping[str, str]) -> Pace:
        count, busy = _number(fields.get(PaceField.COUNT)), _number(fields.get(PaceField.BUSY))
        rate = count / busy if count and busy else None
        return cls(rate, _number(fields.get(PaceField.SECONDS)))


@dataclass(frozen=True)
class Estimate:
    """Where a job stands: its place among the waiting jobs (0: next) and when it should start
    and finish; None where unknown (nothing measured yet, or no consumer running)."""

    position: int | None = None
    start: datetime | None = None
    finish: datetime | None = None

    def fields(self) -> dict[str, str | None]:
        """As the APIs name it: position, eta_start and eta_finish (ISO-8601, UTC)."""
        return {
            "position": None if self.position is None else str(self.position),
            "eta_start": _iso(self.start),
            "eta_finish": _iso(self.finish),
        }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment else None


def waiting(now: datetime, position: int, pace: Pace) -> Estimate:
    """A job with ``position`` jobs ahead of it."""
    if not pace.rate:
        return Estimate(position)
    start = now + timedelta(seconds=(position + 1) / pace.rate)
    finish = start + timedelta(seconds=pace.seconds) if pace.seconds is not None else None
    return Estimate(position, start, finish)


def running(now: datetime, started: datetime | None, pace: Pace) -> Estimate:
    """A job a consumer holds: it should finish a job's seconds after it started (not before
    now)."""
    if started is None or pace.seconds is None:
        return Estimate()
    return Estimate(finish=max(now, started + timedelta(seconds=pace.seconds)))


def in_words(seconds: float, minute_digits: int = 0) -> str:
    """A stretch of time as a person reads it: 42 s, 8 min, 3.2 h (under 1 s: in words)."""
    if seconds < 1:
        return "under a second"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.{minute_digits}f} min"
    return f"{seconds / 3600:.1f} h"
