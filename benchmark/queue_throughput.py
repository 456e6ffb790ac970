"""Queue bookkeeping throughput: enqueue -> claim -> finish with no work in between.

Kiosk's protocol (Lua scripts with fencing, attempts, TTL, index, fair share) against a raw
redis-py loop that issues the same Redis commands in the same number of round trips but checks
nothing, on one redis-server (AOF on, as the local stack runs it) in the same run, with 1 and 4
consumer processes. Kiosk runs twice: every job from one owner, and from three owners taking
turns (each claim then picks among three lines). Rounds alternate the arms so drift in the
machine hits them alike.

    python -m benchmark.queue_throughput [--jobs 4000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from benchmark.report import save, table
from benchmark.support import spread
from kiosk.jobs import JobRequest, creation_fields, now_iso
from kiosk.keys import JOB_INDEX, JobField, Status, new_job_key, processing_list
from kiosk.queue import JobQueue, connect
from tests.support.servers import RedisServer

QUEUE = "bench"
TTL = 3600


def kiosk_enqueue(url: str, n: int, owners: int = 1) -> None:
    queue = JobQueue(connect(url))
    requests = [
        JobRequest(QUEUE, "img.tif", "uploads/img.tif", owner=f"user{i}") for i in range(owners)
    ]
    for i in range(n):
        fields = creation_fields(requests[i % owners], "bench")
        queue.submit(QUEUE, new_job_key(QUEUE, "img.tif"), fields)


def kiosk_enqueue_3_owners(url: str, n: int) -> None:
    kiosk_enqueue(url, n, owners=3)


def raw_enqueue(url: str, n: int) -> None:
    client = redis.Redis.from_url(url, decode_responses=True)
    request = JobRequest(QUEUE, "img.tif", "uploads/img.tif")
    for _ in range(n):
        key = new_job_key(QUEUE, "img.tif")
        with client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=creation_fields(request, "bench"))
            pipe.zadd(JOB_INDEX, {key: time.time()})
            pipe.lpush(QUEUE, key)
            pipe.execute()


def kiosk_drain(url: str, consumer_id: str, go: mp.Event, out: mp.Queue) -> None:
    queue = JobQueue(connect(url), finished_ttl=TTL)
    done, last = 0, 0.0
    go.wait()
    while (claim := queue.claim(QUEUE, consumer_id, 0.2)) is not None:
        queue.finish(claim, consumer_id, {JobField.OUTPUT_URL: "x"})
        done, last = done + 1, time.perf_counter()
    out.put((done, last))


def raw_drain(url: str, consumer_id: str, go: mp.Event, out: mp.Queue) -> None:
    client = redis.Redis.from_url(url, decode_responses=True)
    held = processing_list(QUEUE, consumer_id)
    done, last = 0, 0.0
    go.wait()
    while (key := client.blmove(QUEUE, held, 0.2, "RIGHT", "LEFT")) is not None:
        with client.pipeline(transaction=False) as pipe:  # what _START does
            pipe.hincrby(key, JobField.ATTEMPTS, 1)
            pipe.hset(
                key,
                mapping={
                    JobField.STATUS: Status.STARTED,
                    JobField.UPDATED_AT: now_iso(),
                    JobField.UPDATED_BY: consumer_id,
                },
            )
            pipe.hgetall(key)
            pipe.execute()
        with client.pipeline(transaction=True) as pipe:  # what _FINISH does, unfenced
            pipe.lrem(held, 1, key)
            now = now_iso()
            pipe.hset(
                key,
                mapping={
                    JobField.STATUS: Status.DONE,
                    JobField.UPDATED_AT: now,
                    JobField.FINISHED_AT: now,
                    JobField.PROGRESS: "100",
                    JobField.OUTPUT_URL: "x",
                },
            )
            pipe.expire(key, TTL)
            pipe.llen(held)
            pipe.execute()
        done, last = done + 1, time.perf_counter()
    out.put((done, last))


def measure(url: str, n: int, consumers: int, enqueue: Callable, drain: Callable) -> dict:
    client = redis.Redis.from_url(url)
    client.flushall()
    started = time.perf_counter()
    enqueue(url, n)
    enqueue_s = time.perf_counter() - started
    go, out = mp.Event(), mp.Queue()
    workers = [mp.Process(target=drain, args=(url, f"c{i}", go, out)) for i in range(consumers)]
    for worker in workers:
        worker.start()
    time.sleep(0.3)  # every worker connected and waiting
    started = time.perf_counter()
    go.set()
    results = [out.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join()
    drained = sum(done for done, _ in results)
    assert drained == n, f"drained {drained} of {n}"
    drain_s = max(last for _, last in results) - started
    return {
        "enqueue_per_s": n / enqueue_s,
        "claim_finish_per_s": n / drain_s,
        "end_to_end_per_s": n / (enqueue_s + drain_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp), appendonly=True).start()
        try:
            results: dict[str, dict] = {}
            arms = {
                "raw": (raw_enqueue, raw_drain),
                "kiosk": (kiosk_enqueue, kiosk_drain),
                "kiosk_3_owners": (kiosk_enqueue_3_owners, kiosk_drain),
            }
            for consumers in (1, 4):
                runs: dict[str, list[dict]] = {arm: [] for arm in arms}
                for _ in range(args.rounds):
                    for arm, (enqueue, drain) in arms.items():
                        runs[arm].append(measure(server.url, args.jobs, consumers, enqueue, drain))
                results[f"{consumers}_consumers"] = {
                    arm: {metric: spread([r[metric] for r in rounds]) for metric in rounds[0]}
                    for arm, rounds in runs.items()
                }
        finally:
            server.stop()

    header = ["consumers", "measure", "raw redis-py /s", "kiosk /s", "kiosk, 3 owners /s"]
    rows = [[*header, "kiosk / raw", "3 owners / raw"]]
    for label, found in results.items():
        for metric in ("enqueue_per_s", "claim_finish_per_s", "end_to_end_per_s"):
            raw, kiosk, shared = (
                found[arm][metric]["median"] for arm in ("raw", "kiosk", "kiosk_3_owners")
            )
            found.setdefault("ratio", {})[metric] = kiosk / raw
            found.setdefault("ratio_3_owners", {})[metric] = shared / raw
            rows.append(
                [
                    label.split("_")[0],
                    metric.removesuffix("_per_s"),
                    *(
                        "{median:,.0f} ({min:,.0f}-{max:,.0f})".format(**found[arm][metric])
                        for arm in ("raw", "kiosk", "kiosk_3_owners")
                    ),
                    f"{kiosk / raw:.2f}",
                    f"{shared / raw:.2f}",
                ]
            )
    print(table(rows))
    path = save("queue_throughput", {"jobs": args.jobs, "rounds": args.rounds, "results": results})
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
