"""Which files are accepted, judged by name and content."""

from __future__ import annotations

import pytest

from kiosk.filetypes import (
    FileKind,
    UnsupportedFile,
    check_content,
    check_for_job_type,
    check_name,
)

TIFF = b"II*\x00\x08\x00\x00\x00"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("name", "head", "kind"),
    [
        ("a.tif", TIFF, FileKind.TIFF),
        ("a.TIFF", b"MM\x00*\x00\x00\x00\x08", FileKind.TIFF),
        ("a.png", PNG, FileKind.PNG),
        ("a.jpg", b"\xff\xd8\xff\xe0\x00\x10JF", FileKind.JPEG),
        ("a.zip", b"PK\x03\x04\x14\x00\x00\x00", FileKind.ZIP),
        ("movie.trk", b"\x1f\x8b\x08\x00\x00\x00\x00\x00", FileKind.TRK),
        ("movies.TRKS", b"\x1f\x8b\x08\x08\x00\x00\x00\x00", FileKind.TRK),
    ],
)
def test_supported_files_are_recognised(name: str, head: bytes, kind: FileKind) -> None:
    assert check_content(name, head) is kind


def test_unsupported_extension_says_what_is_accepted() -> None:
    with pytest.raises(UnsupportedFile, match=r"\.tif/\.tiff, \.png"):
        check_name("notes.docx")


def test_content_that_does_not_match_the_name_is_refused() -> None:
    with pytest.raises(UnsupportedFile, match="named like a TIFF file but its content is a PNG"):
        check_content("cells.tif", PNG)
    with pytest.raises(UnsupportedFile, match="corrupt or misnamed"):
        check_content("cells.tif", b"hello wo")


def test_empty_files_are_refused() -> None:
    with pytest.raises(UnsupportedFile, match="empty"):
        check_content("cells.tif", b"")


def test_trk_movies_are_only_for_the_tracking_job_type() -> None:
    for job_type in ("tracking", "caliban"):
        check_for_job_type("movie.trk", FileKind.TRK, job_type)
    check_for_job_type("movie.tif", FileKind.TIFF, "segmentation")
    with pytest.raises(UnsupportedFile, match="only the tracking job type reads"):
        check_for_job_type("movie.trk", FileKind.TRK, "segmentation")
