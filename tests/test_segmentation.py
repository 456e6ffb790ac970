"""The segmentation job type end to end: real Redis, the embedded model server with the bundled
model, consumer processes; images in every layout the jobs allow, and every kind of bad input."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import tifffile

from evaluation.baseline import classical_cytoplasm
from evaluation.cells import generate_cells
from evaluation.quality import score
from evaluation.synthetic import generate
from kiosk.jobs import NO_PREVIEW, ZIP_PREVIEWS
from kiosk.keys import JobField
from kiosk.queue import JobQueue
from kiosk.storage.local import LocalBucket
from tests.conftest import ServiceGroup
from tests.helpers import finished, labels_of, predict_bytes, submit_file, zip_bytes
from tests.support import services


@pytest.fixture
def consumers(segmentation_env: dict, processes: ServiceGroup) -> dict:
    """One segmentation consumer and one zip consumer."""
    for queue in ("segmentation", "segmentation-zip"):
        processes.add(services.consumer(queue, segmentation_env, processes.log_dir))
    return segmentation_env


def tiff(array: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **kwargs)
    return buffer.getvalue()


def submit(queue: JobQueue, bucket: LocalBucket, name: str, data: bytes, **options: str) -> str:
    return submit_file(queue, bucket, "segmentation", name, data, **options)


def test_a_nuclei_image_is_segmented_with_timings_and_a_preview(
    consumers: dict, queue: JobQueue, bucket: LocalBucket
) -> None:
    image, truth = generate((384, 320), seed=11, dtype="uint16")
    job = finished(queue, submit(queue, bucket, "cells.tif", tiff(image)))
    labels = labels_of(bucket, job)
    assert labels.shape == (384, 320) and labels.dtype == np.uint16
    assert score(truth, labels).f1 >= 0.8
    assert int(job[JobField.OBJECTS]) == len(np.unique(labels)) - 1
    assert job[JobField.OUTPUT_FILE_NAME].endswith("/cells_labels.tif")
    for field in (
        JobField.DOWNLOAD_TIME,
        JobField.PREPROCESS_TIME,
        JobField.PREDICTION_TIME,
        JobField.POSTPROCESS_TIME,
        JobField.UPLOAD_TIME,
    ):
        assert float(job[field]) > 0, field
    assert job[JobField.PREDICT_RETRIES] == "0"
    preview = job[JobField.PREVIEW_URL].split("/files/", 1)[1]
    assert bucket.get_bytes(preview).startswith(b"\x89PNG")


def test_an_image_marked_for_no_preview_gets_its_labels_and_no_preview(
    consumers: dict, queue: JobQueue, bucket: LocalBucket
) -> None:
    image, truth = generate((256, 256), seed=12, dtype="uint16")
    job = finished(queue, submit(queue, bucket, "cells.tif", tiff(image), preview=NO_PREVIEW))
    assert job[JobField.STATUS] == "done", job
    assert score(truth, labels_of(bucket, job)).f1 >= 0.8
    assert int(job[JobField.OBJECTS]) > 0 and JobField.PREVIEW_URL not in job
    folder = job[JobField.OUTPUT_FILE_NAME].rsplit("/", 1)[0]
    assert list(bucket.list(folder)) == [job[JobField.OUTPUT_FILE_NAME]]


def test_the_consumer_asks_for_the_lean_float16_signature(
    consumers: dict, queue: JobQueue, bucket: LocalBucket, model_server_metrics
) -> None:
    image, truth = generate((512, 512), seed=13, dtype="uint16")
    before = predict_bytes(model_server_metrics(), "NuclearSegmentation")
    job = finished(queue, submit(queue, bucket, "lean.tif", tiff(image)))
    assert score(truth, labels_of(bucket, job)).f1 >= 0.8
    after = predict_bytes(model_server_metrics(), "NuclearSegmentation")
    sent = {key: after[key] - before.get(key, 0.0) for key in after}
    # One whole 512x512 image: float16 in (2 B/px); three float16 heads of one channel out.
    assert sent[("lean", "in")] == 512 * 512 * 2
    assert sent[("lean", "out")] == 512 * 512 * 2 * 3
    assert sent.get(("serving_default", "out"), 0.0) == 0.0


def test_the_chosen_channel_of_a_multichannel_image_is_segmented(
    consumers: dict, queue: JobQueue, bucket: LocalBucket
) -> None:
    image, truth = generate((256, 256), seed=12, dtype="uint16")
    noise = np.random.default_rng(0).integers(0, 4000, image.shape, dtype=np.uint16)
    stack = tiff(np.stack([noise, image]), photometric="minisblack")  # channels first: CYX
    picked = finished(
        queue,
        submit(queue, bucket, "two.tif", stack, dimension_order="CYX", channels="1"),
    )
    assert score(truth, labels_of(bucket, picked)).f1 >= 0.8
    unpicked = finished(queue, submit(queue, bucket, "two.tif", stack, dimension_order="CYX"))
    assert unpicked[JobField.STATUS] == "failed"
    assert "2 channels" in unpicked[JobField.REASON] and "channels" in unpicked[JobField.REASON]


# One packed 256x256 image swings far from the model's pooled figures (make evaluate: cytoplasm
# 0.89, brightfield 0.75): the floors are for this image, with a margin over the classical
# baseline on it, and the labels must be cells, not nuclei.
@pytest.mark.parametrize(("stain", "floor"), [("cytoplasm", 0.7), ("brightfield", 0.25)])
def test_the_cytoplasm_slot_runs_the_cytoplasm_model_on_that_channel(
    consumers: dict, queue: JobQueue, bucket: LocalBucket, stain: str, floor: float
) -> None:
    """The original's channel slots: ',1' puts channel 1 in the cytoplasm slot, which the
    cytoplasm model segments into whole cells; '0' (or '0,') stays the nuclear model's."""
    drawn = generate_cells((256, 256), seed=70, setting="tissue")
    image = np.clip(drawn.stack(("nuclear", stain)), 0, 65535).astype(np.uint16)
    data = tiff(image, photometric="minisblack")
    cells = labels_of(bucket, finished(queue, submit(queue, bucket, "c.tif", data, channels=",1")))
    baseline = classical_cytoplasm(getattr(drawn, stain), stain_kind=stain)
    found = score(drawn.cells, cells).f1
    assert found >= max(floor, score(drawn.cells, baseline).f1 + 0.1)
    assert found > score(drawn.nuclei, cells).f1
    nuclei = labels_of(bucket, finished(queue, submit(queue, bucket, "n.tif", data, channels="0,")))
    assert score(drawn.nuclei, nuclei).f1 > score(drawn.cells, nuclei).f1


