"""A 1 GiB zip streamed through the frontend: peak memory and speed.

The frontend (a real uvicorn process over a real redis-server and a local bucket) receives a
1 GiB multipart upload sent in 1 MiB chunks. Its peak resident memory (VmHWM) is read before,
after a small warm-up upload (the baseline), and after each big one; its speed is compared with
writing the same bytes straight to the same disk from Python, the two taking turns ``--repeats``
times (median (min-max)). A peak that grew from one upload to the next would be a leak.

    python -m benchmark.upload_memory [--gib 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from benchmark.report import median, save, table
from benchmark.support import spread, spread_text
from tests.support import services
from tests.support.servers import RedisServer

CHUNK = 1024 * 1024
BOUNDARY = "kiosk-upload-benchmark"
ZIP_HEAD = b"PK\x03\x04"


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def body(size: int) -> Iterator[bytes]:
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="plate.zip"\r\nContent-Type: application/zip\r\n\r\n'
    ).encode()
    yield ZIP_HEAD
    sent, block = len(ZIP_HEAD), os.urandom(CHUNK)
    while sent < size:
        part = block[: min(CHUNK, size - sent)]
        sent += len(part)
        yield part
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def upload(url: str, size: int) -> float:
    started = time.perf_counter()
    response = httpx.post(
        f"{url}/api/upload",
        content=body(size),
        timeout=600,
        headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    response.raise_for_status()
    return time.perf_counter() - started


def disk_write(directory: Path, size: int) -> float:
    block = os.urandom(CHUNK)
    started = time.perf_counter()
    with open(directory / "baseline.bin", "wb") as out:
        for _ in range(size // CHUNK):
            out.write(block)
    elapsed = time.perf_counter() - started
    (directory / "baseline.bin").unlink()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size = int(args.gib * 1024**3)

    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        tmp_path = Path(tmp)
        server = RedisServer(tmp_path / "redis").start()
        env = services.with_public_url(services.service_env(server.url, tmp_path / "bucket"))
        env["KIOSK_LOG_LEVEL"] = "WARNING"
        frontend, url = services.frontend(env, tmp_path / "logs")
        try:
            upload(url, 4 * CHUNK)  # warm up: every import and thread in place
            idle = peak_rss_mib(frontend.pid)
            uploads, disks, peaks = [], [], []
            for _ in range(args.repeats):
                uploads.append(upload(url, size))
                peaks.append(peak_rss_mib(frontend.pid))
                disks.append(disk_write(tmp_path, size))
            stored = sum(p.stat().st_size for p in (tmp_path / "bucket").rglob("*.zip"))
        finally:
            frontend.stop()
            server.stop()

    mib = size / 1024**2
    peak = max(peaks)
    upload_speeds = [mib / t for t in uploads]
    disk_speeds = [mib / t for t in disks]
    speed_ratio = median(disks) / median(uploads)
    print(
        table(
            [
                ["measure", "value", "baseline", "ratio"],
                [
                    "frontend peak RSS, MiB, after each upload",
                    ", ".join(f"{p:.0f}" for p in peaks),
                    f"{idle:.0f} (after a 4 MiB upload)",
                    f"{peak / idle:.2f}",
                ],
                [
                    "upload speed, MiB/s, median (min-max)",
                    spread_text(upload_speeds, 0),
                    f"{spread_text(disk_speeds, 0)} (plain disk write)",
                    f"{speed_ratio:.2f}",
                ],
            ]
        )
    )
    print(f"stored {stored / 1024**2:.0f} MiB of {args.repeats * mib + 4:.0f} MiB uploaded")
    path = save(
        "upload_memory",
        {
            "bytes": size,
            "repeats": args.repeats,
            "peak_rss_mib": peak,
            "peak_rss_mib_after_each": peaks,
            "idle_peak_rss_mib": idle,
            "rss_ratio": peak / idle,
            "upload_mib_per_s": spread(upload_speeds),
            "disk_write_mib_per_s": spread(disk_speeds),
            "speed_ratio": speed_ratio,
        },
    )
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
