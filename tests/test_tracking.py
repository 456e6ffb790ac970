"""The tracking job type: fan-out of a movie's frames, fan-in that links them, the .trk path,
the tracking zip twin, the caliban alias and deleting a movie, with a real Redis."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
from fastapi.testclient import TestClient

from autoscaler.policy import total_demand
from consumers.base import Job, JobError, Result, Waiting
from consumers.processing import linking
from consumers.registry import resolve
from consumers.tracking import (
    TrackingConsumer,
    TrackingSettings,
    TrackingZipConsumer,
    frame_child_key,
    frame_upload_key,
)
from consumers.zips import ZipConsumer
from frontend.app import create_app
from kiosk.jobs import JobRequest
from kiosk.keys import (
    JobField,
    Status,
    all_queues,
    children_upload_prefix,
    validate_queue_name,
)
from kiosk.queue import Claim, JobQueue, Outcome
from kiosk.reclaim import remove_files, remove_job
from kiosk.settings import CommonSettings, ConsumerSettings, FrontendSettings
from kiosk.storage.local import LocalBucket
from tests.conftest import ServiceGroup, start_stack
from tests.helpers import submit_file
from tests.support.servers import wait_for
from tests.support.tracking import (
    frames_zip,
    label_frame,
    moving_discs,
    segment_waiting_frames,
    tiff_bytes,
    trk_bytes,
)


@pytest.fixture
def settings(redis_url: str, bucket_dir: Path) -> ConsumerSettings:
    return ConsumerSettings(
        redis_url=redis_url,
        bucket=f"file://{bucket_dir}",
        queues=("segmentation", "tracking"),
        public_url="http://kiosk",
    )


@pytest.fixture
def consumer(settings: ConsumerSettings, bucket: LocalBucket, queue: JobQueue) -> TrackingConsumer:
    return TrackingConsumer(settings, bucket, queue)


def claim_job(queue: JobQueue, bucket: LocalBucket, name: str) -> Job:
    """The next job on ``name``'s queue, as a consumer holds it."""
    claim = queue.claim(name, "t1", 1)
    assert claim is not None

    def update(fields: Mapping[str, object]) -> None:
        assert queue.update(claim, "t1", fields) is Outcome.APPLIED

    return Job(claim, bucket, update)


def park(queue: JobQueue, job: Job, waiting: Waiting) -> None:
    """Settle a fan-out as the worker does: the parent waits for its children."""
    claim = Claim(job.key, job.queue, job.fields)
    assert queue.wait_for_children(claim, "t1", waiting.fields).outcome is Outcome.APPLIED
    assert queue.get(job.key)[JobField.STATUS] == Status.WAITING


def submit_movie(
    queue: JobQueue, bucket: LocalBucket, data: bytes, name: str = "cells.tif", **options: str
) -> str:
    key = submit_file(queue, bucket, "tracking", name, data)
    if options:
        queue.redis.hset(key, mapping=options)
    return key


def fan_out(
    consumer: TrackingConsumer | TrackingZipConsumer,
    queue: JobQueue,
    bucket: LocalBucket,
    queue_name: str,
) -> Job:
    job = claim_job(queue, bucket, queue_name)
    result = consumer.process(job)
    assert isinstance(result, Waiting)
    park(queue, job, result)
    return job


def fan_in(
    consumer: TrackingConsumer | TrackingZipConsumer,
    queue: JobQueue,
    bucket: LocalBucket,
    queue_name: str,
) -> Result:
    job = claim_job(queue, bucket, queue_name)
    assert job.get(JobField.STATUS) == Status.STARTED
    result = consumer.process(job)
    assert isinstance(result, Result)
    return result


def results(bucket: LocalBucket, result: Result) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(bucket.get_bytes(result.output_file_name)))


def hyperstack(data: bytes) -> np.ndarray:
    return tifffile.imread(io.BytesIO(data))


# ----------------------------------------------------------------------------- fan-out


