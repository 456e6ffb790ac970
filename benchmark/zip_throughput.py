"""A zip of 100 images through the whole local stack, against the model's own work on them.

The end-to-end figure: a zip of ``--images`` generated 512x512 uint16 TIFFs (about 50 MiB,
stored uncompressed) is submitted over HTTP (local.client.KioskClient) to a real `kiosk up`
(Redis with its append-only file, janitor, the embedded model server with the bundled model,
frontend, segmentation consumers and the zip consumer), timed from the start of the upload to
the parent job's ``done`` (fan-out, every child segmented, results zipped).

The baseline, in the same run: the model inference plus post-processing alone on the same
images, i.e. ``pipeline.segment`` with a ``ServingClient`` against an embedded model server
with the same model, in as many worker processes as there are consumers, images already in
memory (no Redis, HTTP, zip, TIFF or uploads). Everything Kiosk adds is the difference:

    overhead = (end-to-end - alone) / end-to-end        (target: < 0.10)

With ``--baseline in-process`` each worker process loads the model itself instead (N
in-process loops on the same cores, the model server's runtime and allocator), and the figure
is the stack's throughput against theirs: ``alone / end-to-end`` (target: >= 0.9). Each side
reports its CPU seconds too (the served model's are not counted on the alone side).

Each side is warmed up first (a small zip through the stack; one image per worker alone), then
the two sides take turns ``--repeats`` times, so that a slow spell of the machine falls on both;
the figures are medians (the runs are kept in the JSON), since a 2-core machine shared with the
OS varies by 10-20 % from run to run. Both model servers stay up throughout; the idle one costs
nothing.

    python -m benchmark.zip_throughput [--images 100] [--size 512] [--consumers 1,2] [--repeats 5]
        [--baseline served|in-process]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import statistics
import tempfile
import time
import zipfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import tifffile

from benchmark.report import save, table
from benchmark.support import (
    MODEL,
    add_model_args,
    check_model,
    generated_images,
    kiosk_up,
    model_server,
    process_tree_cpu,
    spread_text,
)
from kiosk.allocator import keep_freed_memory
from kiosk.settings import ModelServerSettings
from local.client import KioskClient

LOOPS_TARGET = 0.9
"""The stack's throughput against as many in-process loops as it has consumers, at least."""
SEED_BASE = 600_000
WARMUP_SEED_BASE = 650_000


def write_zip(path: Path, images: list[np.ndarray], folder: str = "plate") -> int:
    """Each image as an uncompressed TIFF entry of a stored (uncompressed) zip; its bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for i, image in enumerate(images):
            buffer = io.BytesIO()
            tifffile.imwrite(buffer, image)
            archive.writestr(f"{folder}/image_{i:03d}.tif", buffer.getvalue())
    return path.stat().st_size


def _seconds(iso: str | None) -> float:
    return datetime.fromisoformat(iso).timestamp() if iso else float("nan")


def breakdown(client: KioskClient, parent: dict[str, Any], folder: str) -> dict[str, Any]:
    """Where the time went: the children's own stage times (means) and the parent's fan-out
    (parent created -> first child created) and fan-in (last child done -> parent done)."""
    children = [
        job
        for job in client.jobs(limit=500, job_type="segmentation")
        if job["name"].startswith(f"{folder}/")
    ]
    stages: dict[str, float] = {}
    for job in children:
        for name, value in job["timings"].items():
            stages[name] = stages.get(name, 0.0) + value
    created = [_seconds(job["created_at"]) for job in children]
    finished = [_seconds(job["finished_at"]) for job in children]
    return {
        "children": len(children),
        "child_mean_seconds": {k: round(v / max(len(children), 1), 4) for k, v in stages.items()},
        "fan_out_first_child_s": round(min(created) - _seconds(parent["created_at"]), 3),
        "fan_out_last_child_s": round(max(created) - _seconds(parent["created_at"]), 3),
        "fan_in_s": round(_seconds(parent["finished_at"]) - max(finished), 3),
    }


# ------------------------------------------------------------------------------ alone


def _in_process_model(models_dir: Path) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """The model loaded in this process with the model server's own loader and runtime (so this
    worker is a model-server-like process, the only kind that runs a model)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from kiosk.serving.client import DEFAULT_SIGNATURE
    from model_server.runtimes import load_servable

    versions = [p for p in (models_dir / MODEL).iterdir() if p.name.isdigit()]
    servable = load_servable(max(versions, key=lambda p: int(p.name)))
    return lambda batch: servable.run(DEFAULT_SIGNATURE, {"image": batch})


