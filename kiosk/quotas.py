"""Quotas: how many jobs one user, or one group of users together, may have waiting to start.

Checked when a job is submitted, from the owners' fair-share lines (:mod:`kiosk.fairshare`),
so waiting means queued and not yet started, over every queue; a zip's or movie's images and
frames count once they are queued. The administrator has no quota.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kiosk.keys import ANONYMOUS
from kiosk.queue import JobQueue
from kiosk.users import Principal, UserStore

DELETE_HINT = (
    "wait for some to start, or delete waiting ones (kiosk jobs --status new, then kiosk delete ID)"
)


class QuotaExceeded(Exception):
    """A submission over a quota; the message names the quota and what to do."""


@dataclass(frozen=True)
class WaitingQuotas:
    per_user: int = 0  # 0: no limit
    per_group: int = 0

    def check(
        self, queue: JobQueue, users: UserStore, caller: Principal, queues: Sequence[str]
    ) -> None:
        """Raise :class:`QuotaExceeded` when one more job would go over a quota."""
        if caller.admin:
            return
        owner = caller.name or ANONYMOUS
        if self.per_user:
            used = queue.waiting_of([owner], queues)
            if used >= self.per_user:
                raise QuotaExceeded(
                    f"quota reached: user {owner!r} has {used} jobs waiting to start, the most "
                    f"KIOSK_QUOTA_WAITING_JOBS allows ({self.per_user}); {DELETE_HINT}, or ask "
                    "the administrator for a larger quota"
                )
        if self.per_group and caller.group:
            members = [u.name for u in users.list() if u.group == caller.group]
            used = queue.waiting_of(sorted({owner, *members}), queues)
            if used >= self.per_group:
                raise QuotaExceeded(
                    f"quota reached: group {caller.group!r} has {used} jobs waiting to start, "
                    f"the most KIOSK_GROUP_QUOTA_WAITING_JOBS allows ({self.per_group}); "
                    f"{DELETE_HINT}, or ask the administrator for a larger quota"
                )
