"""Peak memory of a tracking consumer over a long movie, against the movie's own size.

Why: a movie is read, fanned out and linked frame by frame, so a consumer should never hold it
whole; a 300-frame 1024x1024 uint16 movie is 600 MiB, and the target is a peak below 1 GiB
(the movie at most once, plus the process). A real ``python -m consumers tracking`` process
runs against a real redis-server, with two stand-in segmentation consumers (threshold and
connected components, no model: this measures the tracking consumer, not the model) and the
janitor. The movie (``--cells`` nuclei-sized discs on a grid, drifting) is written to the
bucket page by page and queued the way the frontend queues it. The tracking consumer's
resident memory is sampled from /proc through the fan-out and the fan-in; its VmHWM at the end
is the peak.

    python -m benchmark.tracking_memory [--frames 300] [--size 1024] [--cells 144]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from benchmark.consumer_memory import Sampler
from benchmark.report import save, table
from benchmark.support import memory_mib, service_env
from evaluation import REPO
from kiosk.jobs import JobRequest, creation_fields
from kiosk.keys import JobField, new_job_key, upload_key
from kiosk.queue import JobQueue, connect
from kiosk.storage.local import LocalBucket
from tests.support.servers import RedisServer, wait_for

TARGET_MIB = 1024
STAND_IN = "tests.support.tracking:ThresholdSegmentation"
RADIUS = 10


def movie_frames(frames: int, size: int, cells: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Discs on a grid, each drifting a random walk of about a pixel a frame, one frame at a
    time (the movie is never whole in memory)."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(cells)))
    spacing = size // side
    centres = np.array(
        [
            (spacing // 2 + spacing * (i // side), spacing // 2 + spacing * (i % side))
            for i in range(cells)
        ],
        float,
    )
    yy, xx = np.mgrid[-RADIUS : RADIUS + 1, -RADIUS : RADIUS + 1]
    stamp = (yy**2 + xx**2 <= RADIUS**2) * np.uint16(1800)
    limit = spacing / 2 - RADIUS - 2
    home = centres.copy()
    for _ in range(frames):
        frame = rng.integers(80, 160, (size, size), dtype=np.uint16)
        for y, x in np.rint(centres).astype(int):
            view = frame[y - RADIUS : y + RADIUS + 1, x - RADIUS : x + RADIUS + 1]
            np.maximum(view, stamp, out=view)
        yield frame
        centres = np.clip(centres + rng.normal(0, 0.8, centres.shape), home - limit, home + limit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--cells", type=int, default=144)
    args = parser.parse_args()
    movie_mib = args.frames * args.size * args.size * 2 / 2**20

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bucket = LocalBucket(root / "bucket")
        key = upload_key("movie.tif")
        tifffile.imwrite(
            _path(bucket, key),
            movie_frames(args.frames, args.size, args.cells),
            shape=(args.frames, args.size, args.size),
            dtype=np.uint16,
            imagej=True,
            metadata={"axes": "TYX"},
        )
        redis_server = RedisServer(root / "redis").start()
        children: list[subprocess.Popen] = []
        try:
            env = service_env(
                redis_server.url,
                root / "bucket",
                KIOSK_QUEUES="segmentation,tracking",
                KIOSK_JOB_TYPE_PLUGINS=f"segmentation={STAND_IN}",
            )
            logs = root / "logs"
            logs.mkdir()

            def start(*argv: str, name: str) -> subprocess.Popen:
                with open(logs / f"{name}.log", "wb") as log:
                    child = subprocess.Popen(
                        [sys.executable, *argv], env=env, cwd=REPO, stdout=log, stderr=log
                    )
                children.append(child)
                return child

            tracker = start("-m", "consumers", "tracking", name="tracking")
            for i in range(2):
                start("-m", "consumers", "segmentation", name=f"segmentation-{i}")
            start("-m", "kiosk.janitor", name="janitor")
            queue = JobQueue(connect(redis_server.url))
            wait_for(
                lambda: any(b.pid == tracker.pid for b in queue.live_consumers().values()),
                60,
                0.1,
                "the tracking consumer's first heartbeat",
            )
            time.sleep(2.0)
            idle = memory_mib(tracker.pid)
            sampler = Sampler(tracker.pid)
            sampler.start()
            request = JobRequest("tracking", "movie.tif", key)
            job = new_job_key(request.queue, "movie.tif")
            started = time.perf_counter()
            queue.submit(request.queue, job, creation_fields(request, "benchmark"))

            def ended() -> bool:
                return queue.redis.hget(job, JobField.STATUS) in ("done", "failed")

            wait_for(ended, 3600, 0.2, "the movie to be tracked")
            seconds = time.perf_counter() - started
            sampler.stop.set()
            sampler.join()
            after = memory_mib(tracker.pid)
            fields = queue.get(job) or {}
        finally:
            for child in children:
                if child.poll() is None:
                    child.terminate()
            for child in children:
                child.wait(60)
            redis_server.stop()
        if fields.get(JobField.STATUS) != "done":
            log = (logs / "tracking.log").read_text()[-3000:]
            raise SystemExit(f"the movie ended {fields.get(JobField.STATUS)}: {fields}\n{log}")

    peak = max(after["VmHWM"], sampler.peak)
    result = {
        "frames": args.frames,
        "frame_size": args.size,
        "cells": args.cells,
        "movie_mib": round(movie_mib, 1),
        "tracks": int(fields.get(JobField.OBJECTS, "0")),
        "seconds": round(seconds, 1),
        "idle_rss_mib": round(idle["VmRSS"], 1),
        "peak_rss_mib": round(peak, 1),
        "peak_minus_idle_mib": round(peak - idle["VmRSS"], 1),
        "target_peak_mib": TARGET_MIB,
    }
    rows = [
        ["tracking consumer", "MiB"],
        [f"the movie ({args.frames} x {args.size}x{args.size} uint16)", f"{movie_mib:.0f}"],
        ["idle, before the movie (baseline)", f"{idle['VmRSS']:.0f}"],
        ["peak over fan-out and fan-in", f"{peak:.0f}"],
        ["peak - idle", f"{peak - idle['VmRSS']:.0f}"],
    ]
    print(table(rows))
    print(
        f"target peak < {TARGET_MIB} MiB: {'met' if peak < TARGET_MIB else 'NOT met'}; "
        f"{result['tracks']} tracks; {seconds:.0f} s end to end (stand-in segmentation)"
    )
    print(f"wrote {save('tracking_memory', result)}")


def _path(bucket: LocalBucket, key: str) -> Path:
    path = bucket.local_path(key)
    assert path is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


if __name__ == "__main__":
    main()