def _alone_worker(
    target: str | Path, images: list[np.ndarray], ready: Any, start: Any, results: Any
) -> None:
    """Segment ``images`` as the consumer would, minus everything around the pipeline: with a
    served model (``target`` a gRPC address) or the model in this process (a models folder)."""
    from consumers.processing.pipeline import segment
    from evaluation.report import PipelineConfig
    from evaluation.served import ServedModel

    keep_freed_memory()  # the model server's allocator: the loops run the model, and it is
    # the faster of the two for them (the stricter baseline)
    config = PipelineConfig.from_settings()
    predict = _in_process_model(target) if isinstance(target, Path) else ServedModel(target, MODEL)

    heads = config.contract.heads

    def run(image: np.ndarray, timings: dict[str, float] | None = None) -> None:
        segment(
            image,
            lambda batch: heads.foreground_only(predict(batch)),
            image_mpp=config.model_mpp,
            postprocess=config.contract.postprocess,
            timings=timings,
            **config.options,
        )

    run(images[0])  # connect, warm up
    ready.put(True)
    start.wait()
    timings: dict[str, float] = {}
    cpu = time.process_time()  # every thread of this process: the model's too, in-process
    for image in images:
        run(image, timings)
    results.put((time.perf_counter(), timings, time.process_time() - cpu))


class AloneRun(NamedTuple):
    """One run of the alone side."""

    seconds: float  # wall, from the start signal to the last worker's end
    stages: dict[str, float]  # the pipeline's mean seconds per image and stage
    cpu_seconds: float  # of the worker processes (a served model's not counted)


def alone(target: str | Path, images: list[np.ndarray], workers: int) -> AloneRun:
    """``workers`` processes segment ``images`` between them (``target``: see
    ``_alone_worker``)."""
    ctx = mp.get_context("spawn")  # no gRPC state crosses a fork
    ready, results, start = ctx.Queue(), ctx.Queue(), ctx.Event()
    shares = [images[i::workers] for i in range(workers)]
    procs = [
        ctx.Process(target=_alone_worker, args=(target, share, ready, start, results))
        for share in shares
    ]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            ready.get(timeout=300)
        started = time.perf_counter()
        start.set()
        finished = [results.get(timeout=1800) for _ in procs]
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    stages: dict[str, float] = {}
    for _, timings, _ in finished:
        for name, value in timings.items():
            stages[name] = stages.get(name, 0.0) + value / len(images)
    return AloneRun(
        seconds=max(end for end, _, _ in finished) - started,
        stages={k: round(v, 4) for k, v in stages.items()},
        cpu_seconds=sum(cpu for _, _, cpu in finished),
    )


# ------------------------------------------------------------------------------ end to end


