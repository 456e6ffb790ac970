"""Zip jobs: fan-out into child jobs, a parent that waits without a consumer, fan-in of results."""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile

from consumers.base import Job, JobError, JobLost, Waiting
from consumers.zips import (
    IMAGE_SLACK,
    RATIO_ALLOWANCE,
    BadEntry,
    ZipConsumer,
    copy_entry,
    max_unpacked,
    needs_accounting,
    padding_problem,
    plan_entries,
    ratio_problem,
    result_name,
    unsafe_name,
)
from kiosk.jobs import NO_PREVIEW
from kiosk.keys import INPUT_USERS, WOKEN, JobField, Status
from kiosk.queue import JobQueue
from kiosk.settings import ConsumerSettings
from kiosk.storage.local import LocalBucket
from tests.conftest import ServiceGroup, start_stack
from tests.helpers import PNG, TIFF, submit_file, zip_bytes
from tests.support.servers import wait_for

LIMITS = {
    "max_entries": 100,
    "max_entry_bytes": 1000,
    "max_total_bytes": 10_000,
    "zip_size": 1000,
    "max_ratio": 100.0,
}


def infos(members: dict[str, bytes]) -> list[zipfile.ZipInfo]:
    return zipfile.ZipFile(io.BytesIO(zip_bytes(members))).infolist()


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../evil.png", "'..'"),
        ("a/../../evil.png", "'..'"),
        ("/etc/evil.png", "absolute"),
        ("C:/evil.png", "absolute"),
        ("a\x01.png", "control character"),
    ],
)
def test_unsafe_member_names_are_refused(name: str, why: str) -> None:
    assert why in unsafe_name(name)


def test_plan_runs_images_and_lists_everything_else_with_a_reason() -> None:
    entries, skipped = plan_entries(
        infos(
            {
                "a.tif": TIFF,
                "sub/b.PNG": PNG,
                "__MACOSX/sub/._b.PNG": b"meta",
                "notes.txt": b"text",
                "../evil.png": PNG,
                "big.tif": TIFF + b"\x00" * 2000,
                "empty.png": b"",
            }
        ),
        **LIMITS,
    )
    assert [e.name for e in entries] == ["a.tif", "sub/b.PNG"]
    reasons = {s.name: s.reason for s in skipped}
    assert "macOS" in reasons["__MACOSX/sub/._b.PNG"]
    assert "not an image" in reasons["notes.txt"]
    assert "'..'" in reasons["../evil.png"]
    assert "KIOSK_MAX_ZIP_ENTRY_BYTES" in reasons["big.tif"]
    assert "empty" in reasons["empty.png"]


def test_a_zip_bomb_is_refused_whole_before_anything_is_unpacked() -> None:
    bomb = zip_bytes({f"{i}.tif": b"\x00" * 900 for i in range(20)}, zipfile.ZIP_DEFLATED)
    assert len(bomb) < 10_000 < 20 * 900 + 1
    with pytest.raises(JobError, match="KIOSK_MAX_ZIP_TOTAL_BYTES"):
        plan_entries(zipfile.ZipFile(io.BytesIO(bomb)).infolist(), **LIMITS)
    with pytest.raises(JobError, match="KIOSK_MAX_ZIP_ENTRIES"):
        plan_entries(infos({f"{i}.tif": TIFF for i in range(5)}), **{**LIMITS, "max_entries": 4})


