"""How many bytes an image's pixels take, read from its header alone.

That is what a file of the image can justify being: the zip consumer uses it to tell a highly
compressible image (a mostly-black TIFF, whose size is its pixels) from a small image with bulk
hidden behind it (a 64-pixel TIFF followed by 900 MiB of zeros). Only headers are read: TIFF
directories (every page, classic and BigTIFF), a PNG's IHDR (and an APNG's frame count), a
JPEG's frame header. The stream must be seekable; a compressed zip entry is, though each
backward seek reads it again from its start, so a file that needs many is given up on.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from kiosk.filetypes import FileKind

MAX_PAGES = 100_000  # TIFF directories walked
MAX_TAGS = 4096  # entries in one TIFF directory
MAX_SEGMENTS = 4096  # PNG chunks or JPEG segments before the pixels' header
MAX_REWINDS = 16  # backward seeks
MAX_READ = 1 << 20  # bytes of header read at once

_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type
_JPEG_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn carry no length


class _Unreadable(Exception):
    pass


class _Reader:
    """Reads exact byte ranges at offsets, counting backward seeks."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.position = 0
        self.rewinds = 0

    def at(self, offset: int, size: int) -> bytes:
        if offset < 0 or not 0 <= size <= MAX_READ:
            raise _Unreadable(f"{size} bytes at {offset}")
        if offset < self.position:
            self.rewinds += 1
            if self.rewinds > MAX_REWINDS:
                raise _Unreadable("too many backward seeks")
        self.stream.seek(offset)
        data = self.stream.read(size)
        self.position = offset + len(data)
        if len(data) != size:
            raise _Unreadable(f"the file ends before byte {offset + size}")
        return data


def pixel_bytes(stream: BinaryIO, kind: FileKind) -> int | None:
    """Bytes the image's pixels take uncompressed, all pages or frames together, from its
    header; None when the header cannot be read (truncated, corrupt, or too contrived)."""
    reader = _Reader(stream)
    parse = {FileKind.TIFF: _tiff, FileKind.PNG: _png, FileKind.JPEG: _jpeg}.get(kind)
    if parse is None:
        return None
    try:
        return parse(reader)
    except (_Unreadable, struct.error, KeyError, ValueError, EOFError, OSError):
        return None


_TIFF_TYPES = {1: "B", 3: "H", 4: "I", 16: "Q"}  # BYTE, SHORT, LONG, LONG8
_TIFF_SIZE_TAGS = {256, 257, 258, 277, 32997}  # width, length, bits, samples, depth


def _tiff(r: _Reader) -> int:
    order = {b"II": "<", b"MM": ">"}[r.at(0, 2)]
    (version,) = struct.unpack(order + "H", r.at(2, 2))
    if version not in (42, 43):
        raise _Unreadable(f"TIFF version {version}")
    big = version == 43
    count_fmt, offset_fmt, entry = ("Q", "Q", 20) if big else ("H", "I", 12)
    count_size, offset_size = struct.calcsize(count_fmt), struct.calcsize(offset_fmt)
    (offset,) = struct.unpack(order + offset_fmt, r.at(8 if big else 4, offset_size))
    total, seen = 0, set()
    while offset and offset not in seen:
        seen.add(offset)
        if len(seen) > MAX_PAGES:
            raise _Unreadable("too many pages")
        (count,) = struct.unpack(order + count_fmt, r.at(offset, count_size))
        if count > MAX_TAGS:
            raise _Unreadable(f"{count} tags in one directory")
        table = r.at(offset + count_size, count * entry + offset_size)
        tags = {}
        for i in range(count):
            code, values = _tiff_entry(r, order, big, table[i * entry : (i + 1) * entry])
            if values:
                tags[code] = values
        width, length = tags[256][0], tags[257][0]
        samples = tags.get(277, [1])[0]
        bits = max(tags.get(258, [1]))
        depth = tags.get(32997, [1])[0]
        total += length * depth * -(-width * samples * bits // 8)
        (offset,) = struct.unpack(order + offset_fmt, table[count * entry :])
    if not seen:
        raise _Unreadable("no image directory")
    return total


def _tiff_entry(r: _Reader, order: str, big: bool, raw: bytes) -> tuple[int, list[int]]:
    """A directory entry's tag and, for the tags that size an image, its values."""
    code, kind = struct.unpack(order + "HH", raw[:4])
    if code not in _TIFF_SIZE_TAGS or kind not in _TIFF_TYPES:
        return code, []
    (count,) = struct.unpack(order + ("Q" if big else "I"), raw[4 : 12 if big else 8])
    item = _TIFF_TYPES[kind]
    size = count * struct.calcsize(item)
    inline = raw[12:20] if big else raw[8:12]
    if size <= len(inline):
        data = inline[:size]
    else:  # stored elsewhere: a BitsPerSample per channel
        (where,) = struct.unpack(order + ("Q" if big else "I"), inline)
        data = r.at(where, size)
    return code, list(struct.unpack(f"{order}{count}{item}", data))


def _png(r: _Reader) -> int:
    length, name, width, height, bits, colour = struct.unpack(">I4sIIBB", r.at(8, 18))
    if name != b"IHDR" or length != 13:
        raise _Unreadable("no IHDR chunk first")
    row = 1 + -(-width * _PNG_CHANNELS[colour] * bits // 8)  # a filter byte per row
    frames, position = 1, 8
    for _ in range(MAX_SEGMENTS):  # an animated PNG says how many frames it holds
        length, name = struct.unpack(">I4s", r.at(position, 8))
        if name == b"acTL":
            (frames,) = struct.unpack(">I", r.at(position + 8, 4))
        if name in (b"IDAT", b"IEND"):
            return height * row * max(frames, 1)
        position += 12 + length
    raise _Unreadable("no image data among the first chunks")


def _jpeg(r: _Reader) -> int:
    if r.at(0, 2) != b"\xff\xd8":
        raise _Unreadable("no start-of-image marker")
    position = 2
    for _ in range(MAX_SEGMENTS):
        prefix, marker = r.at(position, 2)
        if prefix != 0xFF:
            raise _Unreadable(f"no marker at byte {position}")
        if marker == 0xFF or marker in _JPEG_STANDALONE:
            position += 1 if marker == 0xFF else 2
            continue
        (length,) = struct.unpack(">H", r.at(position + 2, 2))
        if marker in _JPEG_FRAMES:
            precision, height, width, components = struct.unpack(">BHHB", r.at(position + 4, 6))
            return height * width * components * -(-precision // 8)
        if marker in (0xDA, 0xD9):  # scan data or the end before any frame header
            raise _Unreadable("no frame header")
        position += 2 + length
    raise _Unreadable("no frame header among the first segments")
