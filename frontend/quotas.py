"""Quotas: how many jobs one user, or one group of users together, may have waiting to start,
and how many bytes they may store; checked when a job is submitted.

Waiting means queued and not yet started, over every queue, read from the owners' fair-share
lines (:mod:`kiosk.fairshare`): a zip's or movie's images and frames count once they are
queued. Bytes are what the janitor's census last counted in the bucket (:mod:`kiosk.census`).
The administrator has no quota.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from kiosk.census import stored_bytes
from kiosk.filetypes import human_bytes
from kiosk.keys import ANONYMOUS
from kiosk.queue import JobQueue
from kiosk.users import Principal, UserStore

WAITING_HINT = (
    "wait for some to start, or delete waiting ones (kiosk jobs --status new, then "
    "kiosk delete ID), or ask the administrator for a larger quota"
)
BYTES_HINT = (
    "delete finished jobs you no longer need (kiosk delete ID: their files go with them; the "
    "count is renewed every few minutes), or ask the administrator for a larger quota"
)


class QuotaExceeded(Exception):
    """A submission over a quota; the message names the quota and what to do."""


@dataclass(frozen=True)
class Quotas:
    """Limits (0: none) per user and per group."""

    waiting_per_user: int = 0
    waiting_per_group: int = 0
    bytes_per_user: int = 0
    bytes_per_group: int = 0

    def check(
        self, queue: JobQueue, users: UserStore, caller: Principal, queues: Sequence[str]
    ) -> None:
        """Raise :class:`QuotaExceeded` when one more job would go over a quota."""
        if caller.admin:
            return
        owner = caller.name or ANONYMOUS
        subjects = [
            _Subject(
                f"user {owner!r}",
                "KIOSK_QUOTA",
                [owner],
                self.waiting_per_user,
                self.bytes_per_user,
            )
        ]
        if caller.group and (self.waiting_per_group or self.bytes_per_group):
            members = sorted({owner, *users.members(caller.group)})
            subjects.append(
                _Subject(
                    f"group {caller.group!r}",
                    "KIOSK_GROUP_QUOTA",
                    members,
                    self.waiting_per_group,
                    self.bytes_per_group,
                )
            )
        for subject in subjects:
            subject.check(queue, queues)


@dataclass(frozen=True)
class _Subject:
    """A user or a group, with its limits."""

    who: str
    setting: str  # the settings' common prefix
    owners: list[str]
    most_waiting: int
    most_bytes: int

    def check(self, queue: JobQueue, queues: Sequence[str]) -> None:
        if self.most_waiting:
            waiting = queue.waiting_of(self.owners, queues)
            if waiting >= self.most_waiting:
                raise QuotaExceeded(
                    f"quota reached: {self.who} has {waiting} jobs waiting to start, the most "
                    f"{self.setting}_WAITING_JOBS allows ({self.most_waiting}); {WAITING_HINT}"
                )
        if self.most_bytes:
            stored, counted = stored_bytes(queue, self.owners)
            if stored >= self.most_bytes:
                ago = "" if counted is None else f" (counted {time.time() - counted:.0f} s ago)"
                raise QuotaExceeded(
                    f"quota reached: {self.who} stores {human_bytes(stored)} in the bucket"
                    f"{ago}, the most {self.setting}_BYTES allows "
                    f"({human_bytes(self.most_bytes)}); {BYTES_HINT}"
                )
