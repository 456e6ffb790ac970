"""Per-job overhead of the whole path, HTTP -> Redis -> consumer -> storage, with a trivial job.

A real frontend, janitor and consumers run as processes over a real redis-server and a local
bucket; the job copies its 64 KiB input to its output. Baselines measured in the same run:
a bare HTTP round trip to the same frontend, and the job's own work as the consumer timed it.

1. Latency: jobs one at a time. Per job, the client's submit time (upload + create) plus the
   server's created_at -> finished_at, less the work itself, is what Kiosk adds.
2. Throughput: jobs submitted 64 at a time with 1 and 4 consumers, first submit to last finish,
   and the CPU each part of Kiosk spent per job (from /proc). On a small machine the wall-clock
   rate is bounded by the load generator sharing the CPUs; CPU per job is what scales.

Each figure is the median (min-max) over ``--rounds`` rounds of round trips, jobs one at a time
and a burst, on the same services.

    python -m benchmark.http_overhead [--sequential 150] [--burst 600] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx

from benchmark.report import median, percentile, save, table
from benchmark.support import spread, spread_text
from kiosk.keys import JobField, Status
from kiosk.queue import JobQueue, connect
from tests.support import services
from tests.support.servers import RedisServer, wait_for

PAYLOAD = b"II*\x00" + os.urandom(64 * 1024)
BOUNDARY = "kiosk-benchmark-boundary"


def multipart(job_type: str, name: str, data: bytes) -> tuple[bytes, dict[str, str]]:
    """One request body, encoded once: the load generator must not be what is measured."""
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="job_type"\r\n\r\n{job_type}\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    return body, {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


BODY, HEADERS = multipart("echo", "cells.tif", PAYLOAD)


def cluster_env(redis_url: str, bucket: Path) -> dict[str, str]:
    env = services.with_public_url(services.service_env(redis_url, bucket))
    for name in (
        "KIOSK_HEARTBEAT_INTERVAL",
        "KIOSK_HEARTBEAT_TTL",
        "KIOSK_CLAIM_TIMEOUT",
        "KIOSK_JANITOR_INTERVAL",
    ):
        env.pop(name)  # production defaults
    env["KIOSK_LOG_LEVEL"] = "WARNING"
    return env


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_part(parts: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in parts.items()}


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def round_trips(client: httpx.Client, n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        client.get("/api/health-check").raise_for_status()
        times.append(time.perf_counter() - started)
    return times


def sequential(client: httpx.Client, queue: JobQueue, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"submit": [], "server": [], "work": [], "overhead": []}
    for _ in range(n):
        started = time.perf_counter()
        response = client.post("/api/v1/jobs", content=BODY, headers=HEADERS)
        submit = time.perf_counter() - started
        key = response.json()["id"]
        fields = wait_for(
            lambda k=key: (f := queue.get(k)) and f.get(JobField.STATUS) == Status.DONE and f,
            30,
            interval=0.002,
            what="the job",
        )
        server = seconds_between(fields[JobField.CREATED_AT], fields[JobField.FINISHED_AT])
        work = float(fields[JobField.TOTAL_TIME])
        for name, value in (
            ("submit", submit),
            ("server", server),
            ("work", work),
            ("overhead", submit + server - work),
        ):
            out[name].append(value)
    return out


async def burst(url: str, n: int) -> tuple[list[str], float]:
    async with httpx.AsyncClient(
        base_url=url, timeout=120, limits=httpx.Limits(max_connections=64)
    ) as client:
        gate = asyncio.Semaphore(64)

        async def one() -> str:
            async with gate:
                r = await client.post("/api/v1/jobs", content=BODY, headers=HEADERS)
                r.raise_for_status()
                return r.json()["id"]

        started = time.time()
        return await asyncio.gather(*(one() for _ in range(n))), started


def throughput(url: str, queue: JobQueue, n: int, parts: dict[str, list[int]]) -> dict:
    """Jobs per second for a burst, and each part's CPU milliseconds per job."""
    before = cpu_by_part(parts)
    keys, started = asyncio.run(burst(url, n))

    def finished() -> list[str] | None:
        with queue.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(key, JobField.FINISHED_AT)
            stamps = pipe.execute()
        return stamps if all(stamps) else None

    stamps = wait_for(finished, 600, interval=0.2, what="the burst")
    last = max(datetime.fromisoformat(s).timestamp() for s in stamps)
    after = cpu_by_part(parts)
    return {
        "jobs_per_s": n / (last - started),
        "cpu_ms_per_job": {k: (after[k] - before[k]) / n * 1000 for k in parts},
    }


