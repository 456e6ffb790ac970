"""The original kiosk-client (0.8.4, from PyPI) against a running stack, unchanged: it uploads,
creates, polls, summarises, downloads and expires a job; with ``-j segmentation`` it gets label
images back from the bundled model."""

from __future__ import annotations

import subprocess
from pathlib import Path

import tifffile

from evaluation.quality import score
from evaluation.synthetic import generate
from kiosk.keys import JOB_INDEX, JobField, Status
from kiosk.queue import JobQueue
from tests.conftest import RunningStack, ServiceGroup, start_stack
from tests.support.kiosk_client import kiosk_client_python, run_kiosk_client


def test_kiosk_client_runs_a_job_end_to_end(stack: RunningStack, tmp_path: Path) -> None:
    python = kiosk_client_python()
    image = tmp_path / "cells.tif"
    subprocess.run(
        [
            str(python),
            "-c",
            "import sys; from PIL import Image; Image.new('I;16', (64, 48), 7).save(sys.argv[1])",
            str(image),
        ],
        check=True,
    )
    out = tmp_path / "out"
    out.mkdir()
    summary = run_kiosk_client(image, "echo", stack.url, out, tmp_path)
    (job,) = summary["job_data"]
    assert job["status"] == Status.DONE and job["reason"] is None
    assert job["download_url"].startswith(stack.url + "/files/output/")
    assert (out / "result.tif").read_bytes() == image.read_bytes()
    key = job["job_id"]
    assert key.startswith("echo:")
    assert stack.queue.get(key)[JobField.STATUS] == Status.DONE
    assert 0 < stack.queue.redis.ttl(key) <= 3600  # kiosk-client's expire, answered with 1
    assert stack.queue.redis.zscore(JOB_INDEX, key) is not None


def test_kiosk_client_gets_label_images_back_from_segmentation(
    segmentation_env: dict, queue: JobQueue, processes: ServiceGroup, tmp_path: Path
) -> None:
    running = start_stack(segmentation_env, queue, processes, {"segmentation": 1})
    image, truth = generate((256, 256), seed=5, dtype="uint16")
    path = tmp_path / "nuclei.tif"
    tifffile.imwrite(path, image)
    out = tmp_path / "out"
    out.mkdir()
    summary = run_kiosk_client(path, "segmentation", running.url, out, tmp_path)
    (job,) = summary["job_data"]
    assert job["status"] == Status.DONE and job["reason"] is None
    (saved,) = out.glob("*_labels.tif")  # named after the upload: kiosk-client sends that name
    labels = tifffile.imread(saved)
    assert labels.shape == truth.shape
    assert score(truth, labels).f1 >= 0.8