def test_each_frame_becomes_a_segmentation_job_of_the_movie_with_its_options(
    consumer: TrackingConsumer, queue: JobQueue, bucket: LocalBucket
) -> None:
    movie = np.stack([moving_discs(4), moving_discs(4, seed=1)], axis=1)  # TCYX
    data = tiff_bytes(movie, imagej=True, metadata={"axes": "TCYX"})
    key = submit_movie(
        queue, bucket, data, channels="1", scale="0.65", model_name="Nuclear", model_version="2"
    )
    job = fan_out(consumer, queue, bucket, "tracking")
    parent = queue.get(key)
    children = parent[JobField.CHILDREN].split(",")
    assert parent[JobField.TOTAL_JOBS] == "4" and parent[JobField.DIM_ORDER] == "TCYX"
    assert children == [frame_child_key(key, "cells", t, 4) for t in range(4)]
    assert children[2].startswith("segmentation:cells-frame-0002.tif:")
    assert sorted(queue.waiting("segmentation")) == sorted(children)
    for t, child_key in enumerate(children):
        child = queue.get(child_key)
        assert child[JobField.PARENT] == job.key
        assert child[JobField.ORIGINAL_NAME] == f"cells-frame-{t:04d}.tif"
        assert (child[JobField.DIMENSION_ORDER], child[JobField.CHANNELS]) == ("YX", "")
        assert (child[JobField.SCALE], child[JobField.MODEL_NAME]) == ("0.65", "Nuclear")
        assert child[JobField.MODEL_VERSION] == "2"
        assert JobField.CELL_WINDOWS not in child  # the feature score needs no windows
        upload = child[JobField.INPUT_FILE_NAME]
        assert upload == frame_upload_key(key, t)
        assert upload.startswith(children_upload_prefix(key))
        np.testing.assert_array_equal(hyperstack(bucket.get_bytes(upload)), movie[t, 1])


def test_a_fan_out_run_again_creates_each_frame_job_once(
    consumer: TrackingConsumer, queue: JobQueue, bucket: LocalBucket
) -> None:
    submit_movie(queue, bucket, tiff_bytes(moving_discs(5)))
    job = claim_job(queue, bucket, "tracking")
    assert isinstance(consumer.process(job), Waiting)
    ran = queue.claim("segmentation", "s1", 1)  # one frame runs meanwhile
    assert ran is not None and queue.finish(ran, "s1", {}).outcome is Outcome.APPLIED
    assert isinstance(consumer.process(job), Waiting)  # as after a crash and a requeue
    assert queue.redis.llen("segmentation") == 4
    assert len(list(bucket.list(children_upload_prefix(job.key)))) == 5


def test_a_movie_over_the_limits_is_refused_before_any_frame_is_queued(
    settings: ConsumerSettings, queue: JobQueue, bucket: LocalBucket
) -> None:
    key = submit_movie(queue, bucket, tiff_bytes(moving_discs(6)))
    limited = TrackingConsumer(settings, bucket, queue, TrackingSettings(max_frames=5))
    with pytest.raises(JobError, match=r"6 frames; the limit is 5 \(KIOSK_MAX_FRAMES\)"):
        limited.process(claim_job(queue, bucket, "tracking"))
    assert queue.redis.llen("segmentation") == 0
    assert not queue.get(key).get(JobField.CHILDREN)
    assert list(bucket.list(children_upload_prefix(key))) == []


def test_a_bad_scale_fails_the_movie_before_its_frames_are_queued(
    consumer: TrackingConsumer, queue: JobQueue, bucket: LocalBucket
) -> None:
    submit_movie(queue, bucket, tiff_bytes(moving_discs(3)), scale="-1")
    with pytest.raises(JobError, match="scale '-1' is not a pixel size"):
        consumer.process(claim_job(queue, bucket, "tracking"))
    assert queue.redis.llen("segmentation") == 0


