"""Arrivals: a client uploading zips of images back to back through a link of fixed speed.

The paper's benchmark submitted a 100-image zip (about 150 MB) every 5 s or every 0.5 s,
which it describes as 240 Mbps and 2.4 Gbps uploads; that is exactly one zip per
``zip_images * image_mb * 8 / upload_mbps`` seconds, so the upload link is the arrival
process. Each zip's upload time varies by +-``jitter`` (10 %) around that, as real links do;
perfectly periodic arrivals would alias with the 15-s HPA sync (a zip every 5 s, fanned out
in 2, is never seen on the queue at a sync). The last zip may be smaller. One event per zip
keeps a 10^6-image run at 10^4 events.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from benchmark.simulator.events import EventLoop
from benchmark.simulator.model import Workload


class Uploader:
    """Delivers each zip to ``deliver(images_in_zip)`` the moment its upload completes."""

    def __init__(
        self,
        loop: EventLoop,
        workload: Workload,
        deliver: Callable[[int], None],
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
        self.deliver(size)
        self._next()
