"""A stand-in for the tracking job type, for tests of what users see of tracking (portal, CLI,
the original clients) without a model server: it walks a movie job through the fields the
real one writes, in its order, and leaves a results zip and an animated preview.

1. ``waiting`` with ``children`` (one key per frame), ``total_jobs`` and ``children:done``
   counting up: the frames being segmented;
2. ``post-processing`` with ``progress``: the frames being linked;
3. done: ``output_url`` a results zip (``{stem}_tracked.tif`` first, ``lineage.json``,
   ``01_RES/res_track.txt``), ``preview_url`` an animated GIF, ``objects`` the tracks,
   ``total_jobs`` the frames.

Register it as ``KIOSK_JOB_TYPE_PLUGINS=tracking=tests.support.tracking_standin:TrackingStandIn``
(only where a test asks for it: it would hide the real job type). With ``TEST_TRACKING_GATED``
set it stops twice, halfway through the frames and while linking, until the test pushes to
:func:`gate` for the movie's name, so a test can look at each state; otherwise each frame takes
``TEST_FRAME_SECONDS`` (0.2).
"""

from __future__ import annotations

import io
import json
import os
import time
import uuid
import zipfile
from pathlib import Path, PurePosixPath

import tifffile
from PIL import Image, ImageDraw

from consumers.base import Consumer, Job, Result
from kiosk.filetypes import FileKind, kind_from_name
from kiosk.keys import JobField, Status, file_url
from kiosk.queue import connect

PLUGIN = "tracking=tests.support.tracking_standin:TrackingStandIn"
GATE_TIMEOUT = 120
TRK_FRAMES = 4  # what the stand-in says a .trk holds (it does not read one)


def gate(name: str) -> str:
    """The Redis list a gated stand-in waits on while it works on the movie ``name``."""
    return f"test:tracking-gate:{name}"


def frame_count(path: Path) -> int:
    if kind_from_name(path.name) is FileKind.TIFF:
        with tifffile.TiffFile(path) as tiff:
            return len(tiff.pages)
    return TRK_FRAMES


def animated_preview(frames: int) -> bytes:
    """A GIF of a few outlines moving across the frames, as the real preview animates them."""
    images = []
    for t in range(frames):
        image = Image.new("RGB", (64, 48), "black")
        draw = ImageDraw.Draw(image)
        for n, colour in enumerate(("red", "lime", "cyan")):
            x = 6 + 18 * n + 2 * t
            draw.ellipse((x, 14 + 3 * n, x + 12, 26 + 3 * n), outline=colour)
        images.append(image)
    buffer = io.BytesIO()
    images[0].save(buffer, "GIF", save_all=True, append_images=images[1:], duration=200, loop=0)
    return buffer.getvalue()


def results_zip(stem: str, movie: bytes, frames: int) -> bytes:
    lineage = {
        "1": {
            "label": 1,
            "frames": list(range(frames)),
            "daughters": [],
            "capped": False,
            "frame_div": None,
            "parent": None,
        }
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{stem}_tracked.tif", movie)  # first, so ImageJ opens it
        archive.writestr("lineage.json", json.dumps(lineage))
        archive.writestr("01_RES/res_track.txt", f"1 0 {frames - 1} 0\n")
    return buffer.getvalue()


class TrackingStandIn(Consumer):
    def setup(self) -> None:
        self._redis = connect(self.settings.redis_url)

    def _pause(self, name: str) -> None:
        if os.environ.get("TEST_TRACKING_GATED"):
            self._redis.blpop([gate(name)], timeout=GATE_TIMEOUT)
        else:
            time.sleep(float(os.environ.get("TEST_FRAME_SECONDS", "0.2")))

    def process(self, job: Job) -> Result:
        name = job.get(JobField.ORIGINAL_NAME, "movie")
        with job.input_file() as path:
            frames = frame_count(path)
            movie = path.read_bytes()
        stem = PurePosixPath(name).stem or "movie"
        children = ",".join(
            f"segmentation:{stem}-frame-{t:04d}.tif:{uuid.uuid4()}" for t in range(frames)
        )
        job.update(
            **{
                JobField.STATUS: Status.WAITING,
                JobField.CHILDREN: children,
                JobField.TOTAL_JOBS: frames,
                JobField.CHILDREN_DONE: 0,
                JobField.CHILDREN_FAILED: 0,
                JobField.PROGRESS: 0,
            }
        )
        for done in range(1, frames + 1):
            if done == frames // 2 + 1:
                self._pause(name)
            else:
                time.sleep(0.05)
            job.update(**{JobField.CHILDREN_DONE: done, JobField.PROGRESS: int(99 * done / frames)})
        job.set_status(Status.POST_PROCESSING, progress=50)
        self._pause(name)
        output = job.put_output(f"{stem}_tracking.zip", results_zip(stem, movie, frames))
        preview = job.put_output(f"{stem}_preview.gif", animated_preview(frames))
        return Result(
            output,
            {
                JobField.PREVIEW_URL: file_url(self.settings.public_url, preview),
                JobField.TOTAL_JOBS: str(frames),  # as a zip does: the worker would write 1
                JobField.OBJECTS: "3",  # tracks
            },
        )