# ----------------------------------------------------------------------------- fan-in


def test_the_frames_are_linked_into_tracks_and_one_results_zip(
    consumer: TrackingConsumer, queue: JobQueue, bucket: LocalBucket
) -> None:
    movie = moving_discs(6)
    key = submit_movie(queue, bucket, tiff_bytes(movie))
    fan_out(consumer, queue, bucket, "tracking")
    assert segment_waiting_frames(queue, bucket) == 6
    assert queue.get(key)[JobField.PROGRESS] == "99"  # the queue counted the frames' ends
    result = fan_in(consumer, queue, bucket, "tracking")
    assert result.fields[JobField.OBJECTS] == "3" and result.fields[JobField.TOTAL_JOBS] == "6"
    preview = result.fields[JobField.PREVIEW_URL]
    assert preview.startswith("http://kiosk/files/output/") and preview.endswith("_preview.gif")
    with results(bucket, result) as out:
        names = set(out.namelist())
        tracked = hyperstack(out.read("cells_tracked.tif"))
    assert {"lineage.json", "01_RES/res_track.txt", "cells_lineage.png"} <= names
    assert {f"01_RES/mask{t:03d}.tif" for t in range(6)} <= names
    assert tracked.shape == movie.shape
    for t in range(6):  # each disc keeps its track label: it overlaps itself frame to frame
        np.testing.assert_array_equal(tracked[t] > 0, label_frame(movie[t]) > 0)
        assert set(np.unique(tracked[t])) == {0, 1, 2, 3}
        if t:
            for track in (1, 2, 3):
                assert ((tracked[t] == track) & (tracked[t - 1] == track)).any()


def test_a_fan_in_run_again_after_a_crash_writes_the_same_results(
    consumer: TrackingConsumer, queue: JobQueue, bucket: LocalBucket
) -> None:
    submit_movie(queue, bucket, tiff_bytes(moving_discs(5)))
    job = fan_out(consumer, queue, bucket, "tracking")
    segment_waiting_frames(queue, bucket)
    job = claim_job(queue, bucket, "tracking")
    first = consumer.process(job)
    written = {key: bucket.get_bytes(key) for key in bucket.list("output/")}
    again = consumer.process(job)  # as after a consumer was killed before it settled the job
    assert again == first
    assert {key: bucket.get_bytes(key) for key in bucket.list("output/")} == written


def tracked_without_linking_ahead(
    settings: ConsumerSettings, queue: JobQueue, bucket: LocalBucket, movie: bytes
) -> Result:
    """The movie tracked by a consumer that links every frame in the fan-in."""
    plain = TrackingConsumer(settings, bucket, queue, TrackingSettings(link_ahead=False))
    submit_movie(queue, bucket, movie)
    fan_out(plain, queue, bucket, "tracking")
    segment_waiting_frames(queue, bucket, tables=True)
    return fan_in(plain, queue, bucket, "tracking")


def assert_same_results(bucket: LocalBucket, one: Result, other: Result) -> None:
    with results(bucket, one) as first, results(bucket, other) as second:
        assert first.namelist() == second.namelist()
        for name in first.namelist():
            assert first.read(name) == second.read(name), name


