"""Tracking through a real `kiosk up`: Redis, the janitor, the embedded model server with the
bundled nuclear model, the frontend and the segmentation, tracking and zip consumers as one
process tree, driven over HTTP like a user. Generated movies are scored against their exact
ground truth; bad movies fail with reasons that say what to do; consumers SIGKILLed while the
frames are segmented or while the movie is linked leave it done once, as if nothing happened.

One stack serves the module (the model server takes a while to start); every test waits for
its own jobs to end, so each starts from an idle stack.
"""

from __future__ import annotations

import io
import os
import signal
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile

from consumers.ctc import parse_tracks
from evaluation.movies import Movie, generate_movie
from evaluation.tracking_quality import score_tracking
from kiosk.keys import WOKEN, JobField, Status
from kiosk.queue import JobQueue, connect
from local.client import KioskClient
from tests.support.kiosk_up import KioskUp
from tests.support.servers import wait_for
from tests.support.tracking import frames_zip, tiff_bytes, trk_bytes

MAX_FRAMES = 100


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KioskUp]:
    up = KioskUp(
        tmp_path_factory.mktemp("tracking-stack"),
        KIOSK_QUEUES="segmentation,tracking",
        KIOSK_EMBEDDED_MODEL_SERVER="true",
        KIOSK_MAX_FRAMES=str(MAX_FRAMES),
    ).start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def queue(stack: KioskUp) -> JobQueue:
    return JobQueue(connect(stack.redis_url()))


@pytest.fixture
def client(stack: KioskUp) -> Iterator[KioskClient]:
    with KioskClient(stack.url) as kiosk:
        yield kiosk


