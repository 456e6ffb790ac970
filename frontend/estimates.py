"""Queue positions and ETAs for the jobs an answer shows (:mod:`kiosk.fairshare` for the
order, :mod:`kiosk.pace` for the speed), each queue's standings and pace read once."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from kiosk import pace
from kiosk.fairshare import Standing, jobs_before
from kiosk.jobs import JobView, parse_iso
from kiosk.keys import ANONYMOUS, FINAL_STATUSES, JobField, Status, parse_job_key
from kiosk.pace import Estimate, Pace
from kiosk.queue import JobQueue


class _Queues:
    """Standings and pace per queue, read on first use."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        self._standings: dict[str, list[Standing]] = {}
        self._paces: dict[str, Pace] = {}

    def standings(self, name: str) -> list[Standing]:
        if name not in self._standings:
            self._standings[name] = self.queue.standings(name)
        return self._standings[name]

    def pace(self, name: str) -> Pace:
        if name not in self._paces:
            self._paces[name] = self.queue.pace(name)
        return self._paces[name]


def estimates(
    queue: JobQueue, views: Iterable[JobView], now: datetime | None = None
) -> dict[str, Estimate]:
    """Job key -> its estimate, for the views that are not finished."""
    now = now or datetime.now(UTC)
    queues = _Queues(queue)
    found = {}
    for view in views:
        estimate = _estimate(queues, view, now)
        if estimate is not None:
            found[view.key] = estimate
    return found


def _estimate(queues: _Queues, view: JobView, now: datetime) -> Estimate | None:
    owner = view.fields.get(JobField.OWNER) or ANONYMOUS
    if view.status == Status.NEW:
        index = queues.queue.line_index(view.queue, owner, view.key)
        standings = queues.standings(view.queue)
        if index is None or not any(s.owner == owner for s in standings):
            return None  # pushed onto the queue by an older producer, or just claimed
        position = jobs_before(standings, owner, index)
        return pace.waiting(now, position, queues.pace(view.queue))
    if view.status == Status.WAITING:
        return _children_estimate(queues, view, owner, now)
    if view.status in FINAL_STATUSES or not view.status:
        return None
    return pace.running(
        now, parse_iso(view.fields.get(JobField.STARTED_AT)), queues.pace(view.queue)
    )


def _children_estimate(
    queues: _Queues, view: JobView, owner: str, now: datetime
) -> Estimate | None:
    """A zip or movie waiting for its children: it should finish when the owner's last job
    waiting on the children's queue does (its children wait in that line, in order)."""
    first = parse_job_key(view.fields.get(JobField.CHILDREN, "").split(",", 1)[0])
    if first is None:
        return None
    children_queue = first.queue
    standings = queues.standings(children_queue)
    mine = next((s for s in standings if s.owner == owner), None)
    speed = queues.pace(children_queue)
    if mine is None:  # every child started: the last ones finish a job's time from now
        return pace.running(now, now, speed)
    last = pace.waiting(now, jobs_before(standings, owner, mine.waiting - 1), speed)
    return Estimate(finish=last.finish)
