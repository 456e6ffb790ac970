"""What tracking adds to segmenting a movie's frames: a generated movie end to end as one
tracking job, against the same frames as one segmentation zip, through the same stack.

The end-to-end figure: a ``--frames``-frame ``--size`` x ``--size`` movie from
``evaluation.movies.generate_movie`` (uint16, one multi-page TIFF with a T axis) is submitted
over HTTP to a real `kiosk up` (Redis, janitor, the embedded model server with the bundled
model, frontend, and the segmentation, tracking and zip consumers), timed from the start of
the upload to the movie's ``finished_at``: fan-out of the frames, every frame segmented as a
child segmentation job, then the fan-in that measures, links and writes the results zip.

The baseline, in the same run and through the same consumers and model server: the same
frames as single-plane TIFFs in one zip, submitted as a segmentation job (fan-out of the
entries, every frame segmented, a zip of their labels). That is the movie's frames'
segmentation time alone, with the same queueing around it; everything tracking adds is the
difference:

    tracking adds = (tracking - segmentation) / segmentation        (target: < 0.15)

Each side is warmed up first (a short movie, a small zip), then the two take turns
``--repeats`` times, so that a slow spell of the machine falls on both; the figures are
medians (the runs are kept in the JSON). Where the time goes comes from the stage times the
consumers record per job: the frames' own stages (summed over the frames; a consumer finishes
one frame while the next predicts, so the sum can exceed the wall time), the movie's fan-out
(its upload stage) and fan-in (its post-processing stage), and the fan-in's two phases
(reading the frames' cells tables while linking them, then writing) from when its progress
passes 60 %.

    python -m benchmark.tracking_overhead [--frames 100] [--size 512] [--consumers 1]
        [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import tifffile

from benchmark.report import save, table
from benchmark.support import add_model_args, check_model, kiosk_up
from evaluation.movies import generate_movie
from local.client import KioskClient

SEED = 700_000
WARMUP_SEED = 750_000
TARGET = 0.15


def write_movie(path: Path, images: np.ndarray) -> int:
    """The movie as one ImageJ hyperstack with a T axis; its bytes."""
    tifffile.imwrite(path, images, imagej=True, metadata={"axes": "TYX"})
    return path.stat().st_size


def write_frames_zip(path: Path, images: np.ndarray, folder: str) -> int:
    """Each frame as an uncompressed TIFF in a stored zip, as the movie's TIFF stores them."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for t, frame in enumerate(images):
            buffer = io.BytesIO()
            tifffile.imwrite(buffer, frame, photometric="minisblack")
            archive.writestr(f"{folder}/frame_{t:04d}.tif", buffer.getvalue())
    return path.stat().st_size


def _seconds(iso: str | None) -> float:
    return datetime.fromisoformat(iso).timestamp() if iso else float("nan")


