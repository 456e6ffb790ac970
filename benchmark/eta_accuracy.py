"""How far the queue ETAs were off under a changing load, on `kiosk up` with the bundled model.

Three users submit images of changing sizes in bursts, while the autoscaler starts the model
server and grows the consumers from zero (so the pace changes under the estimates):
ada 60 images of 512x512 at once, then bob 30 of 1024x1024 (four times the work each), then
cy 60 of 256x256. Every half second the benchmark reads every unfinished job's ``eta_start``
and ``eta_finish`` from the API; once all are done it compares each estimate with when the job
really started and finished. The error is estimate minus truth (negative: too early), in
seconds and as a fraction of the time that was still to go when the estimate was given. The
baseline for the start is the same pace applied to the job's place in one first-come line
(what a queue without fair share would have said): it shows what the fair-share position adds.

    python -m benchmark.eta_accuracy [--rounds 1]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import tifffile

from benchmark.report import percentile, save, table
from benchmark.support import add_model_args, check_model, generated_images, kiosk_up, spread
from local.client import KioskClient

ADMIN = "eta-benchmark-admin"
LABELS = {
    "start": "eta_start",
    "finish": "eta_finish",
    "fifo_start": "start, first-come place (baseline)",
}
BURSTS = (("ada", 60, 512, 0.0), ("bob", 30, 1024, 10.0), ("cy", 60, 256, 20.0))
"""(user, images, size, seconds after the start)"""


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def tiff(image: Any) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image)
    return buffer.getvalue()


def submit_bursts(url: str, tokens: dict[str, str], folder: Path, ids: list[str]) -> None:
    """Each user's burst at its time, one image after another, as fast as the API takes them."""
    begin = time.monotonic()
    for user, count, size, delay in BURSTS:
        time.sleep(max(0.0, begin + delay - time.monotonic()))
        with KioskClient(url, token=tokens[user]) as client:
            for i, (image, _) in enumerate(generated_images(count, size, seed_base=500)):
                path = folder / f"{user}-{i:02d}.tif"
                path.write_bytes(tiff(image))
                ids.append(client.submit(path, "segmentation")["id"])


def one_round(args: argparse.Namespace, folder: Path) -> dict[str, list[float]]:
    env = {
        "KIOSK_API_TOKEN": ADMIN,
        "KIOSK_ANONYMOUS": "true",
        "KIOSK_MAX_CONSUMERS": "2",
        "KIOSK_IDLE_GRACE": "30",
    }
    with (
        kiosk_up(args.models_dir, consumers=0, extra_env=env) as stack,
        KioskClient(stack.url, token=ADMIN) as admin,
    ):
        tokens = {user: admin.add_user(user)["token"] for user, *_ in BURSTS}
        ids: list[str] = []
        submitting = threading.Thread(target=submit_bursts, args=(stack.url, tokens, folder, ids))
        submitting.start()
        seen: list[tuple[float, dict[str, Any]]] = []  # (when, job as the API gave it)
        expected = sum(count for _, count, _, _ in BURSTS)
        while True:
            now = time.time()
            jobs = admin.jobs(limit=500)
            seen += [(now, job) for job in jobs if job["status"] not in ("done", "failed")]
            finished = [j for j in jobs if j["status"] in ("done", "failed")]
            if len(finished) == expected and not submitting.is_alive():
                break
            time.sleep(0.5)
        submitting.join()
        final = {job["id"]: job for job in jobs}
    errors: dict[str, list[float]] = {
        name: [] for name in ("start_s", "start_rel", "finish_s", "finish_rel", "fifo_start_s")
    }
    errors["fifo_start_rel"] = []
    looks: dict[float, list[dict[str, Any]]] = {}
    for when, job in seen:
        looks.setdefault(when, []).append(job)
    for when, jobs_then in looks.items():
        # The baseline: the same measured pace, but the job's place in one first-come line
        # (every owner's waiting jobs by submission time) instead of its fair-share place.
        queued = sorted(at(j["created_at"]) for j in jobs_then if j["status"] == "new")
        for job in jobs_then:
            actual = final[job["id"]].get("started_at")
            if job.get("position") is None or not job.get("eta_start") or not actual:
                continue
            to_go = at(actual) - when
            rate = (job["position"] + 1) / max(1e-9, at(job["eta_start"]) - when)
            if to_go < 1.0 or at(job["eta_start"]) <= when:
                continue
            first_come = sum(1 for created in queued if created < at(job["created_at"]))
            error = when + (first_come + 1) / rate - at(actual)
            errors["fifo_start_s"].append(error)
            errors["fifo_start_rel"].append(error / to_go)
    for when, job in seen:
        truth = final[job["id"]]
        for what, field, actual in (
            ("start", "eta_start", truth.get("started_at")),
            ("finish", "eta_finish", truth.get("finished_at")),
        ):
            if not job.get(field) or not actual:
                continue
            to_go = at(actual) - when
            if to_go < 1.0:
                continue  # a second or less to go: nothing worth estimating
            error = at(job[field]) - at(actual)
            errors[f"{what}_s"].append(error)
            errors[f"{what}_rel"].append(error / to_go)
    errors["estimates_without_times"] = [
        float(sum(1 for _, job in seen if job["status"] == "new" and not job.get("eta_start")))
    ]
    errors["waiting_snapshots"] = [float(sum(1 for _, job in seen if job["status"] == "new"))]
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    check_model(args.models_dir)
    pooled: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="kiosk-eta-") as folder:
            for name, values in one_round(args, Path(folder)).items():
                pooled.setdefault(name, []).extend(values)

    rows = [["estimate", "n", "median error", "p10..p90 error", "median |error| / time to go"]]
    summary: dict[str, Any] = {}
    for what in ("start", "finish", "fifo_start"):
        seconds, relative = pooled[f"{what}_s"], pooled[f"{what}_rel"]
        if not seconds:
            continue
        magnitude = [abs(r) for r in relative]
        summary[what] = {
            "n": len(seconds),
            "error_s": spread(seconds)
            | {"p10": percentile(seconds, 10), "p90": percentile(seconds, 90)},
            "abs_relative": spread(magnitude) | {"p90": percentile(magnitude, 90)},
        }
        rows.append(
            [
                LABELS[what],
                str(len(seconds)),
                f"{summary[what]['error_s']['median']:+.1f} s",
                f"{percentile(seconds, 10):+.1f} .. {percentile(seconds, 90):+.1f} s",
                f"{summary[what]['abs_relative']['median']:.0%} "
                f"(p90 {percentile(magnitude, 90):.0%})",
            ]
        )
    if "start" in summary and "fifo_start" in summary:
        ratio = (
            summary["start"]["abs_relative"]["median"]
            / summary["fifo_start"]["abs_relative"]["median"]
        )
        summary["start_error_vs_first_come"] = ratio
        rows.append(["eta_start / baseline", "", "", "", f"{ratio:.2f}"])
    summary["waiting_snapshots"] = sum(pooled["waiting_snapshots"])
    summary["waiting_without_times"] = sum(pooled["estimates_without_times"])
    print(table(rows))
    print(
        f"\n{summary['waiting_without_times']:.0f} of {summary['waiting_snapshots']:.0f} "
        "looks at a waiting job had a position but no times (nothing measured yet)"
    )
    path = save("eta_accuracy", {"rounds": args.rounds, "bursts": BURSTS, "summary": summary})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
