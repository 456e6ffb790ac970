"""Consumers as real processes: crashes, freezes, shutdowns and failing jobs, with the janitor
running beside them. Nothing is lost and nothing is finished twice."""

from __future__ import annotations

import signal
import time

from kiosk.keys import JobField, Status, dead_letter_list, heartbeat_key
from kiosk.queue import JobQueue
from kiosk.storage.local import LocalBucket
from tests.conftest import ServiceGroup
from tests.helpers import TIFF, submit_file
from tests.support import services
from tests.support.jobtypes import COMPLETIONS
from tests.support.servers import wait_for


def status_of(queue: JobQueue, key: str) -> str | None:
    fields = queue.get(key)
    return fields.get(JobField.STATUS) if fields else None


def completions(queue: JobQueue, key: str) -> int:
    return int(queue.redis.hget(COMPLETIONS, key) or 0)


def slow_job_in_progress(
    queue: JobQueue,
    bucket: LocalBucket,
    env: dict,
    processes: ServiceGroup,
    seconds: float,
    queued_behind: tuple[str, ...] = (),
    **consumer_env: str,
) -> tuple[str, services.Service, list[str]]:
    """A slow job, the consumer that has started on it, and jobs queued behind it."""
    key = submit_file(queue, bucket, "slow")
    behind = [submit_file(queue, bucket, "slow", name) for name in queued_behind]
    consumer = processes.add(
        services.consumer(
            "slow", {**env, "TEST_SLOW_SECONDS": str(seconds), **consumer_env}, processes.log_dir
        )
    )
    wait_for(lambda: int(queue.get(key).get(JobField.PROGRESS, 0)) > 0, 20, what="work started")
    return key, consumer, behind


def test_a_consumer_finishes_jobs_with_output_and_timings(
    queue: JobQueue, bucket: LocalBucket, env: dict, processes: ServiceGroup
) -> None:
    keys = [submit_file(queue, bucket, "echo", f"{i}.tif") for i in range(3)]
    processes.add(services.consumer("echo", env, processes.log_dir))
    for key in keys:
        wait_for(lambda k=key: status_of(queue, k) == Status.DONE, 20, what=f"{key} done")
    fields = queue.get(keys[0])
    assert bucket.get_bytes(fields[JobField.OUTPUT_FILE_NAME]) == TIFF
    assert fields[JobField.OUTPUT_URL].endswith(fields[JobField.OUTPUT_FILE_NAME])
    for timing in (
        JobField.DOWNLOAD_TIME,
        JobField.PREDICTION_TIME,
        JobField.UPLOAD_TIME,
        JobField.TOTAL_TIME,
    ):
        assert float(fields[timing]) >= 0
    assert fields[JobField.TOTAL_JOBS] == "1"
    assert queue.redis.ttl(keys[0]) > 0


def test_a_consumer_killed_mid_job_has_its_job_completed_exactly_once(
    queue: JobQueue, bucket: LocalBucket, env: dict, processes: ServiceGroup
) -> None:
    processes.add(services.janitor(env, processes.log_dir))
    key, doomed, _ = slow_job_in_progress(queue, bucket, env, processes, 30)
    doomed.signal(signal.SIGKILL)
    processes.add(
        services.consumer("slow", {**env, "TEST_SLOW_SECONDS": "0.5"}, processes.log_dir, index=1)
    )
    wait_for(lambda: status_of(queue, key) == Status.DONE, 30, what="the job done")
    fields = queue.get(key)
    assert completions(queue, key) == 1
    assert fields[JobField.ATTEMPTS] == "2"
    assert "stopped responding" in fields[JobField.LAST_ERROR]
    assert queue.redis.llen("slow") == 0


def test_a_frozen_consumer_that_wakes_up_cannot_finish_the_job_again(
    queue: JobQueue, bucket: LocalBucket, env: dict, processes: ServiceGroup
) -> None:
    processes.add(services.janitor(env, processes.log_dir))
    key, frozen, _ = slow_job_in_progress(queue, bucket, env, processes, 2)
    frozen.signal(signal.SIGSTOP)  # like a long GC pause or a network partition
    processes.add(
        services.consumer("slow", {**env, "TEST_SLOW_SECONDS": "0.5"}, processes.log_dir, index=1)
    )
    wait_for(lambda: status_of(queue, key) == Status.DONE, 30, what="the job done")
    finished = queue.get(key)
    frozen.signal(signal.SIGCONT)
    wait_for(
        lambda: "taken over" in frozen.log() or "abandoned" in frozen.log(),
        20,
        what="the woken consumer to give up the job",
    )
    time.sleep(0.5)
    after = queue.get(key)
    assert after[JobField.FINISHED_AT] == finished[JobField.FINISHED_AT]
    assert after[JobField.UPDATED_BY] == finished[JobField.UPDATED_BY]
    assert after[JobField.STATUS] == Status.DONE


