"""Arrivals: what users upload, and when.

**One client** (the paper's benchmark, :class:`Uploader`): zips of images back to back through a
link of fixed speed.

The paper's benchmark submitted a 100-image zip (about 150 MB) every 5 s or every 0.5 s,
which it describes as 240 Mbps and 2.4 Gbps uploads; that is exactly one zip per
``zip_images * image_mb * 8 / upload_mbps`` seconds, so the upload link is the arrival
process. Each zip's upload time varies by +-``jitter`` (10 %) around that, as real links do;
perfectly periodic arrivals would alias with the 15-s HPA sync (a zip every 5 s, fanned out
in 2, is never seen on the queue at a sync). The last zip may be smaller. One event per zip
keeps a 10^6-image run at 10^4 events.

**A community** (:func:`community_uploads`, :class:`CommunityUploader`): many users, each
submitting in bursts at random moments; see ``model.Community`` for the mix.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from benchmark.simulator.events import EventLoop
from benchmark.simulator.model import Community, Workload

CLIENT = "client"  # the one user of the paper's benchmark


class Submission:
    """One upload (a zip of images, or one image as its own job) and what became of it."""

    __slots__ = (
        "arrival",
        "done",
        "finished",
        "first_start",
        "images",
        "last_start",
        "owner",
        "zipped",
    )

    def __init__(self, owner: str, images: int, arrival: float, zipped: bool = True) -> None:
        self.owner = owner
        self.images = images
        self.arrival = arrival  # its upload completed
        self.zipped = zipped  # False: a single image, submitted to the image queue
        self.first_start: float | None = None  # a consumer took its first image
        self.last_start: float | None = None
        self.done = 0
        self.finished: float | None = None  # its last image done

    def started(self, now: float) -> None:
        if self.first_start is None:
            self.first_start = now
        self.last_start = now

    def completed(self, units: int, now: float) -> None:
        self.done += units
        if self.done >= self.images and self.finished is None:
            self.finished = now


Deliver = Callable[[Submission], None]


class Uploader:
    """Delivers each zip to ``deliver`` the moment its upload completes."""

    def __init__(
        self,
        loop: EventLoop,
        workload: Workload,
        deliver: Deliver,
        rng: random.Random | None = None,
        jitter: float = 0.1,
    ) -> None:
        self.loop = loop
        self.rng = rng or random.Random(0)
        self.jitter = jitter
        self.workload = workload
        self.deliver = deliver
        self.remaining = workload.images
        self.uploaded = 0
        self.zips = 0
        self.finished_at: float | None = None
        self.submissions: list[Submission] = []

    def start(self) -> None:
        self._next()

    @property
    def done(self) -> bool:
        return self.finished_at is not None

    def _next(self) -> None:
        if self.remaining <= 0:
            self.finished_at = self.loop.now
            return
        size = min(self.workload.zip_images, self.remaining)
        self.remaining -= size
        spread = self.rng.uniform(1 - self.jitter, 1 + self.jitter) if self.jitter else 1.0
        self.loop.after(size * self.workload.seconds_per_image * spread, self._arrive, size)

    def _arrive(self, size: int) -> None:
        self.uploaded += size
        self.zips += 1
        sub = Submission(CLIENT, size, self.loop.now)
        self.submissions.append(sub)
        self.deliver(sub)
        self._next()


@dataclass(frozen=True)
class Upload:
    """One planned submission: who, how many images, when its upload completes."""

    at: float
    owner: str
    images: int
    zipped: bool


def community_uploads(
    community: Community, images: int, seconds_per_image: float, rng: random.Random
) -> list[Upload]:
    """Every submission of a community's run, in time order, adding up to ``images``.

    Each user's images are cut into submissions (log-uniform sizes, some single images), the
    submissions grouped into bursts (a submission of one image is a single-image job, the rest
    zips), and each burst starts at a uniform moment of the horizon:
    the time the paper's one client would need to upload everything over the same link, so the
    load on average is the scenario's. Within a burst uploads follow back to back at the link
    speed (+-10 %).
    """
    horizon = images * seconds_per_image
    budgets = community.budgets(images)
    plans: list[Upload] = []
    for owner, user_class, budget in budgets:
        sizes = []
        while budget > 0:
            if rng.random() < user_class.single_image:
                size = 1
            else:
                lo, hi = user_class.zip_images
                size = round(math.exp(rng.uniform(math.log(lo), math.log(hi))))
            size = min(size, budget)
            sizes.append(size)
            budget -= size
        while sizes:
            k = rng.randint(*user_class.burst)
            burst, sizes = sizes[:k], sizes[k:]
            at = rng.uniform(0, horizon)
            for size in burst:
                at += size * seconds_per_image * rng.uniform(0.9, 1.1)
                plans.append(Upload(at, owner, size, zipped=size > 1))
    plans.sort(key=lambda u: (u.at, u.owner))
    return plans


class CommunityUploader:
    """Delivers a community's planned submissions, each at its moment."""

    def __init__(self, loop: EventLoop, plans: list[Upload], deliver: Deliver) -> None:
        self.loop = loop
        self.plans = plans
        self.deliver = deliver
        self.submissions: list[Submission] = []

    def start(self) -> None:
        for plan in self.plans:
            self.loop.at(self.loop.now + plan.at, self._arrive, plan)

    def _arrive(self, plan: Upload) -> None:
        sub = Submission(plan.owner, plan.images, self.loop.now, plan.zipped)
        self.submissions.append(sub)
        self.deliver(sub)
