"""The original kiosk-client (0.8.4, from PyPI) against a running stack, unchanged: it uploads,
creates, polls, summarises, downloads and expires a job; with ``-j segmentation`` it gets label
images back from the bundled model."""

from __future__ import annotations

import io
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import tifffile

from evaluation.quality import score
from evaluation.synthetic import generate
from kiosk.keys import JOB_INDEX, JobField, Status
from kiosk.queue import JobQueue
from tests.conftest import RunningStack, ServiceGroup, start_stack
from tests.support import tracking_standin
from tests.support.jobtypes import PLUGINS
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


def test_kiosk_client_runs_a_tracking_job_and_downloads_its_results_zip(
    env: dict, queue: JobQueue, processes: ServiceGroup, tmp_path: Path
) -> None:
    """``kiosk-client MOVIE -j tracking`` as its users ran it against the DeepCell Kiosk: the
    routes are the same for every job type, and output_url is the movie's results zip. The
    tracking consumer is a stand-in that writes what the real one does."""
    tracking_env = {
        **env,
        "KIOSK_QUEUES": "echo,tracking",
        "KIOSK_JOB_TYPE_PLUGINS": f"{PLUGINS},{tracking_standin.PLUGIN}",
        "TEST_FRAME_SECONDS": "0.1",
    }
    running = start_stack(tracking_env, queue, processes, {"tracking": 1})
    movie = tmp_path / "movie.tif"
    frames = np.zeros((4, 32, 48), np.uint16)
    tifffile.imwrite(movie, frames, photometric="minisblack", metadata={"axes": "TYX"})
    out = tmp_path / "out"
    out.mkdir()
    summary = run_kiosk_client(movie, "tracking", running.url, out, tmp_path)
    (job,) = summary["job_data"]
    assert job["status"] == Status.DONE and job["reason"] is None
    assert job["job_id"].startswith("tracking:")
    assert job["download_url"].endswith("_tracking.zip")  # named after the upload
    (saved,) = out.glob("*_tracking.zip")
    with zipfile.ZipFile(saved) as results:
        first = results.namelist()[0]  # what ImageJ's URL opener shows
        assert tifffile.imread(io.BytesIO(results.read(first))).shape == (4, 32, 48)
    assert 0 < running.queue.redis.ttl(job["job_id"]) <= 3600
