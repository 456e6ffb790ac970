"""Which files Kiosk accepts, judged by name and by their first bytes, before anything is stored."""

from __future__ import annotations

from enum import StrEnum
from pathlib import PurePosixPath


class FileKind(StrEnum):
    TIFF = "TIFF"
    PNG = "PNG"
    JPEG = "JPEG"
    ZIP = "zip"
    TRK = "trk"  # DeepCell's tracked movie: a tar.gz of raw.npy, tracked.npy and lineage.json


EXTENSIONS: dict[str, FileKind] = {
    ".tif": FileKind.TIFF,
    ".tiff": FileKind.TIFF,
    ".png": FileKind.PNG,
    ".jpg": FileKind.JPEG,
    ".jpeg": FileKind.JPEG,
    ".zip": FileKind.ZIP,
    ".trk": FileKind.TRK,
    ".trks": FileKind.TRK,
}

_MAGIC: tuple[tuple[bytes, FileKind], ...] = (
    (b"II*\x00", FileKind.TIFF),
    (b"MM\x00*", FileKind.TIFF),
    (b"II+\x00", FileKind.TIFF),  # BigTIFF
    (b"MM\x00+", FileKind.TIFF),
    (b"\x89PNG\r\n\x1a\n", FileKind.PNG),
    (b"\xff\xd8\xff", FileKind.JPEG),
    (b"PK\x03\x04", FileKind.ZIP),
    (b"PK\x05\x06", FileKind.ZIP),  # an empty zip
    (b"\x1f\x8b", FileKind.TRK),  # gzip: a .trk or .trks
)

SNIFF_BYTES = max(len(magic) for magic, _ in _MAGIC)
ACCEPTED = ".tif/.tiff, .png, .jpg/.jpeg images or a .zip of them"
MOVIE_JOB_TYPES = frozenset({"tracking", "caliban"})
"""Job types that take a whole movie (a time-lapse) as one input; only they read .trk/.trks."""


class UnsupportedFile(ValueError):
    """A file Kiosk will not take; the message says why and what to do."""


def human_bytes(n: float) -> str:
    """A size as people read it: 512 bytes, 3.4 MiB."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def extension(name: str) -> str:
    return PurePosixPath(name.replace("\\", "/")).suffix.lower()


def kind_from_name(name: str) -> FileKind | None:
    return EXTENSIONS.get(extension(name))


def sniff(head: bytes) -> FileKind | None:
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return None


def check_name(name: str) -> FileKind:
    kind = kind_from_name(name)
    if kind is None:
        ext = extension(name) or "no extension"
        raise UnsupportedFile(
            f"{name!r} is not a supported file type ({ext}): Kiosk takes {ACCEPTED}. "
            "Convert the file, or zip the images, and upload again."
        )
    return kind


def check_content(name: str, head: bytes) -> FileKind:
    """The file's kind when its first bytes agree with its name; UnsupportedFile otherwise."""
    expected = check_name(name)
    if not head:
        raise UnsupportedFile(f"{name!r} is empty: choose the file again and upload it.")
    found = sniff(head)
    if found != expected:
        looks = f"a {found} file" if found else "no image or zip format Kiosk knows"
        raise UnsupportedFile(
            f"{name!r} is named like a {expected} file but its content is {looks}; "
            "it may be corrupt or misnamed. Check the file and upload it again."
        )
    return expected


def check_for_job_type(name: str, kind: FileKind, job_type: str) -> None:
    """Refuse a file its job type cannot read: .trk/.trks are movies only tracking reads."""
    if kind is FileKind.TRK and job_type not in MOVIE_JOB_TYPES:
        raise UnsupportedFile(
            f"{name!r} is a tracked movie (.trk/.trks), which only the tracking job type reads; "
            f"job type {job_type!r} takes {ACCEPTED}. Choose the tracking job type, or "
            "upload the frames as a multi-page TIFF."
        )
