"""The local backend with real consumer processes and a real Redis: a scale-down stops idle
consumers first, and a busy one that is stopped finishes its job instead of losing it."""

from __future__ import annotations

from pathlib import Path

from autoscaler.backends.local import LocalBackend
from kiosk.keys import JobField, Status
from kiosk.queue import JobQueue
from kiosk.storage.local import LocalBucket
from tests.helpers import submit_file
from tests.support.servers import wait_for


def backend(queue: JobQueue, env: dict[str, str], tmp_path: Path) -> LocalBackend:
    return LocalBackend(
        queue, ["slow"], env, tmp_path / "logs", model_server_health_url=None, stop_grace=10
    )


def consumers_of(queue: JobQueue, name: str) -> dict[int, tuple[str, ...]]:
    """pid -> the jobs it holds (none when idle), from the consumers' heartbeats."""
    return {beat.pid: beat.jobs for beat in queue.live_consumers().values() if beat.queue == name}


def test_a_scale_down_stops_the_idle_consumer_and_keeps_the_busy_one(
    queue: JobQueue, bucket: LocalBucket, env: dict[str, str], tmp_path: Path
) -> None:
    local = backend(queue, {**env, "TEST_SLOW_SECONDS": "4"}, tmp_path)
    try:
        local.scale_consumers("slow", 2)
        wait_for(lambda: len(consumers_of(queue, "slow")) == 2, 30, what="two consumers")
        key = submit_file(queue, bucket, "slow", "cells.tif")
        wait_for(
            lambda: (key,) in consumers_of(queue, "slow").values(),
            30,
            what="a consumer to take the job",
        )
        busy = next(pid for pid, jobs in consumers_of(queue, "slow").items() if key in jobs)

        local.scale_consumers("slow", 1)

        assert local.pids("slow") == [busy]
        assert local.replicas().consumers == {"slow": 1}
        wait_for(
            lambda: queue.get(key)[JobField.STATUS] == Status.DONE,
            30,
            what="the busy consumer to finish its job",
        )
        assert queue.get(key)[JobField.ATTEMPTS] == "1", "the job was not retried"
    finally:
        local.stop_all(timeout=20)
    assert local.replicas().consumers == {"slow": 0}


def test_stopping_a_busy_consumer_lets_it_finish_its_job(
    queue: JobQueue, bucket: LocalBucket, env: dict[str, str], tmp_path: Path
) -> None:
    local = backend(queue, {**env, "TEST_SLOW_SECONDS": "2"}, tmp_path)
    try:
        local.scale_consumers("slow", 1)
        key = submit_file(queue, bucket, "slow", "cells.tif")
        wait_for(lambda: (key,) in consumers_of(queue, "slow").values(), 30, what="the job taken")
        local.scale_consumers("slow", 0)
        wait_for(
            lambda: queue.get(key)[JobField.STATUS] == Status.DONE,
            30,
            what="the stopped consumer to finish its job within its grace",
        )
    finally:
        local.stop_all(timeout=20)
