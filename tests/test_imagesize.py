"""What an image's header says its pixels take (tifffile and Pillow read it): TIFF (pages,
BigTIFF, tiles), PNG (and APNG frames), JPEG; read through a zip entry; an error for what cannot
be read. The zip consumer compares it with an entry's size to find bulk hidden behind a small
image."""

from __future__ import annotations

import io
import struct
import zipfile

import numpy as np
import pytest
import tifffile
from PIL import Image

from consumers.imaging import ImageError, pixel_bytes
from kiosk.filetypes import FileKind


def tiff(array: np.ndarray, **options: object) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **options)
    return buffer.getvalue()


def pil(array: np.ndarray, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


def measured(data: bytes, kind: FileKind) -> int | None:
    try:
        return pixel_bytes(io.BytesIO(data), name=f"x.{kind.value}")
    except ImageError:
        return None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (tiff(np.zeros((100, 200), np.uint16)), 100 * 200 * 2),
        (tiff(np.zeros((7, 30, 40), np.float32)), 7 * 30 * 40 * 4),  # pages
        (tiff(np.zeros((3, 30, 40, 3), np.uint8), photometric="rgb"), 3 * 30 * 40 * 3),
        (tiff(np.zeros((5, 64, 64), np.uint16), bigtiff=True, compression="zlib"), 5 * 64 * 64 * 2),
        (tiff(np.zeros((64, 64), np.uint16), tile=(32, 32)), 64 * 64 * 2),
        (tiff(np.zeros((10, 9), bool)), 10 * 9),  # bits are read as bytes: an upper bound
        (pil(np.zeros((50, 60, 3), np.uint8), "TIFF"), 50 * 60 * 3),  # bits stored out of line
    ],
)
def test_a_tiffs_pixels_are_counted_over_every_page(data: bytes, expected: int) -> None:
    assert measured(data, FileKind.TIFF) == expected


def test_a_big_endian_tiff_is_read_too() -> None:
    data = tiff(np.zeros((20, 30), np.uint16), byteorder=">")
    assert data[:2] == b"MM" and measured(data, FileKind.TIFF) == 20 * 30 * 2


def test_a_png_counts_its_channels_and_an_apng_its_frames() -> None:
    assert measured(pil(np.zeros((50, 60), np.uint16), "PNG"), FileKind.PNG) == 50 * 120
    assert measured(pil(np.zeros((50, 60, 4), np.uint8), "PNG"), FileKind.PNG) == 50 * 240
    frames = [Image.fromarray(np.full((20, 30), i, np.uint8)) for i in range(4)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "PNG", save_all=True, append_images=frames[1:])
    assert measured(buffer.getvalue(), FileKind.PNG) == 4 * 20 * 30


def test_a_jpegs_frame_header_is_found_past_its_metadata() -> None:
    exif = Image.Exif()
    exif[0x010E] = "x" * 30_000  # a long ImageDescription in APP1, before the frame header
    data = pil(np.zeros((48, 64, 3), np.uint8), "JPEG", exif=exif.tobytes())
    assert measured(data, FileKind.JPEG) == 48 * 64 * 3


def test_bulk_after_a_small_image_does_not_count() -> None:
    small = tiff(np.zeros((8, 8), np.uint8))
    assert measured(small + b"\0" * 5_000_000, FileKind.TIFF) == 64


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"II*\x00\x08\x00", FileKind.TIFF),  # cut short
        (b"II*\x00\x08\x00\x00\x00" + b"\x00" * 56, FileKind.TIFF),  # a directory without sizes
        (b"II\x2b\x00" + b"\x00" * 20, FileKind.TIFF),  # BigTIFF without its first offset
        (b"II*\x00\x08\x00\x00\x00\xff\xff" + b"\x00" * 10, FileKind.TIFF),  # 65535 tags
        (b"\x89PNG\r\n\x1a\n" + struct.pack(">I4s", 13, b"IEND"), FileKind.PNG),  # no IHDR
        (b"\xff\xd8\xff\xda\x00\x02", FileKind.JPEG),  # scan data before any frame header
        (b"PK\x03\x04", FileKind.ZIP),
    ],
)
def test_an_unreadable_header_accounts_for_nothing(data: bytes, kind: FileKind) -> None:
    assert measured(data, kind) is None


def test_a_tiff_whose_directories_loop_is_read_once() -> None:
    data = bytearray(tiff(np.zeros((4, 4), np.uint8)))
    first = struct.unpack("<I", data[4:8])[0]
    (count,) = struct.unpack("<H", data[first : first + 2])
    nxt = first + 2 + 12 * count
    data[nxt : nxt + 4] = struct.pack("<I", first)  # the next directory is the first again
    assert measured(bytes(data), FileKind.TIFF) == 16


def tiff_directory_last(height: int, width: int) -> bytes:
    """A uint16 TIFF laid out as libtiff writes one: pixels first, the directory last."""
    pixels = bytes(height * width * 2)
    tags = [(256, width), (257, height), (258, 16), (259, 1), (262, 1), (273, 8), (277, 1)]
    tags += [(278, height), (279, len(pixels))]
    directory = struct.pack("<H", len(tags))
    directory += b"".join(struct.pack("<HHII", tag, 4, 1, value) for tag, value in tags)
    return b"II*\x00" + struct.pack("<I", 8 + len(pixels)) + pixels + directory + bytes(4)


def test_headers_are_read_through_a_compressed_zip_entry() -> None:
    image = tiff_directory_last(300, 400)
    assert tifffile.imread(io.BytesIO(image)).shape == (300, 400)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.tif", image)
    with zipfile.ZipFile(buffer) as archive, archive.open("a.tif") as entry:
        assert pixel_bytes(entry, name="a.tif", size=len(image)) == 300 * 400 * 2