def zip_info(file_size: int, compress_size: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("a.tif")
    info.file_size, info.compress_size = file_size, compress_size
    return info


def test_a_zip_may_unpack_to_its_ratio_times_its_size_plus_an_allowance() -> None:
    assert max_unpacked(1000, 100) == 100_000 + RATIO_ALLOWANCE
    assert ratio_problem(100_000 + RATIO_ALLOWANCE, 1000, 100) is None
    problem = ratio_problem(100_001 + RATIO_ALLOWANCE, 1000, 100)
    assert problem is not None
    assert "KIOSK_MAX_ZIP_RATIO" in problem and "save them compressed" in problem
    assert ratio_problem(200_000 + RATIO_ALLOWANCE, 1000, 200) is None  # the setting moves it


def test_only_large_entries_that_compress_better_than_the_ratio_are_checked() -> None:
    mib = 1024 * 1024
    assert needs_accounting(zip_info(8 * mib, 20_000), 100)  # 420:1
    assert not needs_accounting(zip_info(8 * mib, 4 * mib), 100)  # 2:1, noisy pixels
    assert not needs_accounting(zip_info(IMAGE_SLACK, 1), 100)  # too small to hide much


def test_an_image_must_have_pixels_that_account_for_its_size() -> None:
    mib = 1024 * 1024
    assert padding_problem(8 * mib, 20_000, 8 * mib) is None  # a mostly-black 2048x2048 uint16
    assert padding_problem(2 * 8 * mib + IMAGE_SLACK, 1, 8 * mib) is None
    padded = padding_problem(900 * mib, 900_000, 64)
    assert padded is not None and "pixels take 64 bytes" in padded
    assert "1049:1" in padded and "not image data" in padded
    unreadable = padding_problem(900 * mib, 900_000, None)
    assert unreadable is not None and "cannot be read" in unreadable


def test_no_entry_is_streamed_past_the_size_its_directory_declares(bucket: LocalBucket) -> None:
    lying = io.BytesIO(TIFF + b"\0" * 5000)
    with (
        pytest.raises(BadEntry, match="more than the 64 bytes"),
        bucket.open_write("uploads/x") as dst,
    ):
        copy_entry(lying, dst, declared=len(TIFF))
    assert not bucket.exists("uploads/x")
    with bucket.open_write("uploads/y.tif") as dst:
        copy_entry(io.BytesIO(TIFF), dst, declared=len(TIFF))
    assert bucket.get_bytes("uploads/y.tif") == TIFF


def test_result_names_keep_folders_and_never_collide() -> None:
    taken: set[str] = set()
    assert result_name("plate1/a.png", "output/x/a.tif", taken) == "plate1/a_labels.tif"
    assert result_name("plate1/a.tif", "output/y/a.tif", taken) == "plate1/a_labels_2.tif"


# ----------------------------------------------------------------------------- in process


def consumer_settings(redis_url: str, bucket_dir: Path) -> ConsumerSettings:
    return ConsumerSettings(redis_url=redis_url, bucket=f"file://{bucket_dir}", queues=("echo",))


def claim_zip(
    queue: JobQueue, bucket: LocalBucket, data: bytes, job_type: str = "echo"
) -> tuple[Job, object]:
    key = submit_file(queue, bucket, job_type, "plate.zip", data)
    claim = queue.claim(f"{job_type}-zip", "z1", 1)
    assert claim is not None and claim.key == key

    def update(fields):
        assert queue.update(claim, "z1", fields).value == "applied"

    return Job(claim, bucket, update), claim


def test_fan_out_run_twice_creates_each_child_once(
    queue: JobQueue, bucket: LocalBucket, redis_url: str, bucket_dir: Path
) -> None:
    settings = ConsumerSettings(
        redis_url=redis_url, bucket=f"file://{bucket_dir}", queues=("echo",)
    )
    consumer = ZipConsumer(settings, bucket, queue)
    job, _ = claim_zip(queue, bucket, zip_bytes({"a.tif": TIFF, "b.tif": TIFF, "c.txt": b"x"}))
    first = consumer.process(job)
    again = consumer.process(job)  # as after a crash mid fan-out and a requeue
    assert isinstance(first, Waiting) and isinstance(again, Waiting)
    children = job.get(JobField.CHILDREN).split(",")
    assert len(children) == 2 and queue.redis.llen("echo") == 2
    assert sorted(queue.waiting("echo")) == sorted(children)
    child = queue.get(children[0])
    assert child[JobField.PARENT] == job.key
    assert bucket.get_bytes(child[JobField.INPUT_FILE_NAME]) == TIFF
    assert json.loads(job.get(JobField.FAILURES))[0]["name"] == "c.txt"


def with_bad_crc(data: bytes, name: str) -> bytes:
    """The zip with a byte of ``name``'s stored data changed: reading it fails its CRC."""
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo(name)
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26 :][:4])
    at = info.header_offset + 30 + name_length + extra_length
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


ChildrenOf = Callable[[bytes, str], list[dict[str, str]]]


