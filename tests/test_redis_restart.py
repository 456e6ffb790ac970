"""Redis restarted under load: consumers reconnect and every job is done, none lost."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from kiosk.keys import JobField, Status, parse_processing_list
from kiosk.queue import JobQueue, connect
from kiosk.storage.local import LocalBucket
from tests.conftest import ServiceGroup
from tests.helpers import submit_file
from tests.support import services
from tests.support.servers import RedisServer, wait_for


def done_count(queue: JobQueue, keys: list[str]) -> int:
    with queue.redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hget(key, JobField.STATUS)
        return sum(status == Status.DONE for status in pipe.execute())


@pytest.mark.parametrize(
    ("how", "appendfsync"),
    [("graceful", "everysec"), ("crash", "always")],
)
def test_consumers_ride_out_a_redis_restart_and_nothing_is_lost(
    tmp_path: Path,
    bucket: LocalBucket,
    bucket_dir: Path,
    processes: ServiceGroup,
    how: str,
    appendfsync: str,
) -> None:
    server = RedisServer(tmp_path / "redis", appendonly=True, appendfsync=appendfsync).start()
    try:
        queue = JobQueue(connect(server.url), finished_ttl=3600)
        env = {**services.service_env(server.url, bucket_dir), "TEST_SLOW_SECONDS": "0.05"}
        processes.add(services.janitor(env, processes.log_dir))
        for i in range(2):
            processes.add(services.consumer("slow", env, processes.log_dir, index=i))
        keys = [submit_file(queue, bucket, "slow", f"{i}.tif") for i in range(150)]
        wait_for(lambda: done_count(queue, keys) >= 20, 60, what="some jobs done")

        server.stop() if how == "graceful" else server.kill()
        server.start()  # same port, same directory: Redis replays its AOF
        queue = JobQueue(connect(server.url), finished_ttl=3600)
        keys += [submit_file(queue, bucket, "slow", f"late-{i}.tif") for i in range(50)]

        wait_for(
            lambda: done_count(queue, keys) == len(keys),
            120,
            interval=0.5,
            what="every job done after the restart",
        )
        assert queue.redis.llen("slow") == 0
        held = [
            k
            for k in queue.redis.scan_iter("processing-*")
            if parse_processing_list(k) and queue.redis.llen(k)
        ]
        assert held == []
        assert all(service.alive() for service in processes.started)
        processes.stop_all()
    finally:
        server.kill()


def test_a_consumer_told_to_stop_while_redis_is_down_still_stops(
    tmp_path: Path, bucket_dir: Path, processes: ServiceGroup
) -> None:
    server = RedisServer(tmp_path / "redis").start()
    env = services.service_env(server.url, bucket_dir)
    consumer = processes.add(services.consumer("echo", env, processes.log_dir))
    wait_for(lambda: "serving queue" in consumer.log(), 20, what="the consumer to start")
    server.kill()
    started = time.monotonic()
    consumer.signal(signal.SIGTERM)
    assert consumer.process.wait(30) == 0
    assert time.monotonic() - started < 15