def submit(client: KioskClient, tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return client.submit(path, "tracking")["id"]


def ended(client: KioskClient, job_id: str, timeout: float = 300) -> dict:
    return client.wait([job_id], interval=0.2, timeout=timeout)[job_id]


def done(client: KioskClient, job_id: str, timeout: float = 300) -> dict:
    job = ended(client, job_id, timeout)
    assert job["status"] == Status.DONE, job.get("reason")
    return job


def contents(client: KioskClient, job_id: str, tmp_path: Path) -> dict[str, bytes]:
    """The results zip's members, by name."""
    saved = client.download(job_id, tmp_path / job_id.rsplit(":", 1)[1])
    with zipfile.ZipFile(saved) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def movie_tiff(movie: Movie) -> bytes:
    return tiff_bytes(movie.images, imagej=True, metadata={"axes": "TYX"})


def ctc_result(members: dict[str, bytes], frames: int) -> tuple[np.ndarray, dict]:
    tracks = parse_tracks(members["01_RES/res_track.txt"].decode())
    masks = np.stack(
        [tifffile.imread(io.BytesIO(members[f"01_RES/mask{t:03d}.tif"])) for t in range(frames)]
    )
    return masks, tracks


def tracked(members: dict[str, bytes], stem: str) -> np.ndarray:
    return tifffile.imread(io.BytesIO(members[f"{stem}_tracked.tif"]))


# ----------------------------------------------------------------------------- movies


def test_a_generated_movie_is_segmented_by_the_model_and_tracked_end_to_end(
    client: KioskClient, queue: JobQueue, stack: KioskUp, tmp_path: Path
) -> None:
    """The CTC result in the zip scores against the generator's exact ground truth
    (deterministic: the same movie and model every run)."""
    movie = generate_movie(3, frames=12, shape=(192, 192))
    job = done(client, submit(client, tmp_path, "live.tif", movie_tiff(movie)))
    assert job["children"] == {"total": 12, "done": 12, "failed": 0, "unit": "frames"}
    # Each frame's job kept its cells table for the fan-in, and no preview of its own.
    frames = queue.get_many(queue.get(job["id"])[JobField.CHILDREN].split(","))
    for frame in frames:
        assert not frame.get(JobField.PREVIEW_URL), frame
        labels = stack.data_dir / "bucket" / frame[JobField.OUTPUT_FILE_NAME]
        assert labels.with_name(labels.name.replace("_labels.tif", "_cells.npz")).is_file()
    masks, tracks = ctc_result(contents(client, job["id"], tmp_path), 12)
    scores = score_tracking(movie.labels, movie.tracks, masks, tracks)
    assert scores.true_divisions >= 2  # the seed's movie has divisions to find
    assert scores.tra >= 0.98 and scores.division_f1 >= 0.85, scores  # the feature's targets


def test_a_zip_of_the_frames_is_tracked_as_the_movie_itself(
    client: KioskClient, tmp_path: Path
) -> None:
    movie = generate_movie(4, frames=8, shape=(160, 160))
    as_tiff = submit(client, tmp_path, "run.tif", movie_tiff(movie))
    as_zip = submit(client, tmp_path, "run.zip", frames_zip(movie.images, lambda t: f"t{t}.tif"))
    assert as_zip.startswith("tracking-zip:")
    from_tiff, from_zip = (
        contents(client, done(client, k)["id"], tmp_path) for k in [as_tiff, as_zip]
    )
    assert tracked(from_zip, "run").shape == (8, 160, 160)
    np.testing.assert_array_equal(tracked(from_zip, "run"), tracked(from_tiff, "run"))
    assert from_zip["lineage.json"] == from_tiff["lineage.json"]


def test_a_trk_is_tracked_again_from_its_labels_without_segmenting(
    client: KioskClient, queue: JobQueue, tmp_path: Path
) -> None:
    movie = generate_movie(5, frames=10, shape=(160, 160))
    data = trk_bytes(movie.images[..., None], movie.labels[..., None])
    job = done(client, submit(client, tmp_path, "cells.trk", data))
    assert not queue.get(job["id"]).get(JobField.CHILDREN)  # no frame was segmented
    masks, tracks = ctc_result(contents(client, job["id"], tmp_path), 10)
    np.testing.assert_array_equal(masks > 0, movie.labels > 0)  # the given labels, as they are
    scores = score_tracking(movie.labels, movie.tracks, masks, tracks)
    assert scores.tra >= 0.99, scores


# ----------------------------------------------------------------------------- bad movies


def test_a_volume_over_time_is_refused_naming_its_z_axis(
    client: KioskClient, queue: JobQueue, tmp_path: Path
) -> None:
    volume = np.zeros((3, 4, 32, 32), np.uint16)
    data = tiff_bytes(volume, imagej=True, metadata={"axes": "TZYX"})
    job = ended(client, submit(client, tmp_path, "volume.tif", data))
    assert job["status"] == Status.FAILED
    assert "has a Z axis of 4 planes (axes TZYX)" in job["reason"]
    assert "not volumes" in job["reason"]
    assert not queue.get(job["id"]).get(JobField.CHILDREN)


def test_a_movie_over_kiosk_max_frames_is_refused_before_any_frame_is_segmented(
    client: KioskClient, queue: JobQueue, tmp_path: Path
) -> None:
    frames = np.zeros((MAX_FRAMES + 1, 32, 32), np.uint16)
    job = ended(client, submit(client, tmp_path, "long.tif", tiff_bytes(frames)))
    assert job["status"] == Status.FAILED
    assert (
        f"{MAX_FRAMES + 1} frames; the limit is {MAX_FRAMES} (KIOSK_MAX_FRAMES)" in (job["reason"])
    )
    assert not queue.get(job["id"]).get(JobField.CHILDREN)


def test_one_corrupt_frame_fails_a_zip_of_frames_naming_it(
    client: KioskClient, queue: JobQueue, tmp_path: Path
) -> None:
    movie = generate_movie(6, frames=6, shape=(96, 96))
    data = io.BytesIO(frames_zip(movie.images[:5]))
    with zipfile.ZipFile(data, "a") as archive:
        archive.writestr("frame5.tif", tiff_bytes(movie.images[5])[:200])  # cut off
    job = ended(client, submit(client, tmp_path, "cut.zip", data.getvalue()))
    assert job["status"] == Status.FAILED
    assert job["reason"].startswith("frame 5 ('frame5.tif'): 'frame5.tif' is truncated")
    assert job["reason"].endswith("Upload the complete file again.")
    assert not queue.get(job["id"]).get(JobField.CHILDREN)  # found before any frame was queued


# ----------------------------------------------------------------------------- crashes


def consumer_pid(stack: KioskUp, queue_name: str) -> int:
    (pid,) = [
        p for p, cmd in stack.children().items() if cmd.split()[-2:] == ["consumers", queue_name]
    ]
    return pid


def kill_consumer_when(stack: KioskUp, queue_name: str, moment: Callable[[], bool]) -> None:
    """SIGKILL the ``queue_name`` consumer as soon as ``moment()`` holds; wait for its
    replacement."""
    victim = consumer_pid(stack, queue_name)
    wait_for(moment, 120, 0.002, f"the moment to kill the {queue_name} consumer")
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: consumer_pid(stack, queue_name) != victim, 60, what="the consumer restarted")


