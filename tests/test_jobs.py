"""The job record: the key layout, names and values the original clients rely on."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from kiosk.jobs import JobRequest, creation_fields, now_iso
from kiosk.keys import (
    JobField,
    Status,
    clean_name,
    file_url,
    is_job_key,
    new_job_key,
    parse_job_key,
    parse_processing_list,
    processing_list,
    queue_for,
    upload_key,
    validate_queue_name,
)
from kiosk.settings import CommonSettings


def test_job_key_has_the_original_layout_queue_name_uuid4() -> None:
    key = new_job_key("segmentation", "cells.tif")
    queue, name, uid = key.split(":")
    assert (queue, name) == ("segmentation", "cells.tif")
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", uid)


def test_zip_files_go_to_the_zip_queue_of_their_job_type() -> None:
    assert queue_for("segmentation", "plate.ZIP") == "segmentation-zip"
    assert queue_for("segmentation", "cells.tif") == "segmentation"


def test_names_with_colons_and_slashes_still_parse() -> None:
    key = new_job_key("segmentation-zip", "folder/a:b.tif")
    parsed = parse_job_key(key)
    assert parsed is not None
    assert (parsed.queue, parsed.name, parsed.job_type) == (
        "segmentation-zip",
        "folder/a:b.tif",
        "segmentation",
    )


@pytest.mark.parametrize(
    "key",
    [
        "segmentation",
        "segmentation-zip",
        "processing-segmentation:pod-1",
        "kiosk:jobs",
        "kiosk:heartbeat:pod-1",
        "segmentation:x:not-a-uuid",
        "other:x.tif:" + "0" * 36,
    ],
)
def test_queues_and_bookkeeping_keys_are_never_job_keys(key: str) -> None:
    assert not is_job_key(key, ["segmentation"])


def test_job_keys_of_unconfigured_types_are_not_job_keys() -> None:
    key = new_job_key("tracking", "movie.tif")
    assert is_job_key(key, ["tracking"])
    assert not is_job_key(key, ["segmentation"])


def test_control_characters_are_removed_from_names() -> None:
    assert clean_name("bad\nname\x00.tif") == "badname.tif"
    assert clean_name("\x07") == "unnamed"


def test_processing_list_round_trips() -> None:
    assert parse_processing_list(processing_list("seg", "pod-1-2")) == ("seg", "pod-1-2")
    assert parse_processing_list("seg") is None


def test_timestamps_are_iso_8601_utc() -> None:
    stamp = now_iso()
    parsed = datetime.fromisoformat(stamp)
    assert parsed.tzinfo is not None
    assert abs((datetime.now(UTC) - parsed).total_seconds()) < 5


def test_creation_writes_the_fields_the_original_frontend_wrote() -> None:
    fields = creation_fields(JobRequest("segmentation", "a.tif", "uploads/x.tif"), "host")
    for name in (
        "original_name",
        "input_file_name",
        "model_name",
        "model_version",
        "postprocess_function",
        "preprocess_function",
        "cuts",
        "url",
        "label",
        "status",
        "created_at",
        "updated_at",
        "identity_upload",
        "dimension_order",
        "channels",
        "scale",
        "segmentation_type",
    ):
        assert name in fields, name
    assert fields[JobField.STATUS] == Status.NEW
    assert all(isinstance(v, str) for v in fields.values())


def test_upload_keys_are_fresh_and_keep_the_extension() -> None:
    a, b = upload_key("Cells.TIF"), upload_key("Cells.TIF")
    assert a != b and a.startswith("uploads/") and a.endswith(".tif")


def test_file_urls_are_plain_http_and_quoted() -> None:
    assert (
        file_url("http://h:8080/", "output/x/a b.tif") == "http://h:8080/files/output/x/a%20b.tif"
    )


@pytest.mark.parametrize("name", ["Seg", "a:b", "kiosk", "processing-x", "x-zip", "", "-x"])
def test_reserved_or_malformed_job_type_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        validate_queue_name(name)


def test_queue_list_is_read_comma_separated_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("KIOSK_QUEUES", "segmentation, tracking")
    assert CommonSettings().queues == ("segmentation", "tracking")