def test_a_waiting_movie_is_woken_to_link_its_segmented_frames_and_tracks_the_same(
    settings: ConsumerSettings,
    consumer: TrackingConsumer,
    queue: JobQueue,
    bucket: LocalBucket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    movie = tiff_bytes(moving_discs(20, cells=4))
    key = submit_movie(queue, bucket, movie)
    fan_out(consumer, queue, bucket, "tracking")
    assert queue.get(key)[JobField.WAKE_AT] == "10"  # half way: next_wake(0, 20)
    other = TrackingConsumer(settings, bucket, queue)  # a second tracking consumer
    for woken_on, segmented, wake_next in ((consumer, 11, "16"), (other, 5, None)):
        segment_waiting_frames(queue, bucket, tables=True, limit=segmented)
        job = claim_job(queue, bucket, "tracking")
        waiting = woken_on.process(job)
        assert isinstance(waiting, Waiting) and waiting.woken_early
        assert waiting.fields.get(JobField.WAKE_AT) == wake_next  # None: fewer than 8 left
        park(queue, job, waiting)
    # The first consumer linked frames 0-10; the second, whose memory had none, 0-15.
    assert consumer.linkers.take(key).linker.frames == 11  # type: ignore[union-attr]
    ahead = other.linkers.take(key)
    assert ahead is not None and ahead.linker.frames == 16
    consumer.linkers.keep(key, ahead)
    segment_waiting_frames(queue, bucket, tables=True)
    added: list[int] = []
    add = linking.Linker.add
    monkeypatch.setattr(
        linking.Linker, "add", lambda self, cells: (added.append(cells.frame), add(self, cells))
    )
    linked_ahead = fan_in(consumer, queue, bucket, "tracking")
    assert added == [16, 17, 18, 19] and len(consumer.linkers) == 0
    monkeypatch.undo()
    assert_same_results(
        bucket, linked_ahead, tracked_without_linking_ahead(settings, queue, bucket, movie)
    )


def test_a_movie_linked_ahead_on_a_consumer_that_lost_its_linker_tracks_the_same(
    settings: ConsumerSettings, consumer: TrackingConsumer, queue: JobQueue, bucket: LocalBucket
) -> None:
    movie = tiff_bytes(moving_discs(12))
    key = submit_movie(queue, bucket, movie)
    fan_out(consumer, queue, bucket, "tracking")
    segment_waiting_frames(queue, bucket, tables=True, limit=6)
    job = claim_job(queue, bucket, "tracking")
    park(queue, job, consumer.process(job))  # type: ignore[arg-type]
    segment_waiting_frames(queue, bucket, tables=True)
    restarted = TrackingConsumer(settings, bucket, queue)
    result = fan_in(restarted, queue, bucket, "tracking")
    assert consumer.linkers.take(key) is not None  # linked ahead there, never used
    assert_same_results(
        bucket, result, tracked_without_linking_ahead(settings, queue, bucket, movie)
    )


def test_a_frame_that_cannot_be_linked_ahead_ends_the_early_wakes_and_the_fan_in_says_why(
    consumer: TrackingConsumer, queue: JobQueue, bucket: LocalBucket
) -> None:
    key = submit_movie(queue, bucket, tiff_bytes(moving_discs(16)))
    fan_out(consumer, queue, bucket, "tracking")
    segment_waiting_frames(queue, bucket, limit=8)
    frame = queue.get(queue.get(key)[JobField.CHILDREN].split(",")[3])
    bucket.delete(frame[JobField.OUTPUT_FILE_NAME])  # its labels gone: it cannot be read
    job = claim_job(queue, bucket, "tracking")
    waiting = consumer.process(job)
    assert isinstance(waiting, Waiting) and JobField.WAKE_AT not in waiting.fields
    assert len(consumer.linkers) == 0
    park(queue, job, waiting)
    segment_waiting_frames(queue, bucket)
    with pytest.raises(JobError, match="the labels of frame 3 is no longer in the bucket"):
        consumer.process(claim_job(queue, bucket, "tracking"))


def test_the_fan_in_reads_the_frames_cells_tables_and_measures_only_without_them(
    consumer: TrackingConsumer,
    queue: JobQueue,
    bucket: LocalBucket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    submit_movie(queue, bucket, tiff_bytes(moving_discs(5)))
    fan_out(consumer, queue, bucket, "tracking")
    segment_waiting_frames(queue, bucket, tables=True)
    job = claim_job(queue, bucket, "tracking")
    tables = [key for key in bucket.list("output/") if key.endswith("_cells.npz")]
    assert len(tables) == 5

    def no_measuring(*args: object, **kwargs: object) -> None:
        raise AssertionError("a frame with a cells table was measured again")

    with monkeypatch.context() as patched:
        patched.setattr("consumers.processing.linking.measure", no_measuring)
        from_tables = consumer.process(job)
        written = {key: bucket.get_bytes(key) for key in bucket.list("output/")}
    for key in tables:  # jobs from before the tables: the fan-in measures the frames
        bucket.delete(key)
    measured = consumer.process(job)
    assert measured == from_tables
    again = {key: bucket.get_bytes(key) for key in bucket.list("output/")}
    assert again == {key: data for key, data in written.items() if key not in tables}


def test_a_frame_whose_table_says_another_size_fails_the_movie_naming_it(
    consumer: TrackingConsumer, queue: JobQueue, bucket: LocalBucket
) -> None:
    from consumers.movie_frames import cells_key, decode_cells, encode_cells

    submit_movie(queue, bucket, tiff_bytes(moving_discs(5)))
    fan_out(consumer, queue, bucket, "tracking")
    segment_waiting_frames(queue, bucket, tables=True)
    job = claim_job(queue, bucket, "tracking")
    frame_2 = queue.get(job.get(JobField.CHILDREN).split(",")[2])
    table = cells_key(frame_2[JobField.OUTPUT_FILE_NAME])
    cells, _ = decode_cells(bucket.get_bytes(table), 2, 0)
    bucket.put_bytes(table, encode_cells(cells, (10, 12)))
    with pytest.raises(JobError, match=r"frame 2 are 10 x 12 but those of frame 0 are 64 x"):
        consumer.process(job)


def test_a_failed_frame_fails_the_movie_naming_the_frame_and_why(
    consumer: TrackingConsumer, queue: JobQueue, bucket: LocalBucket
) -> None:
    submit_movie(queue, bucket, tiff_bytes(moving_discs(5)))
    fan_out(consumer, queue, bucket, "tracking")
    segment_waiting_frames(queue, bucket, fail={2: "the model server refused it", 4: "no"})
    job = claim_job(queue, bucket, "tracking")
    with pytest.raises(
        JobError,
        match=r"frame 2 \(cells-frame-0002.tif\) could not be segmented: the model server "
        r"refused it \(2 of 5 frames failed\)\. A movie is tracked only when every frame",
    ):
        consumer.process(job)


def test_a_scale_converts_the_linking_distances_to_the_movies_pixels(
    consumer: TrackingConsumer, queue: JobQueue, bucket: LocalBucket
) -> None:
    """A square that jumps 20 px a frame is one track at the model's 0.65 um/px; at 1.3 um/px
    those 20 px are 40 of the model's, past the linking reach: a new track each frame."""
    movie = np.full((4, 40, 160), 100, np.uint16)
    for t in range(4):
        movie[t, 15:25, 10 + 20 * t : 20 + 20 * t] = 2000
    for scale, tracks in (("0.65", "1"), ("1.3", "4")):
        submit_movie(queue, bucket, tiff_bytes(movie), scale=scale)
        fan_out(consumer, queue, bucket, "tracking")
        segment_waiting_frames(queue, bucket)
        assert fan_in(consumer, queue, bucket, "tracking").fields[JobField.OBJECTS] == tracks


# ----------------------------------------------------------------------------- .trk


def test_a_trk_is_tracked_again_from_its_labels_in_one_step(
    consumer: TrackingConsumer, queue: JobQueue, bucket: LocalBucket
) -> None:
    movie = moving_discs(5)
    labels = np.stack([label_frame(frame) for frame in movie])[..., None].astype(np.int32)
    submit_movie(queue, bucket, trk_bytes(movie[..., None], labels), name="cells.trk")
    result = consumer.process(claim_job(queue, bucket, "tracking"))
    assert isinstance(result, Result) and result.fields[JobField.OBJECTS] == "3"
    assert queue.redis.llen("segmentation") == 0  # nothing segmented
    with results(bucket, result) as out:
        tracked = hyperstack(out.read("cells_tracked.tif"))
    np.testing.assert_array_equal(tracked > 0, labels[..., 0] > 0)


def test_each_movie_of_a_trks_gets_a_folder(
    consumer: TrackingConsumer, queue: JobQueue, bucket: LocalBucket
) -> None:
    movies = np.stack([moving_discs(4, seed=s) for s in range(2)])
    labels = np.stack([[label_frame(f) for f in m] for m in movies])[..., None].astype(np.int32)
    submit_movie(queue, bucket, trk_bytes(movies[..., None], labels, several=True), "set.trks")
    result = consumer.process(claim_job(queue, bucket, "tracking"))
    assert isinstance(result, Result) and result.fields[JobField.OBJECTS] == "6"
    with results(bucket, result) as out:
        names = out.namelist()
    assert "movie_000/set_tracked.tif" in names and "movie_001/lineage.json" in names


# ----------------------------------------------------------------------------- zips


@pytest.fixture
def zip_consumer(settings: ConsumerSettings, bucket: LocalBucket, queue: JobQueue):
    return TrackingZipConsumer(settings, bucket, queue)


def test_a_zip_of_frames_is_one_movie_in_the_natural_order_of_its_names(
    zip_consumer: TrackingZipConsumer, queue: JobQueue, bucket: LocalBucket
) -> None:
    movie = moving_discs(11)
    data = frames_zip(movie, lambda t: f"t{t}.tif")  # t2 before t10
    key = submit_file(queue, bucket, "tracking", "run.zip", data)
    assert key.startswith("tracking-zip:")
    fan_out(zip_consumer, queue, bucket, "tracking-zip")
    children = queue.get(key)[JobField.CHILDREN].split(",")
    assert len(children) == 11 and all(c.startswith("segmentation:run-frame-") for c in children)
    inputs = [queue.get(c)[JobField.INPUT_FILE_NAME] for c in children]
    for t, upload in enumerate(inputs):
        np.testing.assert_array_equal(hyperstack(bucket.get_bytes(upload)), movie[t])
    segment_waiting_frames(queue, bucket)
    result = fan_in(zip_consumer, queue, bucket, "tracking-zip")
    assert result.fields[JobField.OBJECTS] == "3"
    with results(bucket, result) as out:
        assert hyperstack(out.read("run_tracked.tif")).shape == movie.shape


def test_a_zip_of_movies_becomes_a_tracking_job_per_movie_and_a_zip_of_their_results(
    consumer: TrackingConsumer,
    zip_consumer: TrackingZipConsumer,
    queue: JobQueue,
    bucket: LocalBucket,
) -> None:
    members = {"a.tif": tiff_bytes(moving_discs(3)), "b/c.tif": tiff_bytes(moving_discs(4))}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, member in members.items():
            archive.writestr(name, member)
    key = submit_file(queue, bucket, "tracking", "movies.zip", buffer.getvalue())
    fan_out(zip_consumer, queue, bucket, "tracking-zip")
    children = queue.get(key)[JobField.CHILDREN].split(",")
    assert [c.split(":")[:2] for c in children] == [["tracking", "a.tif"], ["tracking", "b/c.tif"]]
    assert queue.redis.llen("tracking") == 2 and queue.redis.llen("segmentation") == 0
    for _ in children:  # each movie fans out its frames, then links them
        fan_out(consumer, queue, bucket, "tracking")
    segment_waiting_frames(queue, bucket)
    for _ in children:
        movie = claim_job(queue, bucket, "tracking")
        result = consumer.process(movie)
        assert isinstance(result, Result)
        assert (
            queue.finish(
                Claim(movie.key, movie.queue, movie.fields),
                "t1",
                {JobField.OUTPUT_FILE_NAME: result.output_file_name},
            ).outcome
            is Outcome.APPLIED
        )
    result = fan_in(zip_consumer, queue, bucket, "tracking-zip")
    with results(bucket, result) as out:
        assert sorted(out.namelist()) == ["a_labels.zip", "b/c_labels.zip"]
        with zipfile.ZipFile(io.BytesIO(out.read("b/c_labels.zip"))) as movie_results:
            assert hyperstack(movie_results.read("c_tracked.tif")).shape == (4, 64, 80)


def test_a_frame_of_a_zip_that_cannot_be_used_fails_the_movie(
    zip_consumer: TrackingZipConsumer, queue: JobQueue, bucket: LocalBucket
) -> None:
    data = io.BytesIO(frames_zip(moving_discs(3)))
    with zipfile.ZipFile(data, "a") as archive:
        archive.writestr("frame3.tif", b"")
        archive.writestr("notes.txt", b"not a frame, and not missed")
    submit_file(queue, bucket, "tracking", "run.zip", data.getvalue())
    with pytest.raises(JobError, match=r"frame 'frame3.tif' of the movie cannot be read: empty"):
        zip_consumer.process(claim_job(queue, bucket, "tracking-zip"))
    assert queue.redis.llen("segmentation") == 0


def test_a_zip_mixing_frames_and_movies_is_refused(
    zip_consumer: TrackingZipConsumer, queue: JobQueue, bucket: LocalBucket
) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("frame.tif", tiff_bytes(moving_discs(1)[0]))
        archive.writestr("movie.tif", tiff_bytes(moving_discs(3)))
    submit_file(queue, bucket, "tracking", "mixed.zip", buffer.getvalue())
    with pytest.raises(JobError, match=r"mixes single frames \('frame.tif'\) with movies"):
        zip_consumer.process(claim_job(queue, bucket, "tracking-zip"))


def test_tracking_and_its_zips_have_their_consumers() -> None:
    assert resolve("tracking") is TrackingConsumer
    assert resolve("tracking-zip") is TrackingZipConsumer
    assert resolve("segmentation-zip") is ZipConsumer
    assert "tracking" in CommonSettings.model_fields["queues"].default  # kiosk up serves it


# ----------------------------------------------------------------------------- autoscaling


def test_a_movie_is_tracking_demand_until_it_waits_then_only_its_frames_are(
    consumer: TrackingConsumer, queue: JobQueue, bucket: LocalBucket
) -> None:
    """What the autoscaler sees (queued + in flight, over every queue it watches): a waiting
    movie holds no consumer, so it is no demand; its frames are, then its fan-in is."""
    watched = all_queues(("segmentation", "tracking"))

    def demand() -> dict[str, int]:
        return {s.queue: s.demand for s in queue.stats(watched) if s.demand}

    submit_movie(queue, bucket, tiff_bytes(moving_discs(5)))
    assert demand() == {"tracking": 1}
    job = claim_job(queue, bucket, "tracking")
    assert demand() == {"tracking": 1}  # in flight
    result = consumer.process(job)
    assert isinstance(result, Waiting)
    park(queue, job, result)
    assert demand() == {"segmentation": 5}
    assert total_demand(queue.stats(watched)) == 5
    segment_waiting_frames(queue, bucket)
    assert demand() == {"tracking": 1}  # back for its fan-in


# ----------------------------------------------------------------------------- caliban


def test_caliban_is_another_name_for_tracking_never_a_queue(
    redis_url: str, bucket_dir: Path, queue: JobQueue
) -> None:
    assert JobRequest("caliban", "m.tif", "uploads/x.tif").queue == "tracking"
    assert JobRequest("caliban", "m.zip", "uploads/x.zip").queue == "tracking-zip"
    with pytest.raises(ValueError, match="another name for the 'tracking' job type"):
        validate_queue_name("caliban")
    settings = FrontendSettings(
        redis_url=redis_url,
        bucket=f"file://{bucket_dir}",
        queues=("segmentation", "tracking"),
        public_url="http://testserver",
    )
    with TestClient(create_app(settings)) as api:
        data = tiff_bytes(moving_discs(3))
        created = api.post(
            "/api/v1/jobs", data={"job_type": "caliban"}, files={"file": ("m.tif", data)}
        )
        assert created.status_code == 201, created.text
        assert created.json()["id"].startswith("tracking:m.tif:")
        uploaded = api.post("/api/upload", files={"file": ("n.tif", data)}).json()
        legacy = api.post(
            "/api/predict",
            json={
                "jobType": "caliban",
                "imageName": "n.tif",
                "uploadedName": uploaded["uploadedName"],
            },
        )
        assert legacy.status_code == 200, legacy.text
    assert queue.redis.llen("tracking") == 2


# ----------------------------------------------------------------------------- deletion


def test_deleting_a_movie_removes_its_frames_jobs_and_every_file(
    consumer: TrackingConsumer, queue: JobQueue, bucket: LocalBucket
) -> None:
    key = submit_movie(queue, bucket, tiff_bytes(moving_discs(4)))
    fan_out(consumer, queue, bucket, "tracking")
    segment_waiting_frames(queue, bucket)
    fan_in(consumer, queue, bucket, "tracking")
    children = queue.get(key)[JobField.CHILDREN].split(",")
    files = remove_job(queue, key, queue.get(key))
    remove_files(queue, bucket, files)
    assert all(queue.get(k) is None for k in [key, *children])
    assert list(bucket.list()) == []


def test_deleting_a_zip_of_movies_removes_the_movies_frames_too(
    consumer: TrackingConsumer,
    zip_consumer: TrackingZipConsumer,
    queue: JobQueue,
    bucket: LocalBucket,
) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.tif", tiff_bytes(moving_discs(3)))
    key = submit_file(queue, bucket, "tracking", "movies.zip", buffer.getvalue())
    fan_out(zip_consumer, queue, bucket, "tracking-zip")
    fan_out(consumer, queue, bucket, "tracking")  # the movie's own frames
    segment_waiting_frames(queue, bucket)
    (movie,) = queue.get(key)[JobField.CHILDREN].split(",")
    frames = queue.get(movie)[JobField.CHILDREN].split(",")
    remove_files(queue, bucket, remove_job(queue, key, queue.get(key)))
    assert all(queue.get(k) is None for k in [key, movie, *frames])
    assert list(bucket.list()) == []


# ----------------------------------------------------------------------------- processes


def test_a_zip_of_frames_submitted_as_caliban_is_tracked_by_real_consumers(
    env: dict, queue: JobQueue, bucket: LocalBucket, processes: ServiceGroup
) -> None:
    env = {
        **env,
        "KIOSK_QUEUES": "segmentation,tracking",
        "KIOSK_JOB_TYPE_PLUGINS": "segmentation=tests.support.tracking:ThresholdSegmentation",
    }
    stack = start_stack(
        env, queue, processes, {"segmentation": 2, "tracking": 1, "tracking-zip": 1}
    )
    data = frames_zip(moving_discs(8))
    created = httpx.post(
        f"{stack.url}/api/v1/jobs",
        data={"job_type": "caliban"},
        files={"file": ("cells.zip", data)},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    key = created.json()["id"]
    wait_for(lambda: queue.get(key)[JobField.STATUS] in ("done", "failed"), timeout=60)
    job = queue.get(key)
    assert job[JobField.STATUS] == "done", job
    assert job[JobField.OBJECTS] == "3" and job[JobField.CHILDREN_DONE] == "8"
    output = httpx.get(job[JobField.OUTPUT_URL], timeout=30)
    with zipfile.ZipFile(io.BytesIO(output.content)) as out:
        assert hyperstack(out.read("cells_tracked.tif")).shape == (8, 64, 80)
    assert httpx.get(job[JobField.PREVIEW_URL], timeout=30).content[:4] == b"GIF8"