@pytest.fixture
def fan_out(queue: JobQueue, bucket: LocalBucket, redis_url: str, bucket_dir: Path) -> ChildrenOf:
    """Fans a zip (bytes) of a job type out with a zip consumer: its child jobs, in order."""

    def children(data: bytes, job_type: str) -> list[dict[str, str]]:
        settings = ConsumerSettings(
            redis_url=redis_url, bucket=f"file://{bucket_dir}", queues=(job_type,)
        )
        job, _ = claim_zip(queue, bucket, data, job_type)
        assert isinstance(ZipConsumer(settings, bucket, queue).process(job), Waiting)
        return [queue.get(key) for key in job.get(JobField.CHILDREN).split(",")]

    return children


def test_only_a_zips_first_children_are_marked_to_get_a_preview(
    fan_out: ChildrenOf, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("consumers.zips.ZIP_PREVIEWS", 2)
    members = {"notes.txt": b"x", "a.tif": TIFF, "b.tif": TIFF, "c.tif": TIFF, "d.tif": TIFF}
    data = with_bad_crc(zip_bytes(members), "a.tif")
    children = fan_out(data, "echo")
    # The portal shows the first children as listed (GET /api/v1/jobs?parent=): a skipped
    # entry takes no place among them, an image that could not be unpacked (failed) does.
    assert [child[JobField.ORIGINAL_NAME] for child in children] == [
        "a.tif",
        "b.tif",
        "c.tif",
        "d.tif",
    ]
    assert children[0][JobField.STATUS] == "failed"
    marks = [child.get(JobField.PREVIEW, "") for child in children]
    assert marks == ["", "", NO_PREVIEW, NO_PREVIEW]


def test_a_zip_of_movies_marks_none_of_them_since_a_movies_preview_is_a_result(
    fan_out: ChildrenOf, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("consumers.zips.ZIP_PREVIEWS", 1)
    data = zip_bytes({"a.tif": TIFF, "b.tif": TIFF})
    children = fan_out(data, "tracking")
    assert len(children) == 2 and all(JobField.PREVIEW not in child for child in children)


def test_a_parent_is_released_once_whether_its_children_end_before_or_after_it_parks(
    queue: JobQueue, bucket: LocalBucket, redis_url: str, bucket_dir: Path
) -> None:
    settings = ConsumerSettings(
        redis_url=redis_url, bucket=f"file://{bucket_dir}", queues=("echo",)
    )
    job, claim = claim_zip(queue, bucket, zip_bytes({"a.tif": TIFF, "b.tif": TIFF}))
    result = ZipConsumer(settings, bucket, queue).process(job)
    first, second = (queue.claim("echo", "c1", 1) for _ in range(2))
    queue.finish(first, "c1", {})  # one child ends while the parent is still held
    queue.wait_for_children(claim, "z1", result.fields)
    assert queue.get(job.key)[JobField.STATUS] == Status.WAITING
    assert queue.redis.llen("echo-zip") == 0 and queue.redis.llen("processing-echo-zip:z1") == 0
    assert queue.get(job.key)[JobField.PROGRESS] == "50"
    queue.fail(second, "c1", "bad image")
    assert queue.waiting("echo-zip") == [job.key]
    parent = queue.get(job.key)
    assert (parent[JobField.CHILDREN_DONE], parent[JobField.CHILDREN_FAILED]) == ("1", "1")


def four_children_parked(
    queue: JobQueue, bucket: LocalBucket, redis_url: str, bucket_dir: Path, wake_at: str
) -> tuple[Job, object, list]:
    """A zip of four images fanned out and parked with ``wake_at``; its four children claimed."""
    settings = ConsumerSettings(
        redis_url=redis_url, bucket=f"file://{bucket_dir}", queues=("echo",)
    )
    images = {f"{name}.tif": TIFF for name in "abcd"}
    job, claim = claim_zip(queue, bucket, zip_bytes(images))
    result = ZipConsumer(settings, bucket, queue).process(job)
    assert isinstance(result, Waiting)
    queue.wait_for_children(claim, "z1", {**result.fields, JobField.WAKE_AT: wake_at})
    return job, claim, [queue.claim("echo", "c1", 1) for _ in images]


def claim_woken(queue: JobQueue, job: Job):
    """The parent, claimed back from its queue (woken)."""
    woken = queue.claim("echo-zip", "z1", 1)
    assert woken is not None and woken.key == job.key
    return woken


def test_a_parent_parked_with_wake_at_goes_back_early_once_and_is_never_queued_twice(
    queue: JobQueue, bucket: LocalBucket, redis_url: str, bucket_dir: Path
) -> None:
    job, _, children = four_children_parked(queue, bucket, redis_url, bucket_dir, "2")
    queue.finish(children[0], "c1", {})
    assert queue.waiting("echo-zip") == []
    queue.finish(children[1], "c1", {})  # the second end: woken early
    assert queue.waiting("echo-zip") == [job.key]
    assert queue.get(job.key)[JobField.WAKE_AT] == WOKEN
    assert queue.get(job.key)[JobField.STATUS] == Status.WAITING
    queue.finish(children[2], "c1", {})
    queue.fail(children[3], "c1", "bad image")  # the last end finds it in its line already
    assert queue.waiting("echo-zip") == [job.key] and queue.redis.llen("echo-zip") == 1
    assert queue.get(job.key)[JobField.PROGRESS] == "99"


def test_a_woken_parent_parks_again_and_goes_back_at_its_next_wake_or_its_last_child(
    queue: JobQueue, bucket: LocalBucket, redis_url: str, bucket_dir: Path
) -> None:
    job, _, children = four_children_parked(queue, bucket, redis_url, bucket_dir, "1")
    queue.finish(children[0], "c1", {})
    queue.wait_for_children(claim_woken(queue, job), "z1", {JobField.WAKE_AT: "3"})
    assert queue.get(job.key)[JobField.WAKE_AT] == "3" and queue.waiting("echo-zip") == []
    for child in children[1:3]:
        queue.finish(child, "c1", {})
    woken = claim_woken(queue, job)
    queue.finish(children[3], "c1", {})  # the last end while the parent is held: not queued
    assert queue.waiting("echo-zip") == []
    queue.wait_for_children(woken, "z1", {})  # parks with no wake: back at once, wake gone
    assert queue.waiting("echo-zip") == [job.key]
    assert JobField.WAKE_AT not in queue.get(job.key)


def test_a_parent_parked_with_a_wake_already_due_goes_back_at_once(
    queue: JobQueue, bucket: LocalBucket, redis_url: str, bucket_dir: Path
) -> None:
    job, _, children = four_children_parked(queue, bucket, redis_url, bucket_dir, "3")
    queue.finish(children[0], "c1", {})
    woken = queue.claim("echo-zip", "z1", 1)
    assert woken is None  # not yet: one of four ended, the wake is at three
    for child in children[1:3]:
        queue.finish(child, "c1", {})
    assert queue.waiting("echo-zip") == [job.key]
    woken = claim_woken(queue, job)
    queue.wait_for_children(woken, "z1", {JobField.WAKE_AT: "2"})  # passed while it was held
    assert queue.waiting("echo-zip") == [job.key]


def test_deleting_a_child_that_has_not_run_counts_it_as_failed(
    queue: JobQueue, bucket: LocalBucket, redis_url: str, bucket_dir: Path
) -> None:
    settings = ConsumerSettings(
        redis_url=redis_url, bucket=f"file://{bucket_dir}", queues=("echo",)
    )
    job, claim = claim_zip(queue, bucket, zip_bytes({"a.tif": TIFF}))
    result = ZipConsumer(settings, bucket, queue).process(job)
    queue.wait_for_children(claim, "z1", result.fields)
    (child,) = job.get(JobField.CHILDREN).split(",")
    assert queue.delete(child, "echo")
    assert queue.get(job.key)[JobField.CHILDREN_FAILED] == "1"
    assert queue.waiting("echo-zip") == [job.key]


def tiff(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array)
    return buffer.getvalue()


def padded(mib: int) -> bytes:
    """A valid 8x8 TIFF followed by ``mib`` MiB of zeros."""
    return tiff(np.ones((8, 8), np.uint8)) + bytes(mib * 1024 * 1024)


def mostly_black(seed: int = 0) -> np.ndarray:
    """A 2048x2048 uint16 fluorescence field: 20 nuclei on an exactly black background."""
    rng = np.random.default_rng(seed)
    image = np.zeros((2048, 2048), np.uint16)
    yy, xx = np.mgrid[-20:21, -20:21]
    disk = yy**2 + xx**2 < 18**2
    for y, x in rng.integers(40, 2000, (20, 2)):
        image[y - 20 : y + 21, x - 20 : x + 21][disk] = rng.poisson(1500, disk.sum())
    return image


def uploads(bucket: LocalBucket) -> list[str]:
    return sorted(bucket.list("uploads/"))


def test_a_zip_of_small_images_padded_with_zeros_is_refused_whole_writing_nothing(
    queue: JobQueue, bucket: LocalBucket, redis_url: str, bucket_dir: Path
) -> None:
    data = zip_bytes({f"{i}.tif": padded(40) for i in range(3)}, zipfile.ZIP_DEFLATED)
    assert len(data) < 1024 * 1024  # 120 MiB of "images" in a zip of a few hundred KiB
    job, _ = claim_zip(queue, bucket, data)
    (upload,) = uploads(bucket)
    with pytest.raises(JobError, match="KIOSK_MAX_ZIP_RATIO") as refused:
        ZipConsumer(consumer_settings(redis_url, bucket_dir), bucket, queue).process(job)
    assert "save them compressed" in str(refused.value)
    assert uploads(bucket) == [upload] and list(bucket.list("output/")) == []
    assert not job.get(JobField.CHILDREN)


def test_an_image_padded_within_the_allowance_is_refused_by_its_header_and_the_rest_run(
    queue: JobQueue, bucket: LocalBucket, redis_url: str, bucket_dir: Path
) -> None:
    good = tiff(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    data = zip_bytes({"padded.tif": padded(20), "good.tif": good}, zipfile.ZIP_DEFLATED)
    job, _ = claim_zip(queue, bucket, data)
    result = ZipConsumer(consumer_settings(redis_url, bucket_dir), bucket, queue).process(job)
    assert isinstance(result, Waiting)
    (child,) = job.get(JobField.CHILDREN).split(",")
    assert bucket.get_bytes(queue.get(child)[JobField.INPUT_FILE_NAME]) == good
    (failure,) = json.loads(job.get(JobField.FAILURES))
    assert failure["name"] == "padded.tif"
    assert "pixels take 64 bytes" in failure["reason"] and "not image data" in failure["reason"]
    assert len(uploads(bucket)) == 2  # the zip and the good image: nothing of the padded one


def test_a_mostly_black_uint16_tiff_that_compresses_hundreds_to_one_passes(
    queue: JobQueue, bucket: LocalBucket, redis_url: str, bucket_dir: Path
) -> None:
    image = tiff(mostly_black())
    data = zip_bytes({"field.tif": image}, zipfile.ZIP_DEFLATED)
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo("field.tif")
    assert info.file_size / info.compress_size > 100  # past KIOSK_MAX_ZIP_RATIO's default
    job, _ = claim_zip(queue, bucket, data)
    result = ZipConsumer(consumer_settings(redis_url, bucket_dir), bucket, queue).process(job)
    assert isinstance(result, Waiting) and json.loads(job.get(JobField.FAILURES)) == []
    (child,) = job.get(JobField.CHILDREN).split(",")
    assert bucket.get_bytes(queue.get(child)[JobField.INPUT_FILE_NAME]) == image


def test_a_zip_directory_that_lies_about_sizes_cannot_make_an_entry_write_more(
    queue: JobQueue, bucket: LocalBucket, redis_url: str, bucket_dir: Path
) -> None:
    content = padded(3)
    data = bytearray(zip_bytes({"a.tif": content}, zipfile.ZIP_DEFLATED))
    directory = data.rindex(b"PK\x01\x02")  # the central directory's entry for a.tif
    data[directory + 16 : directory + 20] = struct.pack("<I", zlib.crc32(content[:1000]))
    data[directory + 24 : directory + 28] = struct.pack("<I", 1000)  # "unpacks to 1000 bytes"
    job, _ = claim_zip(queue, bucket, bytes(data))
    ZipConsumer(consumer_settings(redis_url, bucket_dir), bucket, queue).process(job)
    (child,) = job.get(JobField.CHILDREN).split(",")
    assert bucket.size(queue.get(child)[JobField.INPUT_FILE_NAME]) == 1000


def test_a_zip_deleted_while_it_unpacks_stops_and_leaves_no_image_behind(
    queue: JobQueue, bucket_dir: Path, redis_url: str
) -> None:
    class DeletesTheZipMidway(LocalBucket):
        writes = 0

        def open_write(self, key: str):
            if key.startswith("uploads/") and "/" in key.removeprefix("uploads/"):
                self.writes += 1
                if self.writes == 2:  # as DELETE /api/v1/jobs/{zip} would, between two images
                    queue.delete(job.key, "echo-zip")
            return super().open_write(key)

    bucket = DeletesTheZipMidway(bucket_dir)
    job, _ = claim_zip(queue, bucket, zip_bytes({f"{i}.tif": TIFF for i in range(3)}))
    with pytest.raises(JobLost, match="deleted while it was unpacked"):
        ZipConsumer(consumer_settings(redis_url, bucket_dir), bucket, queue).process(job)
    first, second, third = job.get(JobField.CHILDREN).split(",")
    assert queue.get(first) is not None  # made before the zip went: its DELETE takes it
    assert queue.get(second) is None and queue.get(third) is None
    assert len(uploads(bucket)) == 2  # the zip and the first image


# ----------------------------------------------------------------------------- processes


def wait_until_ended(queue: JobQueue, key: str, timeout: float = 60) -> dict[str, str]:
    wait_for(lambda: queue.get(key)[JobField.STATUS] in ("done", "failed"), timeout=timeout)
    return queue.get(key)


def test_a_zip_with_bad_entries_finishes_with_the_good_results_and_lists_the_rest(
    env: dict, queue: JobQueue, bucket: LocalBucket, processes: ServiceGroup
) -> None:
    start_stack(env, queue, processes, {"echo": 2, "echo-zip": 1})
    members = {
        "a.tif": TIFF + b"a",
        "plate/b.png": PNG + b"b",
        "c.tif": TIFF + b"c",
        "corrupt.tif": TIFF[:4] + b"CORRUPT",
        "text.png": b"this is not a png",
        "__MACOSX/._a.tif": b"meta",
        "notes.txt": b"notes",
        "../evil.png": PNG,
    }
    key = submit_file(queue, bucket, "echo", "plate.zip", zip_bytes(members))
    parent = wait_until_ended(queue, key)
    assert parent[JobField.STATUS] == "done", parent
    assert parent[JobField.TOTAL_JOBS] == "5"
    assert (parent[JobField.CHILDREN_DONE], parent[JobField.CHILDREN_FAILED]) == ("3", "2")
    failures = {f["name"]: f["reason"] for f in json.loads(parent[JobField.FAILURES])}
    assert set(failures) == {
        "corrupt.tif",
        "text.png",
        "__MACOSX/._a.tif",
        "notes.txt",
        "../evil.png",
    }
    assert (
        "corrupt" in failures["corrupt.tif"] and "not a TIFF, PNG or JPEG" in failures["text.png"]
    )
    with zipfile.ZipFile(io.BytesIO(bucket.get_bytes(parent[JobField.OUTPUT_FILE_NAME]))) as out:
        names = out.namelist()
        assert sorted(names) == [
            "a_labels.tif",
            "c_labels.tif",
            "failures.csv",
            "plate/b_labels.png",
        ]
        assert names[-1] == "failures.csv"  # the first entry is an image, for ImageJ
        assert out.read("plate/b_labels.png") == PNG + b"b"


def test_deleting_a_finished_zip_removes_it_its_images_jobs_and_all_their_files(
    api, env: dict, queue: JobQueue, bucket: LocalBucket, processes: ServiceGroup
) -> None:
    start_stack(env, queue, processes, {"echo": 1, "echo-zip": 1})
    other = submit_file(queue, bucket, "echo", "other.tif")
    members = {"a.tif": TIFF + b"a", "b/c.png": PNG, "bad.tif": TIFF[:4] + b"CORRUPT"}
    created = api.post(
        "/api/v1/jobs", data={"job_type": "echo"}, files={"file": ("plate.zip", zip_bytes(members))}
    )
    parent = wait_until_ended(queue, created.json()["id"])
    assert parent[JobField.STATUS] == "done" and parent[JobField.CHILDREN_FAILED] == "1"
    assert wait_until_ended(queue, other)[JobField.STATUS] == "done"
    others_files = {
        queue.get(other)[k] for k in (JobField.INPUT_FILE_NAME, JobField.OUTPUT_FILE_NAME)
    }
    children = parent[JobField.CHILDREN].split(",")
    assert len(uploads(bucket)) == 5  # the zip, its three images, other.tif
    assert len(list(bucket.list("output/"))) == 4  # two images' results, the results zip, other's

    assert api.delete(f"/api/v1/jobs/{created.json()['id']}").status_code == 204
    assert set(bucket.list()) == others_files
    assert all(queue.get(key) is None for key in [created.json()["id"], *children])
    assert queue.redis.hkeys(INPUT_USERS) == [queue.get(other)[JobField.INPUT_FILE_NAME]]
    assert sorted(p.name for p in (bucket.root / "output").iterdir()) == [
        other.rsplit(":", 1)[1]  # no empty folders are left of the zip's
    ]


def test_a_waiting_parent_holds_no_consumer_so_other_zips_fan_out_meanwhile(
    env: dict, queue: JobQueue, bucket: LocalBucket, processes: ServiceGroup
) -> None:
    start_stack({**env, "TEST_SLOW_SECONDS": "2"}, queue, processes, {"slow": 1, "slow-zip": 1})
    first = submit_file(queue, bucket, "slow", "one.zip", zip_bytes({"a.tif": TIFF, "b.tif": TIFF}))
    second = submit_file(queue, bucket, "slow", "two.zip", zip_bytes({"c.tif": TIFF}))
    wait_for(
        lambda: all(queue.get(k)[JobField.STATUS] == "waiting" for k in (first, second)), timeout=30
    )
    zip_consumer_lists = list(queue.processing_lists(["slow-zip"]))
    assert all(queue.redis.llen(held) == 0 for held in zip_consumer_lists)
    for key in (first, second):
        assert wait_until_ended(queue, key)[JobField.STATUS] == "done"


def test_a_zip_whose_images_all_fail_fails_with_the_first_reason(
    env: dict, queue: JobQueue, bucket: LocalBucket, processes: ServiceGroup
) -> None:
    start_stack(env, queue, processes, {"echo": 1, "echo-zip": 1})
    data = zip_bytes({"x.tif": TIFF[:4] + b"CORRUPT"})
    parent = wait_until_ended(queue, submit_file(queue, bucket, "echo", "bad.zip", data))
    assert parent[JobField.STATUS] == "failed"
    assert "none of the 1 images" in parent[JobField.REASON] and "x.tif" in parent[JobField.REASON]


def test_a_file_that_is_not_a_zip_fails_with_what_to_do(
    env: dict, queue: JobQueue, bucket: LocalBucket, processes: ServiceGroup
) -> None:
    start_stack(env, queue, processes, {"echo-zip": 1})
    data = b"PK\x03\x04 truncated garbage"
    parent = wait_until_ended(queue, submit_file(queue, bucket, "echo", "broken.zip", data))
    assert parent[JobField.STATUS] == "failed"
    assert "not a readable zip" in parent[JobField.REASON]
    assert bucket.exists(parent[JobField.INPUT_FILE_NAME])  # the input is kept


def test_the_api_shows_a_waiting_zip_parents_children_and_skipped_entries(
    api, queue: JobQueue, bucket: LocalBucket, redis_url: str, bucket_dir: Path
) -> None:
    settings = consumer_settings(redis_url, bucket_dir)
    data = zip_bytes({"a.tif": TIFF, "b.tif": TIFF, "notes.txt": b"x"})
    job, claim = claim_zip(queue, bucket, data)
    queue.wait_for_children(claim, "z1", ZipConsumer(settings, bucket, queue).process(job).fields)
    first = queue.claim("echo", "c1", 1)
    queue.finish(first, "c1", {})
    shown = api.get(f"/api/v1/jobs/{job.key}").json()
    assert shown["status"] == "waiting" and shown["progress"] == 50
    assert shown["children"] == {"total": 2, "done": 1, "failed": 0, "unit": "images"}
    assert shown["failures"][0]["name"] == "notes.txt"
    child = api.get(f"/api/v1/jobs/{first.key}").json()
    assert child["children"] is None and child["failures"] is None
