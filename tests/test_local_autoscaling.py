"""The local stack scales itself: real `kiosk up` with the autoscaler's local backend, the
embedded model server with the bundled model, real consumers and a real Redis.

With either scaling policy (KIOSK_SCALING_POLICY, passed through `kiosk up`'s environment to
the autoscaler): the model server is not running until the first job arrives and stops again
after the idle grace; segmentation consumers grow under a zip of images and shrink to zero
afterwards. The paper policy gets 100 images; the backlog policy, which sizes consumers from the
backlog at once, a smaller zip.
"""

from __future__ import annotations

import io
import threading
import time
import zipfile
from collections import Counter
from pathlib import Path

import httpx
import pytest
import tifffile

from evaluation.synthetic import generate
from kiosk.queue import JobQueue, connect
from local.client import KioskClient
from tests.support.servers import wait_for

IDLE_GRACE = 4.0


def plate_zip(path: Path, images: int, size: int = 160) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for i in range(images):
            image, _ = generate((size, size), seed=900 + i, dtype="uint16")
            buffer = io.BytesIO()
            tifffile.imwrite(buffer, image)
            archive.writestr(f"plate/well_{i:03d}.tif", buffer.getvalue())
    return path


class ConsumerCounts(threading.Thread):
    """Samples the live consumers per queue (their heartbeats) until stopped."""

    def __init__(self, queue: JobQueue) -> None:
        super().__init__(daemon=True)
        self.queue = queue
        self.samples: list[Counter] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            live = self.queue.live_consumers().values()
            self.samples.append(Counter(beat.queue for beat in live))
            time.sleep(0.2)

    def most(self, queue: str) -> int:
        return max((sample[queue] for sample in self.samples), default=0)


def model_server_up(stack) -> bool:
    return any("model_server" in cmd for cmd in stack.descendants().values())


@pytest.mark.parametrize(("policy", "images"), [("paper", 100), ("backlog", 40)])
def test_either_policy_starts_the_model_server_with_work_and_consumers_follow_the_queue(
    kiosk_up, tmp_path: Path, policy: str, images: int
) -> None:
    stack = kiosk_up(
        KIOSK_SCALING_POLICY=policy,
        KIOSK_QUEUES="segmentation",
        KIOSK_EMBEDDED_MODEL_SERVER="true",
        KIOSK_CONSUMERS_PER_QUEUE="0",
        KIOSK_IDLE_GRACE=str(IDLE_GRACE),
        KIOSK_SCALE_DOWN_WINDOW="2",
        KIOSK_MAX_CONSUMERS="3",
        KIOSK_HEARTBEAT_INTERVAL="0.3",
    )
    queue = JobQueue(connect(stack.redis_url()))
    time.sleep(2)  # a few autoscaler ticks with nothing to do
    assert not model_server_up(stack), "the model server started with no work"
    assert queue.live_consumers() == {}, "consumers started with no work"

    counts = ConsumerCounts(queue)
    counts.start()
    plate = plate_zip(tmp_path / "plate.zip", images)
    with KioskClient(stack.url) as client:
        job = client.submit(plate, "segmentation")
        wait_for(lambda: model_server_up(stack), 30, what="the model server to start")
        final = client.wait([job["id"]], interval=0.5, timeout=300)[job["id"]]
    assert final["status"] == "done", final
    assert final["children"] == {"total": images, "done": images, "failed": 0, "unit": "images"}

    wait_for(
        lambda: not model_server_up(stack) and queue.live_consumers() == {},
        IDLE_GRACE + 30,
        what="the model server and consumers to stop after the idle grace",
    )
    counts.done.set()
    counts.join(5)
    assert counts.most("segmentation") >= 2, f"consumers did not grow under {images} images"
    assert counts.most("segmentation-zip") == 1
    autoscaler_log = (stack.data_dir / "logs" / "autoscaler.log").read_text()
    assert f"{policy} policy" in autoscaler_log, "the autoscaler did not get the policy asked for"
    assert "model servers 0 -> 1" in autoscaler_log
    assert "model servers 1 -> 0" in autoscaler_log
    health = httpx.get(f"{stack.url}/api/health-check", timeout=5)
    assert health.status_code == 200, "the frontend stays up while the rest idles"
    assert stack.stop() == 0
