"""Peak memory of a segmentation consumer on 2048x2048 images, against the same process idle.

Why: consumers run many to a node next to nothing else, so their memory sets how many fit,
and TensorFlow (hundreds of MB) must stay in the model server, never in a consumer. A real
``python -m consumers segmentation`` process runs against a real redis-server and the embedded
model server with the bundled model; ``--jobs`` 2048x2048 uint16 TIFF jobs (dense fields:
30% of the area in nuclei about 20 px across) are queued the way the frontend queues them. Its
resident memory is read from /proc: the idle figure (VmRSS once it heartbeats, before its first
job) is the baseline; the peak is VmHWM after the jobs (and the highest sampled VmRSS). The
process's memory maps are searched for any TensorFlow library.

    python -m benchmark.consumer_memory [--jobs 3] [--size 2048]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tifffile

from benchmark.report import save, table
from benchmark.support import (
    add_model_args,
    check_model,
    generated_images,
    mapped_files,
    memory_mib,
    model_server,
    service_env,
)
from evaluation import REPO
from kiosk.jobs import JobRequest, creation_fields
from kiosk.keys import new_job_key, upload_key
from kiosk.queue import JobQueue, connect
from kiosk.storage.local import LocalBucket
from tests.support.servers import RedisServer, wait_for

TARGET_MIB = 350
SEED_BASE = 800_000


class Sampler(threading.Thread):
    """The highest VmRSS seen, sampled every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, memory_mib(self.pid)["VmRSS"])
            except (OSError, KeyError):
                return
            time.sleep(self.interval)


def tiff_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image)
    return buffer.getvalue()


def submit(queue: JobQueue, bucket: LocalBucket, name: str, data: bytes) -> str:
    """Queue a segmentation job the way the frontend does (upload, then hash + list entry)."""
    key = upload_key(name)
    bucket.put_bytes(key, data)
    request = JobRequest("segmentation", name, key)
    job = new_job_key(request.queue, name)
    return queue.submit(request.queue, job, creation_fields(request, "benchmark"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument(
        "--consumer-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the consumer (e.g. MALLOC_ARENA_MAX=2); repeatable",
    )
    add_model_args(parser)
    args = parser.parse_args()
    model_path = check_model(args.models_dir)

    images = generated_images(args.jobs, args.size, SEED_BASE, coverage=0.3, mean_diameter=20)
    payloads = [tiff_bytes(image) for image, _ in images]
    nuclei = [int(labels.max()) for _, labels in images]
    del images

    with tempfile.TemporaryDirectory() as tmp, model_server(args.models_dir) as server:
        root = Path(tmp)
        redis_server = RedisServer(root / "redis").start()
        consumer: subprocess.Popen | None = None
        try:
            env = service_env(
                redis_server.url,
                root / "bucket",
                KIOSK_QUEUES="segmentation",
                KIOSK_MODEL_SERVER=server.target,
                **dict(item.split("=", 1) for item in args.consumer_env),
            )
            log_path = root / "consumer.log"
            with open(log_path, "wb") as log:
                consumer = subprocess.Popen(
                    [sys.executable, "-m", "consumers", "segmentation"],
                    env=env,
                    cwd=REPO,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            queue = JobQueue(connect(redis_server.url))
            pid = consumer.pid
            wait_for(
                lambda: any(beat.pid == pid for beat in queue.live_consumers().values()),
                60,
                0.1,
                "the consumer's first heartbeat",
            )
            time.sleep(2.0)  # settle: imports done, waiting for a job
            idle = memory_mib(pid)
            tf_idle = mapped_files(pid, "tensorflow")

            sampler = Sampler(pid)
            sampler.start()
            bucket = LocalBucket(root / "bucket")
            started = time.perf_counter()
            keys = [
                submit(queue, bucket, f"field_{i}.tif", data) for i, data in enumerate(payloads)
            ]

            def ended() -> bool:
                return all(queue.redis.hget(k, "status") in ("done", "failed") for k in keys)

            wait_for(ended, 600, 0.1, "the jobs to end")
            seconds = time.perf_counter() - started
            sampler.stop.set()
            sampler.join()
            after = memory_mib(pid)
            tf_after = mapped_files(pid, "tensorflow")
            statuses = [queue.redis.hget(k, "status") for k in keys]
            reasons = [queue.redis.hget(k, "reason") for k in keys]
        finally:
            if consumer is not None and consumer.poll() is None:
                consumer.terminate()
                consumer.wait(30)
            redis_server.stop()
        if any(s != "done" for s in statuses):
            raise SystemExit(f"jobs ended {statuses}: {reasons}\n{log_path.read_text()[-3000:]}")

    peak = max(after["VmHWM"], sampler.peak)
    result = {
        "model": model_path,
        "jobs": args.jobs,
        "image_size": args.size,
        "nuclei_per_image": nuclei,
        "seconds_per_job": round(seconds / args.jobs, 3),
        "idle_rss_mib": round(idle["VmRSS"], 1),
        "idle_hwm_mib": round(idle["VmHWM"], 1),
        "peak_rss_mib": round(peak, 1),
        "peak_minus_idle_mib": round(peak - idle["VmRSS"], 1),
        "rss_after_jobs_mib": round(after["VmRSS"], 1),
        "target_peak_mib": TARGET_MIB,
        "consumer_env": args.consumer_env,
        "tensorflow_mapped": sorted(set(tf_idle) | set(tf_after)),
    }
    rows = [
        ["consumer", "RSS MiB"],
        ["idle, before the first job (baseline)", f"{result['idle_rss_mib']:.0f}"],
        [f"peak over {args.jobs} jobs of {args.size}x{args.size}", f"{peak:.0f}"],
        ["peak - idle", f"{result['peak_minus_idle_mib']:.0f}"],
        ["after the jobs", f"{result['rss_after_jobs_mib']:.0f}"],
    ]
    print(table(rows))
    print(
        f"target peak < {TARGET_MIB} MiB: {'met' if peak < TARGET_MIB else 'NOT met'}; "
        f"TensorFlow libraries mapped: {result['tensorflow_mapped'] or 'none'}; "
        f"{result['seconds_per_job']:.1f} s per job"
    )
    path = save("consumer_memory", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