def assert_done_once(queue: JobQueue, stack: KioskUp, key: str, frames: int) -> None:
    """Done, every frame counted once, one results zip; and it stays so (nothing left to
    redo it after the janitor looked again)."""
    job = queue.get(key)
    assert job[JobField.STATUS] == Status.DONE, job.get(JobField.REASON)
    assert (job[JobField.CHILDREN_DONE], job.get(JobField.CHILDREN_FAILED, "0")) == (
        str(frames),
        "0",
    )
    outputs = stack.data_dir / "bucket" / "output" / key.rsplit(":", 1)[1]
    assert len(list(outputs.rglob("*.zip"))) == 1
    time.sleep(2.0)  # more than the heartbeat TTL and the janitor's interval
    assert queue.get(key) == job
    queues = ["tracking", "tracking-zip", "segmentation", "segmentation-zip"]
    assert sum(stats.demand for stats in queue.stats(queues)) == 0


def dense_movie() -> Movie:
    """Crowded and long enough that linking is seen in Redis (progress 45-59 while
    post-processing) for a few tenths of a second."""
    return generate_movie(7, frames=50, shape=(256, 256), coverage=0.4, diameter=12.0)


def test_a_segmentation_consumer_killed_mid_movie_leaves_the_movie_done_once_and_the_same(
    stack: KioskUp, client: KioskClient, queue: JobQueue, tmp_path: Path
) -> None:
    movie = generate_movie(8, frames=24, shape=(192, 192))
    key = submit(client, tmp_path, "crash.tif", movie_tiff(movie))

    def a_frame_in_the_model() -> bool:
        """Some frames done, and one in the model server now: the kill interrupts it."""
        fields = queue.get(key) or {}
        if fields.get(JobField.STATUS) != Status.WAITING:
            return False
        if not 3 <= int(fields.get(JobField.CHILDREN_DONE, "0")) < 20:
            return False
        children = queue.get_many(fields[JobField.CHILDREN].split(","))
        return any(c and c.get(JobField.STATUS) == Status.PREDICTING for c in children)

    kill_consumer_when(stack, "segmentation", a_frame_in_the_model)
    done(client, key)
    assert "consumer-segmentation-0 exited with code -9; restarting" in stack.output()
    assert_done_once(queue, stack, key, 24)
    children = queue.get(key)[JobField.CHILDREN].split(",")
    attempts = [int(queue.get(c)[JobField.ATTEMPTS]) for c in children]
    # The frame in the model ran again, once (and the one before it, if it was still being
    # finished: a consumer writes one job's results while the next predicts).
    assert set(attempts) == {1, 2} and attempts.count(2) <= 2, attempts
    again = done(client, submit(client, tmp_path, "crash.tif", movie_tiff(movie)))["id"]
    assert contents(client, key, tmp_path) == contents(client, again, tmp_path)


@pytest.mark.parametrize("moment", ["linking ahead", "the fan-in"])
def test_a_tracking_consumer_killed_while_linking_leaves_the_movie_done_once_and_the_same(
    stack: KioskUp, client: KioskClient, queue: JobQueue, tmp_path: Path, moment: str
) -> None:
    movie = dense_movie()
    key = submit(client, tmp_path, "dense.tif", movie_tiff(movie))

    def linking_ahead() -> bool:
        """Woken early, held by the tracking consumer while frames are still segmented."""
        fields = queue.get(key) or {}
        return (
            fields.get(JobField.WAKE_AT) == WOKEN
            and fields.get(JobField.STATUS) == Status.STARTED
            and int(fields.get(JobField.CHILDREN_DONE, "0")) < 45
        )

    def in_the_fan_in() -> bool:
        """Every frame segmented; the last frames being linked or the results written."""
        fields = queue.get(key) or {}
        return (
            fields.get(JobField.STATUS) == Status.POST_PROCESSING
            and 0 < int(fields.get(JobField.PROGRESS, "0")) < 95
        )

    kill_consumer_when(
        stack, "tracking", linking_ahead if moment == "linking ahead" else in_the_fan_in
    )
    done(client, key)
    assert "consumer-tracking-0 exited with code -9; restarting" in stack.output()
    assert_done_once(queue, stack, key, 50)
    if moment == "the fan-in":
        assert queue.get(key)[JobField.ATTEMPTS] == "2"  # interrupted, then run again
    again = done(client, submit(client, tmp_path, "dense.tif", movie_tiff(movie)))["id"]
    assert contents(client, key, tmp_path) == contents(client, again, tmp_path)