def test_filling_both_slots_is_refused_with_a_pointer_to_mesmer(
    consumers: dict, queue: JobQueue, bucket: LocalBucket
) -> None:
    data = tiff(np.zeros((64, 64, 2), np.uint16), photometric="minisblack")
    job = finished(queue, submit(queue, bucket, "b.tif", data, channels="0,1,"))
    assert job[JobField.STATUS] == "failed"
    assert "mesmer" in job[JobField.REASON] and "channels='0,1'" in job[JobField.REASON]


def test_a_z_stack_is_segmented_plane_by_plane(
    consumers: dict, queue: JobQueue, bucket: LocalBucket
) -> None:
    planes = [generate((192, 192), seed=20 + z, dtype="uint16") for z in range(3)]
    stack = np.stack([image for image, _ in planes])
    data = tiff(stack, photometric="minisblack")
    job = finished(queue, submit(queue, bucket, "stack.tif", data, dimension_order="ZYX"))
    labels = labels_of(bucket, job)
    assert labels.shape == (3, 192, 192)
    for z, (_, truth) in enumerate(planes):
        assert score(truth, labels[z]).f1 >= 0.75, z


def test_the_scale_rescales_the_image_to_the_models_pixel_size(
    consumers: dict, queue: JobQueue, bucket: LocalBucket
) -> None:
    image, truth = generate((512, 512), seed=13, dtype="uint16")
    half, half_truth = image[::2, ::2], truth[::2, ::2]  # the same field at 1.3 um/px
    as_is = labels_of(bucket, finished(queue, submit(queue, bucket, "h.tif", tiff(half))))
    scaled = labels_of(
        bucket, finished(queue, submit(queue, bucket, "h.tif", tiff(half), scale="1.3"))
    )
    assert scaled.shape == half.shape
    assert score(half_truth, scaled).f1 >= 0.75
    assert score(half_truth, scaled).f1 > score(half_truth, as_is).f1