def test_sigterm_hands_an_unfinished_job_back_without_burning_an_attempt(
    queue: JobQueue, bucket: LocalBucket, env: dict, processes: ServiceGroup
) -> None:
    key, leaving, _ = slow_job_in_progress(
        queue, bucket, env, processes, 30, KIOSK_SHUTDOWN_GRACE="0.5"
    )
    started = time.monotonic()
    leaving.signal(signal.SIGTERM)
    assert leaving.process.wait(15) == 0
    assert time.monotonic() - started < 10
    fields = queue.get(key)
    assert (fields[JobField.STATUS], fields[JobField.ATTEMPTS]) == (Status.NEW, "0")
    assert queue.waiting("slow") == [key]
    processes.add(
        services.consumer("slow", {**env, "TEST_SLOW_SECONDS": "0.3"}, processes.log_dir, index=1)
    )
    wait_for(lambda: status_of(queue, key) == Status.DONE, 20, what="the job done")
    assert queue.get(key)[JobField.ATTEMPTS] == "1"
    assert completions(queue, key) == 1


def test_sigterm_lets_a_job_finish_within_the_grace_period(
    queue: JobQueue, bucket: LocalBucket, env: dict, processes: ServiceGroup
) -> None:
    key, leaving, (second,) = slow_job_in_progress(
        queue, bucket, env, processes, 1.5, ("second.tif",), KIOSK_SHUTDOWN_GRACE="20"
    )
    leaving.signal(signal.SIGTERM)
    assert leaving.process.wait(20) == 0
    assert status_of(queue, key) == Status.DONE
    untouched = queue.get(second)  # not claimed after the signal
    assert untouched[JobField.STATUS] == Status.NEW and untouched[JobField.ATTEMPTS] == "0"
    assert JobField.IDENTITY_STARTED not in untouched
    assert not list(queue.redis.scan_iter(heartbeat_key("*")))  # cleared on a clean exit


def test_an_idle_consumer_stops_promptly_on_sigterm(env: dict, processes: ServiceGroup) -> None:
    idle = processes.add(services.consumer("echo", env, processes.log_dir))
    wait_for(lambda: "serving queue" in idle.log(), 20, what="the consumer to start")
    started = time.monotonic()
    idle.signal(signal.SIGTERM)
    assert idle.process.wait(10) == 0
    assert time.monotonic() - started < 5


def test_a_job_that_always_fails_is_failed_after_n_attempts_and_dead_lettered(
    queue: JobQueue, bucket: LocalBucket, env: dict, processes: ServiceGroup
) -> None:
    key = submit_file(queue, bucket, "fails")
    processes.add(services.consumer("fails", {**env, "KIOSK_MAX_ATTEMPTS": "3"}, processes.log_dir))
    wait_for(lambda: status_of(queue, key) == Status.FAILED, 30, what="the job failed")
    fields = queue.get(key)
    assert fields[JobField.ATTEMPTS] == "3"
    assert fields[JobField.REASON] == (
        "RuntimeError: simulated failure: this job type always fails "
        "(gave up after 3 of 3 attempts)"
    )
    assert queue.dead_letters("fails")[0]["key"] == key
    assert queue.redis.llen(dead_letter_list("fails")) == 1
    assert bucket.exists(fields[JobField.INPUT_FILE_NAME])  # the input is kept


def test_bad_input_fails_at_once_with_a_reason_and_keeps_the_input(
    queue: JobQueue, bucket: LocalBucket, env: dict, processes: ServiceGroup
) -> None:
    key = submit_file(queue, bucket, "echo", "broken.tif", TIFF[:8] + b"CORRUPT")
    processes.add(services.consumer("echo", env, processes.log_dir))
    wait_for(lambda: status_of(queue, key) == Status.FAILED, 20, what="the job failed")
    fields = queue.get(key)
    assert fields[JobField.REASON] == "broken.tif is corrupt: export it again"
    assert fields[JobField.ATTEMPTS] == "1"
    assert bucket.exists(fields[JobField.INPUT_FILE_NAME])


def test_a_job_deleted_while_running_is_abandoned(
    queue: JobQueue, bucket: LocalBucket, env: dict, processes: ServiceGroup
) -> None:
    key, worker, (nxt,) = slow_job_in_progress(queue, bucket, env, processes, 3, ("next.tif",))
    queue.delete(key, "slow")
    wait_for(lambda: "deleted or expired" in worker.log(), 20, what="the consumer to notice")
    wait_for(lambda: status_of(queue, nxt) == Status.DONE, 20, what="it to go on to the next")
    assert queue.get(key) is None  # not recreated by a late write
    assert completions(queue, key) == 0


def test_a_consumer_for_an_unknown_queue_exits_with_a_clear_error(
    env: dict, processes: ServiceGroup
) -> None:
    lonely = processes.add(services.consumer("nope", env, processes.log_dir))
    assert lonely.process.wait(20) == 2
    assert "not among KIOSK_QUEUES" in lonely.log()
