"""The mesmer job type end to end: real Redis, the embedded model server with the bundled
whole-cell model, consumer processes; each compartment, channel orders, stacks, zips, and the
bad inputs a two-channel job can get; the original's kiosk-client and ImageJ plugin routes."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
from fastapi.testclient import TestClient
from PIL import Image

from evaluation.cells import generate_cells
from evaluation.quality import score
from frontend.app import create_app
from kiosk.keys import JOB_INDEX, JobField, Status
from kiosk.queue import JobQueue
from kiosk.settings import FrontendSettings
from kiosk.storage.local import LocalBucket
from tests.conftest import RunningStack, ServiceGroup, start_stack
from tests.helpers import TIFF, finished, labels_of, predict_bytes, submit_file, zip_bytes
from tests.support import services
from tests.support.kiosk_client import run_kiosk_client
from tests.support.servers import wait_for

SHAPE = (256, 256)


@pytest.fixture
def consumers(segmentation_env: dict, processes: ServiceGroup) -> dict:
    """One mesmer consumer and one zip consumer."""
    env = {**segmentation_env, "KIOSK_QUEUES": "mesmer"}
    for queue in ("mesmer", "mesmer-zip"):
        processes.add(services.consumer(queue, env, processes.log_dir))
    return env


def tiff(array: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **kwargs)
    return buffer.getvalue()


def two_channels(
    seed: int, order: tuple[str, ...] = ("nuclear", "membrane"), **overrides: float | str
):
    """A generated image as uint16 (Y, X, C) with the named channels, and its truth; packed
    tissue unless told otherwise, so that each image has cells enough to score."""
    drawn = generate_cells(SHAPE, seed=seed, **{"setting": "tissue", **overrides})
    stacked = np.clip(drawn.stack(order), 0, 65535).astype(np.uint16)
    return stacked, drawn


def submit(
    queue: JobQueue, bucket: LocalBucket, name: str, data: bytes, job_type: str = "mesmer", **opts
) -> str:
    return submit_file(queue, bucket, job_type, name, data, **opts)


def f1(truth: np.ndarray, labels: np.ndarray) -> float:
    return score(truth, labels).f1


def test_whole_cells_are_segmented_by_default_with_a_preview_of_cells(
    consumers: dict, queue: JobQueue, bucket: LocalBucket
) -> None:
    image, drawn = two_channels(seed=41)
    job = finished(
        queue, submit(queue, bucket, "tissue.tif", tiff(image, photometric="minisblack"))
    )
    labels = labels_of(bucket, job)
    assert labels.shape == SHAPE
    assert f1(drawn.cells, labels) >= 0.85
    assert f1(drawn.cells, labels) > f1(drawn.nuclei, labels)  # cells, not nuclei
    assert int(job[JobField.OBJECTS]) == len(np.unique(labels)) - 1
    preview = Image.open(
        io.BytesIO(bucket.get_bytes(job[JobField.PREVIEW_URL].split("/files/")[1]))
    )
    assert preview.format == "PNG" and preview.size == SHAPE[::-1]


def test_the_nuclear_compartment_gives_nuclei(
    consumers: dict, queue: JobQueue, bucket: LocalBucket
) -> None:
    image, drawn = two_channels(seed=42)
    key = submit(
        queue, bucket, "n.tif", tiff(image, photometric="minisblack"), compartment="nuclear"
    )
    labels = labels_of(bucket, finished(queue, key))
    assert f1(drawn.nuclei, labels) >= 0.85
    assert f1(drawn.nuclei, labels) > f1(drawn.cells, labels)


def test_a_compartment_asks_the_model_server_for_its_own_heads_only(
    consumers: dict, queue: JobQueue, bucket: LocalBucket, model_server_metrics
) -> None:
    image, _ = two_channels(seed=43)
    data = tiff(image, photometric="minisblack")
    pixels = SHAPE[0] * SHAPE[1]  # a multiple of the model's 16-px grid: no padding
    for compartment, heads in (("nuclear", 3), ("both", 6)):
        before = predict_bytes(model_server_metrics(), "WholeCellSegmentation")
        finished(queue, submit(queue, bucket, "c.tif", data, compartment=compartment))
        after = predict_bytes(model_server_metrics(), "WholeCellSegmentation")
        out = after[("lean", "out")] - before.get(("lean", "out"), 0.0)
        assert out == pixels * 2 * heads, compartment  # float16 maps of one channel each


def test_both_compartments_come_as_a_two_channel_label_image(
    consumers: dict, queue: JobQueue, bucket: LocalBucket
) -> None:
    image, drawn = two_channels(seed=43)
    key = submit(queue, bucket, "b.tif", tiff(image, photometric="minisblack"), compartment="both")
    job = finished(queue, key)
    labels = labels_of(bucket, job)
    assert labels.shape == (2, *SHAPE)  # ImageJ hyperstack: C then YX
    with tifffile.TiffFile(io.BytesIO(bucket.get_bytes(job[JobField.OUTPUT_FILE_NAME]))) as tif:
        assert tif.series[0].axes == "CYX"
    assert f1(drawn.cells, labels[0]) >= 0.85
    assert f1(drawn.nuclei, labels[1]) >= 0.85


def test_channels_name_the_nuclear_then_the_membrane_channel(
    consumers: dict, queue: JobQueue, bucket: LocalBucket
) -> None:
    order = ("membrane", "brightfield", "nuclear")
    image, drawn = two_channels(seed=44, order=order, setting="culture", coverage=0.5)
    key = submit(queue, bucket, "c.tif", tiff(image, photometric="minisblack"), channels="2,0")
    labels = labels_of(bucket, finished(queue, key))
    assert f1(drawn.cells, labels) >= 0.85


def test_a_stack_of_two_channel_planes_is_segmented_plane_by_plane(
    consumers: dict, queue: JobQueue, bucket: LocalBucket
) -> None:
    planes = [two_channels(seed=50 + z) for z in range(2)]
    stack = np.stack([np.moveaxis(image, -1, 0) for image, _ in planes])  # (Z, C, Y, X)
    data = tiff(stack, imagej=True, metadata={"axes": "ZCYX"})
    job = finished(queue, submit(queue, bucket, "z.tif", data, compartment="both"))
    labels = labels_of(bucket, job)
    assert labels.shape == (2, 2, *SHAPE)  # Z, C, Y, X
    for z, (_, drawn) in enumerate(planes):
        assert f1(drawn.cells, labels[z, 0]) >= 0.85


def test_a_zip_of_two_channel_images_gives_a_zip_of_whole_cell_labels(
    consumers: dict, queue: JobQueue, bucket: LocalBucket
) -> None:
    images = {f"slide/{i}.tif": two_channels(seed=60 + i) for i in range(2)}
    members = {name: tiff(image, photometric="minisblack") for name, (image, _) in images.items()}
    parent = finished(queue, submit(queue, bucket, "slide.zip", zip_bytes(members)), timeout=180)
    assert parent[JobField.STATUS] == "done", parent.get(JobField.REASON)
    with zipfile.ZipFile(io.BytesIO(bucket.get_bytes(parent[JobField.OUTPUT_FILE_NAME]))) as out:
        for name, (_, drawn) in images.items():
            labels = tifffile.imread(io.BytesIO(out.read(name.replace(".tif", "_labels.tif"))))
            assert f1(drawn.cells, labels) >= 0.85


def test_a_job_submitted_as_multiplex_is_a_mesmer_job(
    consumers: dict, queue: JobQueue, bucket: LocalBucket
) -> None:
    image, drawn = two_channels(seed=45)
    key = submit(queue, bucket, "m.tif", tiff(image, photometric="minisblack"), "multiplex")
    assert key.startswith("mesmer:")
    assert f1(drawn.cells, labels_of(bucket, finished(queue, key))) >= 0.85


ONE_CHANNEL = tiff(np.zeros((64, 64), np.uint16))
THREE_CHANNELS = tiff(  # channels that differ: not a grey picture saved as RGB
    np.random.default_rng(0).integers(0, 4000, (64, 64, 3), dtype=np.uint16),
    photometric="minisblack",
)
TWO_CHANNELS = tiff(np.zeros((64, 64, 2), np.uint16), photometric="minisblack")


@pytest.mark.parametrize(
    ("data", "options", "words"),
    [
        (ONE_CHANNEL, {}, ["has 1 channel", "needs 2", "nuclear stain, then the membrane"]),
        (THREE_CHANNELS, {}, ["has 3 channels", "channels='NUCLEAR,MEMBRANE'"]),
        (THREE_CHANNELS, {"channels": "1,1"}, ["channel 1 twice"]),
        (TWO_CHANNELS, {"channels": "0"}, ["selects 1 channel(s)", "needs 2"]),
        (TWO_CHANNELS, {"channels": "0,5"}, ["channel 5 does not exist"]),
        (TWO_CHANNELS, {"compartment": "cytoplasm"}, ["whole-cell", "nuclear", "both"]),
    ],
)
def test_bad_two_channel_inputs_fail_at_once_with_what_to_do(
    consumers: dict,
    queue: JobQueue,
    bucket: LocalBucket,
    data: bytes,
    options: dict,
    words: list[str],
) -> None:
    job = finished(queue, submit(queue, bucket, "bad.tif", data, **options))
    assert job[JobField.STATUS] == "failed"
    for word in words:
        assert word in job[JobField.REASON], job[JobField.REASON]
    assert job[JobField.ATTEMPTS] == "1"
    assert bucket.exists(job[JobField.INPUT_FILE_NAME])


# ------------------------------------------------------------------ the original's clients


@pytest.fixture
def mesmer_stack(segmentation_env: dict, queue: JobQueue, processes: ServiceGroup):
    """Janitor, frontend and a mesmer consumer, as real processes."""
    env = {**segmentation_env, "KIOSK_QUEUES": "mesmer"}
    return start_stack(env, queue, processes, {"mesmer": 1})


def test_kiosk_client_gets_whole_cell_labels_back_from_mesmer(
    mesmer_stack: RunningStack, tmp_path: Path
) -> None:
    image, drawn = two_channels(seed=46)
    path = tmp_path / "tissue.tif"
    tifffile.imwrite(path, np.moveaxis(image, -1, 0), imagej=True, metadata={"axes": "CYX"})
    out = tmp_path / "out"
    out.mkdir()
    summary = run_kiosk_client(path, "mesmer", mesmer_stack.url, out, tmp_path)
    (job,) = summary["job_data"]
    assert job["status"] == Status.DONE and job["reason"] is None
    assert job["job_id"].startswith("mesmer:")
    (saved,) = out.glob("*_labels.tif")
    assert f1(drawn.cells, tifffile.imread(saved)) >= 0.85


def test_the_imagej_plugin_routes_run_a_multiplex_job_to_its_label_image(
    mesmer_stack: RunningStack,
) -> None:
    """The plugin's calls: upload, predict (the original's job type name, multiplex), poll the
    status, read output_url and reason, open output_url."""
    image, drawn = two_channels(seed=47)
    url = mesmer_stack.url
    data = tiff(image, photometric="minisblack")
    uploaded = httpx.post(f"{url}/api/upload/", files={"file": ("t.tif", data)}).json()
    predicted = httpx.post(
        f"{url}/api/predict/",
        json={
            "jobType": "multiplex",
            "imageName": "t.tif",
            "uploadedName": uploaded["uploadedName"],
        },
    ).json()
    key = predicted["hash"]
    assert key.startswith("mesmer:")

    def status() -> str:
        return httpx.post(f"{url}/api/status/", json={"hash": key}).json()["status"]

    wait_for(lambda: status() in ("done", "failed"), 120, 0.2)
    read = httpx.post(f"{url}/api/redis/", json={"hash": key, "key": ["output_url", "reason"]})
    output_url, reason = read.json()["value"]
    assert status() == "done" and reason is None
    labels = tifffile.imread(io.BytesIO(httpx.get(output_url).content))
    assert f1(drawn.cells, labels) >= 0.85


def test_the_api_lists_mesmer_as_multiplex_too_and_checks_the_compartment(
    frontend_settings: FrontendSettings, queue: JobQueue
) -> None:
    settings = frontend_settings.model_copy(update={"queues": ("segmentation", "mesmer")})
    with TestClient(create_app(settings)) as api:
        assert api.get("/api/v1/job-types").json() == {
            "job_types": ["segmentation", "mesmer"],
            "aliases": {"multiplex": "mesmer"},
        }
        for job_type, compartment, words in (
            ("segmentation", "nuclear", "option of mesmer jobs"),
            ("mesmer", "membrane", "whole-cell, nuclear, both"),
        ):
            refused = api.post(
                "/api/v1/jobs",
                data={"job_type": job_type, "compartment": compartment},
                files={"file": ("a.tif", TIFF)},
            )
            assert refused.status_code == 422 and words in refused.json()["message"]
        assert queue.redis.zcard(JOB_INDEX) == 0
        created = api.post(
            "/api/v1/jobs",
            data={"job_type": "multiplex", "compartment": "both", "channels": "1,0"},
            files={"file": ("a.tif", TIFF)},
        ).json()
        assert created["job_type"] == "mesmer"
        assert created["options"] == {"compartment": "both", "channels": "1,0"}
