"""Buckets: the same behaviour from file:// and gs:// (the real google-cloud-storage client
against the gcp-storage-emulator from PyPI), and no key that escapes the bucket."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.cloud import storage

from kiosk.storage import Bucket, Deleted, InvalidKey, ObjectNotFound, open_bucket, safe_key
from kiosk.storage.local import LocalBucket
from tests.support.servers import GcsEmulator


@pytest.fixture(params=["file", "gs"])
def any_bucket(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Bucket]:
    if request.param == "file":
        yield open_bucket(f"file://{tmp_path / 'bucket'}")
        return
    emulator: GcsEmulator = request.getfixturevalue("gcs_emulator")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.host)
    name = f"kiosk-test-{uuid.uuid4().hex[:8]}"
    storage.Client().create_bucket(name)
    yield open_bucket(f"gs://{name}")


def test_bytes_round_trip(any_bucket: Bucket) -> None:
    any_bucket.put_bytes("uploads/a.tif", b"II*\x00data")
    assert any_bucket.get_bytes("uploads/a.tif") == b"II*\x00data"
    assert any_bucket.size("uploads/a.tif") == 8
    assert any_bucket.exists("uploads/a.tif")


def test_large_streamed_write_and_file_round_trip(any_bucket: Bucket, tmp_path: Path) -> None:
    data = os.urandom(20 * 1024 * 1024 + 123)  # spans several resumable-upload chunks
    with any_bucket.open_write("output/big.bin") as writer:
        for start in range(0, len(data), 1 << 20):
            writer.write(data[start : start + (1 << 20)])
    any_bucket.download_file("output/big.bin", tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == data


def test_an_aborted_write_leaves_no_object(any_bucket: Bucket) -> None:
    writer = any_bucket.open_write("uploads/partial.tif")
    writer.write(b"x" * 1000)
    writer.abort()
    assert not any_bucket.exists("uploads/partial.tif")
    assert list(any_bucket.list("uploads/")) == []


def test_an_exception_inside_the_writer_aborts_it(any_bucket: Bucket) -> None:
    with pytest.raises(RuntimeError), any_bucket.open_write("uploads/x.tif") as writer:
        writer.write(b"abc")
        raise RuntimeError("client went away")
    assert not any_bucket.exists("uploads/x.tif")


def test_list_delete_and_missing_objects(any_bucket: Bucket) -> None:
    for key in ("output/1/a.tif", "output/2/b.tif", "uploads/c.tif"):
        any_bucket.put_bytes(key, b"1")
    assert sorted(any_bucket.list("output/")) == ["output/1/a.tif", "output/2/b.tif"]
    assert any_bucket.delete("output/1/a.tif")
    assert not any_bucket.delete("output/1/a.tif")
    assert any_bucket.size("output/1/a.tif") is None
    with pytest.raises(ObjectNotFound):
        any_bucket.open_read("output/1/a.tif")


def test_listed_objects_carry_their_size_and_when_they_were_written(any_bucket: Bucket) -> None:
    before = time.time()
    any_bucket.put_bytes("output/1/a.tif", b"12345")
    any_bucket.put_bytes("uploads/b.tif", b"1")
    (info,) = any_bucket.list_objects("output/")
    assert (info.key, info.size) == ("output/1/a.tif", 5)
    assert before - 5 <= info.modified <= time.time() + 5  # the emulator's clock is this one's
    assert [i.key for i in any_bucket.list_objects("uploads/")] == ["uploads/b.tif"]


def test_delete_many_skips_objects_already_gone(any_bucket: Bucket) -> None:
    keys = [f"uploads/{i}.tif" for i in range(150)]  # more than one GCS batch request
    for key in keys:
        any_bucket.put_bytes(key, b"x")
    any_bucket.put_bytes("uploads/kept.tif", b"x")
    any_bucket.delete_many([*keys, "uploads/never-written.tif"])
    assert list(any_bucket.list("uploads/")) == ["uploads/kept.tif"]


def test_delete_prefix_removes_one_folder_and_nothing_beside_it(any_bucket: Bucket) -> None:
    for key in ("output/ab/a.tif", "output/ab/sub/b.png", "output/abc/c.tif", "output/ab.tif"):
        any_bucket.put_bytes(key, b"123")
    assert any_bucket.delete_prefix("output/ab/") == Deleted(files=2, bytes=6)
    assert sorted(any_bucket.list("output/")) == ["output/ab.tif", "output/abc/c.tif"]
    with pytest.raises(InvalidKey, match="ends with '/'"):
        any_bucket.delete_prefix("output/ab")
    with pytest.raises(InvalidKey):
        any_bucket.delete_prefix("../")


def test_a_local_deletion_takes_emptied_job_folders_but_keeps_the_top_ones(
    tmp_path: Path,
) -> None:
    bucket = LocalBucket(tmp_path / "bucket")
    bucket.put_bytes("output/job/sub/a.tif", b"1")
    bucket.put_bytes("uploads/b.tif", b"1")
    bucket.delete("output/job/sub/a.tif")
    bucket.delete("uploads/b.tif")
    assert sorted(p.name for p in bucket.root.iterdir()) == ["output", "uploads"]
    assert list((bucket.root / "output").iterdir()) == []
    bucket.put_bytes("output/job/sub/a.tif", b"2")  # a folder removed meanwhile is made again
    assert bucket.get_bytes("output/job/sub/a.tif") == b"2"


def test_a_local_bucket_lists_writes_in_progress_apart(tmp_path: Path) -> None:
    bucket = LocalBucket(tmp_path / "bucket")
    writer = bucket.open_write("uploads/big.tif")
    writer.write(b"half")
    assert list(bucket.list_objects("uploads/")) == []
    (partial,) = bucket.list_partials("uploads/")
    assert partial.key.startswith("uploads/.partial-")
    writer.commit()
    assert list(bucket.list_partials("uploads/")) == []


@pytest.mark.parametrize(
    "key",
    [
        "../etc/passwd",
        "uploads/../../x",
        "/etc/passwd",
        "uploads/a\x00.tif",
        "",
        "a//b",
        "uploads/./a",
        "uploads\\..\\a",
        "uploads/\nx",
        "a/" * 600,
    ],
)
def test_keys_that_could_escape_the_bucket_are_refused(any_bucket: Bucket, key: str) -> None:
    with pytest.raises(InvalidKey):
        any_bucket.put_bytes(key, b"x")
    with pytest.raises(InvalidKey):
        any_bucket.exists(key)


def test_a_symlink_out_of_a_local_bucket_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("s")
    bucket = LocalBucket(tmp_path / "bucket")
    (bucket.root / "link").symlink_to(outside)
    with pytest.raises(InvalidKey, match="outside the bucket"):
        bucket.get_bytes("link/secret.txt")


def test_safe_key_accepts_ordinary_nested_keys() -> None:
    assert safe_key("output/4f2a/cells 1.tif") == "output/4f2a/cells 1.tif"


def test_unknown_bucket_schemes_get_a_clear_error() -> None:
    with pytest.raises(ValueError, match="file://DIRECTORY"):
        open_bucket("s3://bucket")


def test_a_job_reads_its_input_in_place_or_from_a_copy_that_goes_afterwards(
    any_bucket: Bucket,
) -> None:
    from consumers.base import Job, JobError
    from kiosk.keys import JobField
    from kiosk.queue import Claim

    any_bucket.put_bytes("uploads/a.tif", b"image bytes")
    fields = {JobField.INPUT_FILE_NAME: "uploads/a.tif"}
    job = Job(Claim("echo:a.tif:0", "echo", fields), any_bucket, update=lambda _: None)
    with job.input_file() as path:
        assert path.read_bytes() == b"image bytes"
    in_place = any_bucket.local_path("uploads/a.tif") == path
    assert path.exists() == in_place, "a copy is removed; the bucket's own file is kept"
    assert JobField.DOWNLOAD_TIME in job.unwritten()

    gone = Job(
        Claim("echo:b.tif:0", "echo", {JobField.INPUT_FILE_NAME: "uploads/b.tif"}),
        any_bucket,
        update=lambda _: None,
    )
    with pytest.raises(JobError, match="not in the bucket; upload it again"), gone.input_file():
        pass
