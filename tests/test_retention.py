"""Storage retention on the local stack: the janitor deletes files under uploads/ and output/
older than KIOSK_RETENTION, keeps fresh ones and inputs of jobs that have not ended, and logs
what it reclaimed; a gs:// bucket is left to its lifecycle rules."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from kiosk.janitor import Janitor, reclaim_interval, retention_bucket
from kiosk.keys import JobField, output_prefix
from kiosk.queue import JobQueue
from kiosk.reclaim import Reclaimed
from kiosk.settings import JanitorSettings
from kiosk.storage.local import LocalBucket
from tests.conftest import ServiceGroup
from tests.helpers import submit_file
from tests.support import services
from tests.support.servers import wait_for

HOUR = 3600


def aged(bucket: LocalBucket, key: str, seconds: float) -> str:
    """Make an object look last written ``seconds`` ago."""
    path = bucket.local_path(key)
    assert path is not None
    then = time.time() - seconds
    os.utime(path, (then, then))
    return key


def janitor_settings(redis_url: str, bucket_dir: Path, retention: int) -> JanitorSettings:
    return JanitorSettings(
        redis_url=redis_url, bucket=f"file://{bucket_dir}", queues=("echo",), retention=retention
    )


def test_old_files_go_and_fresh_ones_and_inputs_of_unfinished_jobs_stay(
    queue: JobQueue,
    bucket: LocalBucket,
    redis_url: str,
    bucket_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    finished = submit_file(queue, bucket, "echo", "done.tif", b"II*\x00done")
    claim = queue.claim("echo", "c1", 1)
    labels = output_prefix(claim.key) + "done_labels.tif"
    bucket.put_bytes(labels, b"labels")
    queue.finish(claim, "c1", {JobField.OUTPUT_FILE_NAME: labels})
    queued = submit_file(queue, bucket, "echo", "queued.tif", b"II*\x00queued")  # for 2 h
    for key in (queue.get(finished)[JobField.INPUT_FILE_NAME], labels):
        aged(bucket, key, 2 * HOUR)
    aged(bucket, queue.get(queued)[JobField.INPUT_FILE_NAME], 2 * HOUR)
    bucket.put_bytes("uploads/never-submitted.tif", b"orphan")  # /api/upload, no /api/predict
    aged(bucket, "uploads/never-submitted.tif", 2 * HOUR)
    writer = bucket.open_write("uploads/abandoned.tif")  # a process died mid-upload
    writer.write(b"partial")
    writer._file.close()  # type: ignore[attr-defined]  # left as a crash leaves it
    (partial,) = bucket.list_partials("uploads/")
    aged(bucket, partial.key, 2 * HOUR)
    bucket.put_bytes("output/fresh/labels.tif", b"new")
    bucket.put_bytes("uploads/fresh.tif", b"new")
    bucket.put_bytes("models/M/1/saved_model.pb", b"weights")
    aged(bucket, "models/M/1/saved_model.pb", 2 * HOUR)

    janitor = Janitor(queue, janitor_settings(redis_url, bucket_dir, HOUR), bucket)
    with caplog.at_level(logging.INFO, logger="janitor"):
        reclaimed = janitor.reclaim()

    assert reclaimed == Reclaimed(files=4, bytes=8 + 6 + 6 + 7, kept=1)
    assert sorted(bucket.list()) == sorted(
        [
            "models/M/1/saved_model.pb",
            "output/fresh/labels.tif",
            "uploads/fresh.tif",
            queue.get(queued)[JobField.INPUT_FILE_NAME],
        ]
    )
    assert list(bucket.list_partials()) == []
    assert not (bucket.root / output_prefix(finished)).exists()  # no empty folder left
    (line,) = [r.getMessage() for r in caplog.records if "reclaimed" in r.getMessage()]
    assert "reclaimed 4 files (27 bytes)" in line
    assert "not written for 1 hour (KIOSK_RETENTION)" in line
    assert "kept 1 inputs of jobs that have not ended" in line


def test_the_janitor_expires_files_as_they_age_past_a_short_retention(
    env: dict, bucket: LocalBucket, processes: ServiceGroup
) -> None:
    bucket.put_bytes("uploads/old.tif", b"old")
    aged(bucket, "uploads/old.tif", HOUR)
    janitor = processes.add(services.janitor({**env, "KIOSK_RETENTION": "3"}, processes.log_dir))
    wait_for(lambda: not bucket.exists("uploads/old.tif"), 20, what="the old file reclaimed")
    bucket.put_bytes("output/job/fresh.tif", b"fresh")
    time.sleep(1.5)
    assert bucket.exists("output/job/fresh.tif"), "younger than the retention: it stays"
    wait_for(lambda: not bucket.exists("output/job/fresh.tif"), 20, what="it reclaimed in turn")
    log = janitor.log()
    assert "go 3 seconds after they were last written (KIOSK_RETENTION)" in log
    assert "reclaimed 1 files (3 bytes)" in log and "reclaimed 1 files (5 bytes)" in log


def test_a_gs_bucket_and_a_zero_retention_are_left_alone(
    queue: JobQueue, redis_url: str, bucket_dir: Path, bucket: LocalBucket
) -> None:
    settings = JanitorSettings(redis_url=redis_url, bucket="gs://kiosk-bucket", retention=60)
    assert retention_bucket(settings) is None  # its lifecycle rules expire its files
    bucket.put_bytes("uploads/old.tif", b"old")
    aged(bucket, "uploads/old.tif", HOUR)
    forever = Janitor(queue, janitor_settings(redis_url, bucket_dir, 0), bucket)
    forever.sweep()
    assert forever.reclaim() == Reclaimed() and bucket.exists("uploads/old.tif")


def test_files_are_looked_for_a_tenth_of_the_retention_apart_within_bounds() -> None:
    assert reclaim_interval(259200, 2.0) == 600  # 3 days: every ten minutes
    assert reclaim_interval(600, 2.0) == 60
    assert reclaim_interval(3, 2.0) == 2.0  # never more often than the janitor sweeps