def children_of(url: str, parent: str) -> list[dict[str, Any]]:
    """A parent's child jobs, every page."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"parent": parent, "limit": "500", **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{url}/api/v1/jobs", params=params, timeout=60).json()
        found += page["jobs"]
        cursor = page.get("next_cursor")
        if not cursor:
            return found


def wait_watching_fan_in(
    client: KioskClient, job_id: str, interval: float = 0.5, close: float = 0.2
) -> tuple[dict[str, Any], dict[str, float]]:
    """Wait for a job to end; near and during its post-processing (a movie's fan-in), look
    often enough to see its progress pass the fan-in's mark: every frame read and linked at
    60 % (tracking's split of its progress). Returns the final job and when each mark was
    first seen."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        job = client.job(job_id)
        now = time.time()
        fan_in = job["status"] == "post-processing"
        if fan_in and job["progress"] >= 60:
            seen.setdefault("linked", now)
        if job["status"] in ("done", "failed"):
            return job, seen
        near = fan_in or job["progress"] >= 90
        time.sleep(close if near else interval)
    raise RuntimeError(f"{job_id} did not end within an hour")


def fan_in_phases(marks: dict[str, float], start: float, end: float) -> dict[str, float]:
    """Seconds reading and linking, then writing, from the last frame's end to the job's."""
    if "linked" not in marks:
        return {}
    edges = [start, marks["linked"], end]
    seconds = np.diff(edges).round(2).tolist()
    return dict(zip(("reading and linking", "writing"), seconds, strict=True))


def run_job(client: KioskClient, url: str, path: Path, job_type: str) -> dict[str, Any]:
    """Upload a file as ``job_type``, wait for it to end: seconds and where they went."""
    started = time.time()
    job = client.submit(path, job_type)
    uploaded = time.time() - started
    final, marks = wait_watching_fan_in(client, job["id"])
    if final["status"] != "done":
        raise RuntimeError(f"the {job_type} job ended {final['status']}: {final.get('reason')}")
    children = children_of(url, final["id"])
    stages: dict[str, float] = {}
    for child in children:
        for name, value in child["timings"].items():
            stages[name] = stages.get(name, 0.0) + value
    total = stages.pop("total_time", 0.0)
    created = [_seconds(child["created_at"]) for child in children]
    finished = [_seconds(child["finished_at"]) for child in children]
    return {
        "seconds": _seconds(final["finished_at"]) - started,
        "upload_seconds": round(uploaded, 3),
        "frames": len(children),
        "frames_stage_seconds": {k: round(v, 3) for k, v in sorted(stages.items())},
        "frames_total_seconds": round(total, 3),
        "parent_timings": final.get("timings", {}),
        "fan_out_last_frame_s": round(max(created) - _seconds(final["created_at"]), 3),
        "fan_in_s": round(_seconds(final["finished_at"]) - max(finished), 3),
        "fan_in_phases_s": fan_in_phases(marks, max(finished), _seconds(final["finished_at"])),
        "segmenting_s": round(max(finished) - min(created), 3),
        "id": final["id"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument(
        "--consumers", type=int, default=1, help="consumers per job type (segmentation ...)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each side; medians are reported"
    )
    parser.add_argument(
        "--division-model",
        default="",
        help="KIOSK_DIVISION_MODEL for the tracking consumer (DivisionScoring: the learned "
        "division scorer, as the Helm chart runs it; empty: the feature score)",
    )
    add_model_args(parser)
    args = parser.parse_args()
    model_path = check_model(args.models_dir)

    movie = generate_movie(SEED, frames=args.frames, shape=(args.size, args.size))
    warm = generate_movie(WARMUP_SEED, frames=4, shape=(args.size, args.size))
    tracking_runs: list[dict[str, Any]] = []
    segmentation_runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        movies = [root / f"movie-{r}.tif" for r in range(args.repeats)]
        zips = [root / f"frames-{r}.zip" for r in range(args.repeats)]
        movie_bytes = zip_bytes = 0
        for r in range(args.repeats):  # a name per run, so each run's jobs can be told apart
            movie_bytes = write_movie(movies[r], movie.images)
            zip_bytes = write_frames_zip(zips[r], movie.images, f"frames{r}")
        write_movie(root / "warmup.tif", warm.images)
        write_frames_zip(root / "warmup.zip", warm.images, "warmup")
        with (
            kiosk_up(
                args.models_dir,
                consumers=args.consumers,
                queues="segmentation,tracking",
                extra_env={"KIOSK_DIVISION_MODEL": args.division_model},
            ) as stack,
            KioskClient(stack.url) as client,
        ):
            run_job(client, stack.url, root / "warmup.tif", "tracking")
            run_job(client, stack.url, root / "warmup.zip", "segmentation")
            for r in range(args.repeats):  # turns: a slow spell of the machine hits both
                order = [("segmentation", zips[r]), ("tracking", movies[r])]
                for job_type, path in order if r % 2 == 0 else order[::-1]:
                    done = run_job(client, stack.url, path, job_type)
                    (tracking_runs if job_type == "tracking" else segmentation_runs).append(done)
                    print(f"run {r}: {job_type} {done['seconds']:.1f} s", flush=True)

    tracking_s = statistics.median(run["seconds"] for run in tracking_runs)
    segmentation_s = statistics.median(run["seconds"] for run in segmentation_runs)
    adds = (tracking_s - segmentation_s) / segmentation_s
    last_tracking, last_segmentation = tracking_runs[-1], segmentation_runs[-1]
    if last_tracking["frames"] != args.frames or last_segmentation["frames"] != args.frames:
        raise RuntimeError("a run did not segment every frame as its own job")
    rows = [
        ["", "tracking job", "segmentation zip (baseline)"],
        ["end to end s (median)", f"{tracking_s:.1f}", f"{segmentation_s:.1f}"],
        *[
            [label, f"{last_tracking[key]}", f"{last_segmentation[key]}"]
            for label, key in (
                ("frames' claim to settled, summed s", "frames_total_seconds"),
                ("upload to last frame created s", "fan_out_last_frame_s"),
                ("first frame created to last done s", "segmenting_s"),
                ("last frame done to job done s", "fan_in_s"),
            )
        ],
    ]
    print(
        f"a {args.frames}-frame {args.size}x{args.size} movie ({movie_bytes / 2**20:.0f} MiB), "
        f"{len(movie.tracks)} true tracks; {args.consumers} consumer(s) per job type"
    )
    print(table(rows))
    print(f"tracking movie's own stages: {last_tracking['parent_timings']}")
    print(f"segmentation zip's own stages: {last_segmentation['parent_timings']}")
    phases = [run["fan_in_phases_s"] for run in tracking_runs if run["fan_in_phases_s"]]
    if phases:
        medians = {k: statistics.median(p[k] for p in phases) for k in phases[0]}
        print(f"the movie's fan-in, seconds by phase (medians, seen from its progress): {medians}")
    print(
        f"tracking adds {adds:.1%} (target < {TARGET:.0%}): {'met' if adds < TARGET else 'NOT met'}"
    )
    path = save(
        "tracking_overhead" + (f"-{args.division_model}" if args.division_model else ""),
        {
            "frames": args.frames,
            "frame_size": args.size,
            "movie_mib": round(movie_bytes / 2**20, 2),
            "zip_mib": round(zip_bytes / 2**20, 2),
            "true_tracks": len(movie.tracks),
            "consumers_per_job_type": args.consumers,
            "division_model": args.division_model or "(feature score)",
            "model": model_path,
            "baseline": "the same frames as one segmentation zip through the same stack",
            "tracking_seconds": round(tracking_s, 3),
            "segmentation_seconds": round(segmentation_s, 3),
            "tracking_adds_fraction": round(adds, 4),
            "target_adds_fraction": TARGET,
            "tracking_runs": tracking_runs,
            "segmentation_runs": segmentation_runs,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