@pytest.mark.parametrize(
    ("name", "data", "options", "words"),
    [
        ("cut.tif", tiff(np.ones((256, 256), np.uint16))[:3000], {}, "truncated"),
        ("junk.tif", b"II*\x00" + b"\x07" * 40, {}, "without any image"),
        ("cells.tif", tiff(np.zeros((64, 64), np.uint16)), {"scale": "fast"}, "microns per pixel"),
        ("cells.tif", tiff(np.zeros((64, 64), np.uint16)), {"model_version": "x"}, "whole number"),
        ("cells.tif", tiff(np.zeros((64, 64), np.uint16)), {"model_name": "Nope"}, "Nope"),
        (
            "cells.tif",
            tiff(np.zeros((64, 64), np.uint16)),
            {"dimension_order": "CYX"},
            "dimension_order",
        ),
    ],
)
def test_bad_inputs_fail_at_once_with_what_to_do_and_keep_the_input(
    consumers: dict,
    queue: JobQueue,
    bucket: LocalBucket,
    name: str,
    data: bytes,
    options: dict,
    words: str,
) -> None:
    job = finished(queue, submit(queue, bucket, name, data, **options))
    assert job[JobField.STATUS] == "failed"
    assert words in job[JobField.REASON]
    assert job[JobField.ATTEMPTS] == "1"  # not retried: a retry cannot fix the input
    assert bucket.exists(job[JobField.INPUT_FILE_NAME])


def test_an_image_over_the_pixel_limit_is_refused_before_it_is_decoded(
    segmentation_env: dict, processes: ServiceGroup, queue: JobQueue, bucket: LocalBucket
) -> None:
    env = {**segmentation_env, "KIOSK_MAX_IMAGE_PIXELS": str(100 * 100)}
    processes.add(services.consumer("segmentation", env, processes.log_dir))
    job = finished(queue, submit(queue, bucket, "big.tif", tiff(np.zeros((128, 128), np.uint16))))
    assert job[JobField.STATUS] == "failed"
    assert "16,384" in job[JobField.REASON] and "10,000" in job[JobField.REASON]


def test_a_zip_of_images_gives_a_zip_of_label_images_and_lists_failures(
    consumers: dict, queue: JobQueue, bucket: LocalBucket
) -> None:
    images = {f"plate/{i}.tif": generate((128, 160), seed=30 + i, dtype="uint16") for i in range(3)}
    members = {name: tiff(image) for name, (image, _) in images.items()}
    members["plate/broken.tif"] = b"II*\x00" + b"\x07" * 40
    key = submit(queue, bucket, "plate.zip", zip_bytes(members))
    parent = finished(queue, key, timeout=120)
    assert parent[JobField.STATUS] == "done", parent.get(JobField.REASON)
    assert (parent[JobField.CHILDREN_DONE], parent[JobField.CHILDREN_FAILED]) == ("3", "1")
    with zipfile.ZipFile(io.BytesIO(bucket.get_bytes(parent[JobField.OUTPUT_FILE_NAME]))) as out:
        assert out.namelist()[0].endswith("_labels.tif")  # ImageJ opens the first entry
        for name, (_, truth) in images.items():
            labels = tifffile.imread(io.BytesIO(out.read(name.replace(".tif", "_labels.tif"))))
            assert labels.shape == truth.shape
        assert "broken.tif" in out.read("failures.csv").decode()


def test_a_zips_images_past_the_portals_thumbnails_get_labels_and_no_preview(
    consumers: dict, queue: JobQueue, bucket: LocalBucket
) -> None:
    count = ZIP_PREVIEWS + 2
    members = {
        f"plate/{i:02d}.tif": tiff(generate((96, 96), seed=60 + i, dtype="uint16")[0])
        for i in range(count)
    }
    parent = finished(queue, submit(queue, bucket, "plate.zip", zip_bytes(members)), timeout=180)
    assert parent[JobField.STATUS] == "done", parent.get(JobField.REASON)
    children = [queue.get(key) for key in parent[JobField.CHILDREN].split(",")]
    assert all(child[JobField.STATUS] == "done" for child in children)
    with_preview = [JobField.PREVIEW_URL in child for child in children]
    assert with_preview == [True] * ZIP_PREVIEWS + [False] * 2
    with zipfile.ZipFile(io.BytesIO(bucket.get_bytes(parent[JobField.OUTPUT_FILE_NAME]))) as out:
        assert len([n for n in out.namelist() if n.endswith("_labels.tif")]) == count
