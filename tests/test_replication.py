"""Writes that wait for a replica (Redis WAIT after the script): with KIOSK_REDIS_MIN_REPLICAS
a job's creation and every end of a claim are answered only once a replica has them; when no
replica answers in time the write stands on the master, the answer is the usual one, and a
warning says so. A real master and a real replica; the replica is frozen with SIGSTOP."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from frontend.app import create_app
from kiosk.keys import JobField, Status
from kiosk.queue import Claim, JobQueue, Settled, connect
from kiosk.settings import CommonSettings, FrontendSettings
from tests.support.sentinel import FAST_SYNC, replicas_acknowledging
from tests.support.servers import RedisServer, wait_for
from tests.test_api_v1 import create
from tests.test_queue import submit


class Replicated:
    """A master and one replica of it."""

    def __init__(self, directory: Path) -> None:
        self.master = RedisServer(directory / "master", extra_args=FAST_SYNC).start()
        self.replica = RedisServer(
            directory / "replica",
            extra_args=[*FAST_SYNC, "--replicaof", "127.0.0.1", str(self.master.port)],
        ).start()
        wait_for(lambda: replicas_acknowledging(self.master, 1), 20, what="the replica to sync")

    def queue(self, min_replicas: int = 1, timeout: float = 0.3) -> JobQueue:
        client = connect(self.master.url)
        return JobQueue(client, min_replicas=min_replicas, replica_timeout=timeout)

    def freeze_replica(self) -> None:
        assert self.replica.process is not None
        self.replica.process.send_signal(signal.SIGSTOP)

    def thaw_replica(self) -> None:
        assert self.replica.process is not None
        self.replica.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.thaw_replica()
        self.replica.kill()
        self.master.kill()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Replicated]:
    servers = Replicated(tmp_path)
    yield servers
    servers.stop()


def test_a_submission_is_answered_once_the_replica_has_it(pair: Replicated) -> None:
    queue = pair.queue(timeout=30)
    pair.freeze_replica()
    answered: list[str] = []
    submitting = threading.Thread(target=lambda: answered.append(submit(queue)))
    submitting.start()
    time.sleep(0.5)
    assert answered == [], "answered while the only replica could not have the job"
    pair.thaw_replica()
    submitting.join(10)
    (key,) = answered
    # No waiting here: the answer came after the replica acknowledged the job.
    assert pair.replica.client().hget(key, JobField.STATUS) == Status.NEW
    assert queue.unreplicated == 0


def test_without_a_replica_in_time_the_job_stands_on_the_master_and_a_warning_says_so(
    pair: Replicated, caplog: pytest.LogCaptureFixture
) -> None:
    queue = pair.queue(timeout=0.3)
    pair.freeze_replica()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="kiosk.queue"):
        key = submit(queue)
    assert time.monotonic() - started >= 0.3
    assert queue.waiting("echo") == [key]
    assert queue.unreplicated == 1
    assert f"{key}: 0 of 1 replicas acknowledged the write within 0.3s" in caplog.text


def _claimed(queue: JobQueue, consumer: str = "c1") -> Claim:
    submit(queue)
    claim = queue.claim("echo", consumer, 1)
    assert claim is not None
    return claim


REPLICA_WAIT = 1.0
"""Long enough for a healthy replica to acknowledge on a busy 2-core machine (0.2 s was missed
there once), short enough that a frozen one costs a second a write."""

ENDINGS: dict[str, Callable[[JobQueue, Claim], Settled]] = {
    "finish": lambda q, c: q.finish(c, "c1", {JobField.OUTPUT_URL: "x"}),
    "fail": lambda q, c: q.fail(c, "c1", "bad input"),
    "retry": lambda q, c: q.retry(c, "c1", "crashed"),
    "hand_back": lambda q, c: q.hand_back(c, "c1"),
    "wait_for_children": lambda q, c: q.wait_for_children(c, "c1", {JobField.TOTAL_JOBS: 2}),
}


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_every_end_of_a_claim_waits_for_a_replica(pair: Replicated, ending: str) -> None:
    queue = pair.queue(timeout=REPLICA_WAIT)
    claim = _claimed(queue)
    assert queue.unreplicated == 0
    pair.freeze_replica()
    settled = ENDINGS[ending](queue, claim)
    assert settled.still_held == 0
    assert queue.unreplicated == 1  # it waited, and said the replica did not answer
    pair.thaw_replica()


def test_deleting_and_zip_children_wait_for_a_replica_too(pair: Replicated) -> None:
    queue = pair.queue(timeout=REPLICA_WAIT)
    key = submit(queue)
    parent = submit(queue, "echo-zip", "images.zip")
    pair.freeze_replica()
    assert queue.delete(key, "echo")
    queue.submit_ended_child(
        "echo", "echo:bad.tif:1", {JobField.STATUS: Status.FAILED, JobField.PARENT: parent}
    )
    assert queue.unreplicated == 2


def test_a_single_redis_never_waits(pair: Replicated) -> None:
    """The default for a redis:// URL: no WAIT, so a frozen replica delays nothing."""
    settings = CommonSettings(redis_url=pair.master.url)
    queue = JobQueue.from_settings(settings)
    assert queue.min_replicas == 0
    pair.freeze_replica()
    started = time.monotonic()
    key = submit(queue)
    assert time.monotonic() - started < 0.25
    assert queue.waiting("echo") == [key]
    assert queue.unreplicated == 0


def test_a_script_the_master_forgot_is_loaded_again(pair: Replicated) -> None:
    """A new master after a failover may not know the scripts (EVALSHA: NOSCRIPT)."""
    queue = pair.queue()
    submit(queue)
    queue.redis.script_flush()
    key = submit(queue)
    assert queue.waiting("echo")[-1] == key
    assert queue.unreplicated == 0


def test_the_api_creates_the_job_when_no_replica_answers_in_time(
    pair: Replicated, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The job exists on the master and will run: the API answers 201 as usual."""
    settings = FrontendSettings(
        redis_url=pair.master.url,
        redis_min_replicas=1,
        redis_replica_timeout=0.2,
        bucket=f"file://{tmp_path / 'bucket'}",
        queues=("echo",),
        public_url="http://testserver",
    )
    pair.freeze_replica()
    with TestClient(create_app(settings)) as api, caplog.at_level(logging.WARNING):
        response = create(api)
    assert response.status_code == 201, response.text
    job = response.json()
    assert JobQueue(pair.master.client()).waiting("echo") == [job["id"]]
    assert "0 of 1 replicas acknowledged" in caplog.text
