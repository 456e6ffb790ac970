"""Zip jobs: fan-out into child jobs, a parent that waits without a consumer, fan-in of results."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from consumers.base import Job, JobError, Waiting
from consumers.zips import ZipConsumer, plan_entries, result_name, unsafe_name
from kiosk.keys import JobField, Status
from kiosk.queue import JobQueue
from kiosk.settings import ConsumerSettings
from kiosk.storage.local import LocalBucket
from tests.conftest import ServiceGroup, start_stack
from tests.helpers import PNG, TIFF, submit_file, zip_bytes
from tests.support.servers import wait_for

LIMITS = {"max_entries": 100, "max_entry_bytes": 1000, "max_total_bytes": 10_000}


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


def test_result_names_keep_folders_and_never_collide() -> None:
    taken: set[str] = set()
    assert result_name("plate1/a.png", "output/x/a.tif", taken) == "plate1/a_labels.tif"
    assert result_name("plate1/a.tif", "output/y/a.tif", taken) == "plate1/a_labels_2.tif"


# ----------------------------------------------------------------------------- in process


def consumer_settings(redis_url: str, bucket_dir: Path) -> ConsumerSettings:
    return ConsumerSettings(redis_url=redis_url, bucket=f"file://{bucket_dir}", queues=("echo",))


def claim_zip(queue: JobQueue, bucket: LocalBucket, data: bytes) -> tuple[Job, object]:
    key = submit_file(queue, bucket, "echo", "plate.zip", data)
    claim = queue.claim("echo-zip", "z1", 1)
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
    assert sorted(queue.redis.lrange("echo", 0, -1)) == sorted(children)
    child = queue.get(children[0])
    assert child[JobField.PARENT] == job.key
    assert bucket.get_bytes(child[JobField.INPUT_FILE_NAME]) == TIFF
    assert json.loads(job.get(JobField.FAILURES))[0]["name"] == "c.txt"


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
    assert queue.redis.lrange("echo-zip", 0, -1) == [job.key]
    parent = queue.get(job.key)
    assert (parent[JobField.CHILDREN_DONE], parent[JobField.CHILDREN_FAILED]) == ("1", "1")


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
    assert queue.redis.lrange("echo-zip", 0, -1) == [job.key]


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
    assert shown["children"] == {"total": 2, "done": 1, "failed": 0}
    assert shown["failures"][0]["name"] == "notes.txt"
    child = api.get(f"/api/v1/jobs/{first.key}").json()
    assert child["children"] is None and child["failures"] is None
