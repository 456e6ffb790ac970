"""The worker in-process: what it records in metrics, and how it stops."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from consumers.base import Job, Result
from consumers.metrics import ConsumerMetrics
from consumers.worker import Worker
from kiosk.jobs import Stages
from kiosk.keys import JobField, Status, processing_list
from kiosk.queue import Claim, JobQueue
from kiosk.settings import ConsumerSettings
from kiosk.storage.local import LocalBucket
from tests.helpers import submit_file
from tests.support.jobtypes import EVENTS, Echo, FinishesBehind, Slow
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
    assert queue.waiting("slow") == [key]


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


# ---------------------------------------------------------------------- finishing behind


def events(queue: JobQueue) -> list[str]:
    return queue.redis.lrange(EVENTS, 0, -1)


def behind_worker(queue: JobQueue, bucket: LocalBucket, settings: ConsumerSettings, **kw) -> Worker:
    return Worker(FinishesBehind(settings, bucket), queue, "behind", settings, **kw)


def test_the_next_job_runs_while_the_last_one_finishes(
    queue: JobQueue,
    bucket: LocalBucket,
    settings: ConsumerSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_FINISH_SECONDS", "1")
    registry = CollectorRegistry()
    first, second = (submit_file(queue, bucket, "behind", f"{i}.tif") for i in range(2))
    worker = behind_worker(queue, bucket, settings, metrics=ConsumerMetrics(registry))
    thread = start(worker)
    most_held = 0

    def both_done() -> bool:
        nonlocal most_held
        beats = queue.live_consumers().values()
        most_held = max([most_held, *(len(beat.jobs) for beat in beats)])
        return all(queue.get(k)[JobField.STATUS] == Status.DONE for k in (first, second))

    wait_for(both_done, 20, interval=0.05, what="both jobs done")
    worker.stop(grace=5)
    thread.join(10)
    log = events(queue)
    assert log.index(f"process {second}") < log.index(f"finished {first}"), log
    assert log.index(f"finished {first}") < log.index(f"finish {second}"), "one finish at a time"
    assert most_held == 2, "the heartbeat lists both jobs while they overlap"
    assert sample(registry, "kiosk_consumer_jobs_total", queue="behind", outcome="done") == 2
    assert sample(registry, "kiosk_consumer_busy", queue="behind") == 0
    for key in (first, second):
        job = queue.get(key)
        assert job[JobField.OUTPUT_FILE_NAME].endswith("result.bin")
        assert float(job[JobField.UPLOAD_TIME]) > 0, "the finish's stage times are kept"


def test_stop_with_no_grace_hands_back_the_finishing_job_and_the_next(
    queue: JobQueue,
    bucket: LocalBucket,
    settings: ConsumerSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_FINISH_SECONDS", "30")
    keys = [submit_file(queue, bucket, "behind", f"{i}.tif") for i in range(3)]
    worker = behind_worker(queue, bucket, settings)
    thread = start(worker)
    # The first job finishes (slowly); the second is processed and waits its turn to finish.
    wait_for(lambda: f"process {keys[1]}" in events(queue), 20, what="the second job taken")
    worker.stop(grace=0)
    thread.join(10)
    assert not thread.is_alive()
    for key in keys:
        fields = queue.get(key)
        assert (fields[JobField.STATUS], fields[JobField.ATTEMPTS]) == (Status.NEW, "0"), key
    assert sorted(queue.waiting("behind")) == sorted(keys)


class DeletedWhileWriting(Echo):
    """Writes two results; its job is deleted between them, as a DELETE can arrive while a
    consumer uploads (the second write, in the same stage, writes no status to notice it)."""

    def process(self, job: Job) -> Result:
        labels = job.put_output("labels.tif", b"labels")
        assert self.queue is not None
        self.queue.delete(job.key, job.queue)
        job.put_output("preview.png", b"preview")
        return Result(labels)


def test_results_written_by_a_job_deleted_while_it_ran_are_removed(
    queue: JobQueue, bucket: LocalBucket, settings: ConsumerSettings
) -> None:
    registry = CollectorRegistry()
    key = submit_file(queue, bucket, "echo")
    consumer = DeletedWhileWriting(settings, bucket, queue)
    worker = Worker(consumer, queue, "echo", settings, ConsumerMetrics(registry))
    thread = start(worker)
    wait_for(
        lambda: (
            sample(registry, "kiosk_consumer_jobs_total", queue="echo", outcome="cancelled") == 1
        ),
        20,
        what="the cancellation counted",
    )
    worker.stop(grace=0)
    thread.join(10)
    assert queue.get(key) is None
    assert list(bucket.list("output/")) == []


def test_stopping_lets_the_finishing_job_complete_within_the_grace(
    queue: JobQueue,
    bucket: LocalBucket,
    settings: ConsumerSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_FINISH_SECONDS", "1")
    key = submit_file(queue, bucket, "behind")
    worker = behind_worker(queue, bucket, settings)
    thread = start(worker)
    wait_for(lambda: f"finish {key}" in events(queue), 20, what="the finish started")
    worker.stop(grace=10)
    thread.join(15)
    assert not thread.is_alive()
    assert queue.get(key)[JobField.STATUS] == Status.DONE


@pytest.mark.parametrize(
    ("marker", "attempts", "why"),
    [
        (b"FINISH-FAILS", "1", "unusable: submit it again"),
        (b"FINISH-CRASHES", "3", "simulated crash while finishing (gave up after 3 of 3"),
    ],
)
def test_an_error_while_finishing_settles_the_job_like_one_in_process(
    queue: JobQueue,
    bucket: LocalBucket,
    settings: ConsumerSettings,
    monkeypatch: pytest.MonkeyPatch,
    marker: bytes,
    attempts: str,
    why: str,
) -> None:
    """A user's error fails at once; any other error is retried until attempts run out."""
    monkeypatch.setenv("TEST_FINISH_SECONDS", "0")
    key = submit_file(queue, bucket, "behind", data=marker)
    worker = behind_worker(queue, bucket, settings)
    thread = start(worker)
    wait_for(lambda: queue.get(key)[JobField.STATUS] == Status.FAILED, 20, what="the job failed")
    worker.stop(grace=0)
    thread.join(10)
    job = queue.get(key)
    assert why in job[JobField.REASON]
    assert job[JobField.ATTEMPTS] == attempts
    assert queue.redis.llen(processing_list("behind", worker.consumer_id)) == 0