def cpu_spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds each service spent between two readings (those that spent any)."""
    spent = {name: after[name] - before.get(name, 0.0) for name in after}
    return {name: round(v, 2) for name, v in sorted(spent.items()) if v >= 0.01}


def run_zip(client: KioskClient, path: Path, interval: float = 0.5) -> dict[str, Any]:
    """Upload a zip, wait for its parent job to end: seconds and the final job.

    The end is the parent's own ``finished_at`` (the stack runs on this machine's clock), so
    polling can be slow enough not to load the stack it measures.
    """
    started = time.time()
    job = client.submit(path, "segmentation")
    submitted = time.time()
    final = client.wait([job["id"]], interval=interval, timeout=3600)[job["id"]]
    if final["status"] != "done":
        raise RuntimeError(f"the zip job ended {final['status']}: {final.get('reason')}")
    return {
        "seconds": _seconds(final["finished_at"]) - started,
        "upload_seconds": submitted - started,
        "job": final,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--consumers", default="1,2", help="segmentation consumers, e.g. 1,2")
    parser.add_argument(
        "--repeats", type=int, default=5, help="runs of each side; medians are reported"
    )
    parser.add_argument(
        "--baseline",
        choices=("served", "in-process"),
        default="served",
        help="the alone side calls an embedded model server, or loads the model in each "
        "worker process (N in-process loops on the same cores)",
    )
    parser.add_argument(
        "--inference-workers",
        type=int,
        default=ModelServerSettings().inference_workers,
        help="the stack's model server's KIOSK_INFERENCE_WORKERS",
    )
    add_model_args(parser)
    args = parser.parse_args()
    model_path = check_model(args.models_dir)
    stack_env = {"KIOSK_INFERENCE_WORKERS": str(args.inference_workers)}
    counts = [int(c) for c in args.consumers.split(",")]

    images = [im for im, _ in generated_images(args.images, args.size, SEED_BASE)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        plates = [
            (Path(tmp) / f"plate-{r}.zip", f"plate{r}") for r in range(args.repeats)
        ]  # one folder per run, so each run's children can be told apart
        zip_bytes = 0
        for plate, folder in plates:
            zip_bytes = write_zip(plate, images, folder=folder)
        for n in counts:
            warm = Path(tmp) / f"warmup-{n}.zip"
            warm_images = generated_images(2 * n, args.size, WARMUP_SEED_BASE)
            write_zip(warm, [im for im, _ in warm_images], folder="warmup")
            alone_runs: list[AloneRun] = []
            runs = []
            with (
                model_server(args.models_dir) as server,
                kiosk_up(args.models_dir, consumers=n, extra_env=stack_env) as stack,
                KioskClient(stack.url) as client,
            ):
                run_zip(client, warm)
                # The two sides take turns, so a slow spell of the machine hits both alike.
                for plate, folder in plates:
                    target = server.target if args.baseline == "served" else args.models_dir
                    alone_runs.append(alone(target, images, n))
                    cpu_before = process_tree_cpu(stack.process.pid)
                    e2e = run_zip(client, plate)
                    e2e["cpu"] = cpu_spent(cpu_before, process_tree_cpu(stack.process.pid))
                    e2e["where"] = breakdown(client, e2e["job"], folder)
                    runs.append(e2e)
                    alone_cpu = (
                        f" ({alone_runs[-1].cpu_seconds:.2f} CPU-s)"
                        if args.baseline == "in-process"  # else the served model's is not in it
                        else ""
                    )
                    print(
                        f"{n} consumer(s): alone {alone_runs[-1].seconds:.2f} s{alone_cpu}, "
                        f"end to end {e2e['seconds']:.2f} s "
                        f"({sum(e2e['cpu'].values()):.2f} CPU-s)",
                        flush=True,
                    )
                result = client.download(runs[-1]["job"]["id"], Path(tmp) / f"result-{n}")
            alone_s = statistics.median(run.seconds for run in alone_runs)
            alone_stages = alone_runs[-1].stages
            with zipfile.ZipFile(result) as archive:
                labels = [name for name in archive.namelist() if name.endswith("_labels.tif")]
            if len(labels) != args.images:
                raise RuntimeError(f"expected {args.images} label images, the result has {labels}")
            seconds = statistics.median(run["seconds"] for run in runs)
            last = runs[-1]
            results.append(
                {
                    "consumers": n,
                    "end_to_end_seconds": round(seconds, 3),
                    "end_to_end_runs": [round(run["seconds"], 3) for run in runs],
                    "upload_seconds": round(last["upload_seconds"], 3),
                    "alone_seconds": round(alone_s, 3),
                    "alone_runs": [round(run.seconds, 3) for run in alone_runs],
                    "alone_cpu_seconds": [round(run.cpu_seconds, 2) for run in alone_runs],
                    "end_to_end_cpu_seconds": [round(sum(run["cpu"].values()), 2) for run in runs],
                    "end_to_end_images_per_s": round(args.images / seconds, 3),
                    "alone_images_per_s": round(args.images / alone_s, 3),
                    "overhead_fraction": round((seconds - alone_s) / seconds, 4),
                    "throughput_ratio": round(alone_s / seconds, 4),
                    "alone_mean_seconds": alone_stages,
                    "parent_timings": last["job"].get("timings", {}),
                    "cpu_seconds_by_service": last["cpu"],
                    **last["where"],
                }
            )

    rows = [
        [
            "consumers",
            "end to end s, median (min-max)",
            "images/s",
            "alone s (baseline)",
            "images/s alone",
            "overhead (e2e-alone)/e2e",
            "throughput ratio",
        ]
    ]
    for r in results:
        rows.append(
            [
                str(r["consumers"]),
                spread_text(r["end_to_end_runs"], 2),
                f"{r['end_to_end_images_per_s']:.2f}",
                spread_text(r["alone_runs"], 2),
                f"{r['alone_images_per_s']:.2f}",
                f"{r['overhead_fraction']:.1%}",
                f"{r['throughput_ratio']:.3f}",
            ]
        )
    mib = zip_bytes / 2**20
    print(f"{args.images} images of {args.size}x{args.size} uint16, a zip of {mib:.1f} MiB")
    print(table(rows))
    for r in results:
        print(
            f"{r['consumers']} consumer(s): alone mean seconds {r['alone_mean_seconds']}; "
            f"child mean seconds {r['child_mean_seconds']}; "
            f"fan-out {r['fan_out_first_child_s']}..{r['fan_out_last_child_s']} s, "
            f"fan-in {r['fan_in_s']} s; CPU seconds by service {r['cpu_seconds_by_service']}"
        )
    if args.baseline == "in-process":
        for r in results:
            met = "met" if r["throughput_ratio"] >= LOOPS_TARGET else "not met"
            print(
                f"{r['consumers']} consumer(s): the stack's throughput is "
                f"{r['throughput_ratio']:.3f}x that of {r['consumers']} in-process loop(s) "
                f"(target >= {LOOPS_TARGET}: {met})"
            )
    path = save(
        "zip_throughput" if args.baseline == "served" else "zip_throughput-in-process",
        {
            "images": args.images,
            "image_size": args.size,
            "zip_mib": round(zip_bytes / 2**20, 2),
            "model": model_path,
            "target_overhead_fraction": 0.10 if args.baseline == "served" else None,
            "target_throughput_ratio": LOOPS_TARGET if args.baseline == "in-process" else None,
            "baseline": "pipeline.segment in as many processes as consumers, images in memory, "
            + (
                "against an embedded model server with the same model"
                if args.baseline == "served"
                else "each process with the model loaded in it"
            ),
            "inference_workers": args.inference_workers,
            "results": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