def one_round(
    client: httpx.Client,
    url: str,
    queue: JobQueue,
    frontend_pid: int,
    args: argparse.Namespace,
    parts: dict[str, list[int]],
) -> dict:
    """Round trips, jobs one at a time, then a burst: one round's figures."""
    cpu_before = cpu_seconds(frontend_pid)
    rtt = round_trips(client, 300)
    rtt_cpu_ms = (cpu_seconds(frontend_pid) - cpu_before) / 300 * 1000
    seq = sequential(client, queue, args.sequential)
    return {
        "rtt": rtt,
        "rtt_cpu_ms": rtt_cpu_ms,
        "seq": seq,
        "burst": throughput(url, queue, args.burst, parts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequential", type=int, default=150)
    parser.add_argument("--burst", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3, help="figures are medians over rounds")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        server = RedisServer(tmp_path / "redis", appendonly=True).start()
        group: list[services.Service] = []
        try:
            env = cluster_env(server.url, tmp_path / "bucket")
            logs = tmp_path / "logs"
            group.append(services.janitor(env, logs))
            frontend, url = services.frontend(env, logs)
            group.append(frontend)
            group.append(services.consumer("echo", env, logs))
            queue = JobQueue(connect(server.url))
            parts = {
                "frontend": [frontend.pid],
                "consumers": [group[-1].pid],
                "redis": [server.process.pid],
            }
            with httpx.Client(base_url=url, timeout=60) as client:
                round_trips(client, 50)  # warm up
                sequential(client, queue, 20)
                rounds = [
                    one_round(client, url, queue, frontend.pid, args, parts)
                    for _ in range(args.rounds)
                ]
            group += [services.consumer("echo", env, logs, index=i) for i in (1, 2, 3)]
            parts["consumers"] = [s.pid for s in group[2:]]
            time.sleep(2)
            bursts4 = [throughput(url, queue, args.burst, parts) for _ in range(args.rounds)]
        finally:
            for service in group:
                service.stop()
            server.stop()

    def per_round(figure: Callable[[dict], float]) -> list[float]:
        return [figure(r) for r in rounds]

    rtt_ms = per_round(lambda r: median(r["rtt"]) * 1000)
    overhead_ratio = per_round(lambda r: median(r["seq"]["overhead"]) / median(r["rtt"]))
    rows = [["per job (sequential)", "ms, median of rounds (min-max)", "x HTTP round trip"]]
    for name in ("submit", "server", "work", "overhead"):
        ms = per_round(lambda r, n=name: median(r["seq"][n]) * 1000)
        ratio = per_round(lambda r, n=name: median(r["seq"][n]) / median(r["rtt"]))
        rows.append([name, spread_text(ms, 1), spread_text(ratio, 1)])
    rows.append(["HTTP round trip (baseline)", spread_text(rtt_ms, 2), "1.0"])
    print(f"{args.rounds} rounds of {args.sequential} jobs one at a time (each round's median)")
    print(table(rows))
    print()
    cpu = {
        part: per_round(lambda r, p=part: r["burst"]["cpu_ms_per_job"][p])
        for part in ("frontend", "consumers", "redis")
    }
    bare = per_round(lambda r: r["rtt_cpu_ms"])
    frontend_ratio = per_round(lambda r: r["burst"]["cpu_ms_per_job"]["frontend"] / r["rtt_cpu_ms"])
    cpu4 = {
        part: [b["cpu_ms_per_job"][part] for b in bursts4]
        for part in ("frontend", "consumers", "redis")
    }
    rows = [
        [
            "consumers",
            f"jobs/s (bursts of {args.burst})",
            "frontend CPU ms/job",
            "consumers CPU ms/job",
            "redis CPU ms/job",
            "frontend / bare request",
        ],
        [
            "1",
            spread_text(per_round(lambda r: r["burst"]["jobs_per_s"]), 0),
            spread_text(cpu["frontend"], 2),
            spread_text(cpu["consumers"], 2),
            spread_text(cpu["redis"], 2),
            spread_text(frontend_ratio, 1),
        ],
        [
            "4",
            spread_text([b["jobs_per_s"] for b in bursts4], 0),
            spread_text(cpu4["frontend"], 2),
            spread_text(cpu4["consumers"], 2),
            spread_text(cpu4["redis"], 2),
            "",
        ],
        ["bare request (baseline)", "", spread_text(bare, 2), "", "", "1.0"],
    ]
    print(table(rows))
    path = save(
        "http_overhead",
        {
            "payload_bytes": len(PAYLOAD),
            "rounds": args.rounds,
            "http_round_trip_ms": spread(rtt_ms),
            "sequential_ms": {
                name: spread(per_round(lambda r, n=name: median(r["seq"][n]) * 1000))
                for name in ("submit", "server", "work", "overhead")
            },
            "sequential_p95_ms": {
                name: spread(per_round(lambda r, n=name: percentile(r["seq"][n], 95) * 1000))
                for name in ("submit", "server", "work", "overhead")
            },
            "overhead_over_round_trip": spread(overhead_ratio),
            "bare_request_frontend_cpu_ms": spread(bare),
            "frontend_cpu_over_bare_request": spread(frontend_ratio),
            "burst": {"1": [r["burst"] for r in rounds], "4": bursts4},
        },
    )
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
