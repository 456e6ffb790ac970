"""The worker in-process: what it records in metrics, and how it stops."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from consumers.base import Job
from consumers.metrics import ConsumerMetrics
from consumers.worker import Worker
from kiosk.jobs import JobField, Stages, Status
from kiosk.queue import Claim, JobQueue
from kiosk.settings import ConsumerSettings
from kiosk.storage.local import LocalBucket
from tests.helpers import submit_file
from tests.support.jobtypes import Echo, Slow
from tests.support.servers import wait_for


@pytest.fixture
def settings(redis_url: str, bucket_dir: Path) -> ConsumerSettings:
    return ConsumerSettings(
        redis_url=redis_url,
        bucket=f"file://{bucket_dir}",
        queues=("echo", "slow"),
        heartbeat_interval=0.2,
        heartbeat_ttl=2,
        claim_timeout=0.2,
    )


def start(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return thread


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_metrics_count_outcomes_and_time_stages(
    queue: JobQueue, bucket: LocalBucket, settings: ConsumerSettings
) -> None:
    registry = CollectorRegistry()
    keys = [submit_file(queue, bucket, "echo", f"{i}.tif") for i in range(3)]
    worker = Worker(Echo(settings, bucket), queue, "echo", settings, ConsumerMetrics(registry))
    thread = start(worker)
    wait_for(
        lambda: all(queue.get(k)[JobField.STATUS] == Status.DONE for k in keys),
        20,
        what="the jobs done",
    )
    worker.stop(grace=5)
    thread.join(10)
    assert sample(registry, "kiosk_consumer_jobs_total", queue="echo", outcome="done") == 3
    for stage in ("download", "predict", "upload"):
        assert (
            sample(
                registry, "kiosk_consumer_stage_duration_seconds_count", queue="echo", stage=stage
            )
            == 3
        )
    assert sample(registry, "kiosk_consumer_busy", queue="echo") == 0


def test_a_job_deleted_while_it_runs_counts_as_cancelled(
    queue: JobQueue,
    bucket: LocalBucket,
    settings: ConsumerSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_SLOW_SECONDS", "3")
    registry = CollectorRegistry()
    key = submit_file(queue, bucket, "slow")
    worker = Worker(Slow(settings, bucket), queue, "slow", settings, ConsumerMetrics(registry))
    thread = start(worker)
    wait_for(lambda: int(queue.get(key).get(JobField.PROGRESS, 0)) > 0, 20, what="work started")
    queue.delete(key, "slow")
    wait_for(
        lambda: (
            sample(registry, "kiosk_consumer_jobs_total", queue="slow", outcome="cancelled") == 1
        ),
        20,
        what="the cancellation counted",
    )
    worker.stop(grace=0)
    thread.join(10)
    assert not thread.is_alive()


def test_stop_with_no_grace_hands_the_job_back(
    queue: JobQueue,
    bucket: LocalBucket,
    settings: ConsumerSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_SLOW_SECONDS", "30")
    key = submit_file(queue, bucket, "slow")
    worker = Worker(Slow(settings, bucket), queue, "slow", settings)
    thread = start(worker)
    wait_for(lambda: int(queue.get(key).get(JobField.PROGRESS, 0)) > 0, 20, what="work started")
    worker.stop(grace=0)
    thread.join(10)
    assert not thread.is_alive()
    fields = queue.get(key)
    assert (fields[JobField.STATUS], fields[JobField.ATTEMPTS]) == (Status.NEW, "0")
    assert queue.redis.lrange("slow", 0, -1) == [key]


def test_stage_times_ride_with_the_next_status_write() -> None:
    writes: list[dict] = []
    claim = Claim("echo:a.tif:0", "echo", {JobField.STATUS: Status.NEW})
    job = Job(claim, bucket=None, update=lambda fields: writes.append(dict(fields)))  # type: ignore[arg-type]
    with job.stage(Stages.DOWNLOAD):
        pass
    assert writes == [{JobField.STATUS: Status.STARTED}]
    job.record_times({Stages.PREDICT: 0.5, Stages.POSTPROCESS: 0.25})
    assert len(writes) == 1, "timing a stage costs no write of its own"
    job.set_status(Status.SAVING_RESULTS)
    assert writes[1][JobField.STATUS] == Status.SAVING_RESULTS
    assert {JobField.DOWNLOAD_TIME, JobField.PREDICTION_TIME, JobField.POSTPROCESS_TIME} <= set(
        writes[1]
    )
    with job.stage(Stages.UPLOAD):  # already showing saving-results: no write
        pass
    assert len(writes) == 2
    assert set(job.unwritten()) == {JobField.UPLOAD_TIME}
    assert job.unwritten() == {}


def test_a_failed_job_keeps_the_times_of_its_stages(
    queue: JobQueue, bucket: LocalBucket, settings: ConsumerSettings
) -> None:
    key = submit_file(queue, bucket, "echo", "bad.tif", data=b"CORRUPT image")
    worker = Worker(Echo(settings, bucket), queue, "echo", settings)
    thread = start(worker)
    wait_for(lambda: queue.get(key)[JobField.STATUS] == Status.FAILED, 20, what="the job failed")
    worker.stop(grace=5)
    thread.join(10)
    job = queue.get(key)
    assert "corrupt" in job[JobField.REASON]
    assert float(job[JobField.DOWNLOAD_TIME]) > 0
