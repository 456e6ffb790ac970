"""1,000 jobs submitted concurrently through the HTTP API: 1,000 done, none lost or repeated."""

from __future__ import annotations

import asyncio

import httpx

from kiosk.keys import JobField, Status
from kiosk.queue import JobQueue
from tests.conftest import ServiceGroup, start_stack
from tests.helpers import TIFF
from tests.support.jobtypes import COMPLETIONS
from tests.support.servers import wait_for

JOBS = 1000
CONCURRENCY = 64


async def submit_all(url: str) -> list[str]:
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def submit(i: int) -> str:
            async with gate:
                response = await client.post(
                    "/api/v1/jobs",
                    data={"job_type": "echo"},
                    files={"file": (f"img-{i:04d}.tif", TIFF + i.to_bytes(4, "big"))},
                )
                assert response.status_code == 201, response.text
                return response.json()["id"]

        return await asyncio.gather(*(submit(i) for i in range(JOBS)))


def test_a_thousand_concurrent_submissions_are_all_done_exactly_once(
    env: dict, queue: JobQueue, processes: ServiceGroup
) -> None:
    # A realistic heartbeat here: with the tests' 1.5 s one, a consumer starved of CPU by this
    # load can lapse, and the janitor rightly runs its job again elsewhere (covered on its own).
    stack = start_stack({**env, "KIOSK_HEARTBEAT_TTL": "20"}, queue, processes, {"echo": 3})
    ids = asyncio.run(submit_all(stack.url))
    assert len(set(ids)) == JOBS

    redis = stack.queue.redis

    def statuses() -> list[str | None]:
        with redis.pipeline(transaction=False) as pipe:
            for key in ids:
                pipe.hget(key, JobField.STATUS)
            return pipe.execute()

    wait_for(
        lambda: all(s == Status.DONE for s in statuses()),
        180,
        interval=0.5,
        what="all 1,000 jobs done",
    )
    counts = redis.hgetall(COMPLETIONS)
    repeated = {key: (n, redis.hgetall(key)) for key, n in counts.items() if n != "1"}
    assert len(counts) == JOBS and not repeated
    assert redis.llen("echo") == 0
    assert not [k for k in redis.scan_iter("processing-echo:*") if redis.llen(k)]
    listed = httpx.get(f"{stack.url}/api/v1/jobs", params={"limit": 500, "status": "done"})
    assert len(listed.json()["jobs"]) == 500
    sample = stack.queue.get(ids[123])
    result = httpx.get(sample[JobField.OUTPUT_URL])
    assert result.content == TIFF + (123).to_bytes(4, "big")
