"""A tracking's results, written frame by frame into one zip.

The zip holds, under an optional folder (one per movie of a .trks):

* ``{stem}_tracked.tif``: the track-labelled movie, (T, Y, X), each cell's value its track label
  on every frame. An ImageJ hyperstack with a T axis in uint16; past 65535 tracks uint32, which
  ImageJ hyperstacks cannot hold, in a plain TIFF with the axes in tifffile's description (as
  :func:`consumers.imaging.encode_labels_tiff` writes label images);
* ``lineage.json``: the DeepCell format, keyed by track label (see
  :func:`consumers.processing.linking.lineage_json`);
* ``01_RES/res_track.txt`` and ``01_RES/maskTTT.tif``: the Cell Tracking Challenge's result
  layout (``mask000.tif``..., four digits past 1000 frames), ready for its evaluation tools
  beside a ``01_GT`` folder. They hold the tracking's CTC form
  (:func:`consumers.processing.linking.ctc_tracking`): a track re-joined after a gap goes on
  under a new label whose parent is the part before the gap, since the CTC wants a label in
  every frame of its track; so the masks' labels can differ from the hyperstack's there;
* ``{stem}_preview.gif`` and ``{stem}_lineage.png``: the pictures of
  :mod:`consumers.processing.track_preview`.

Frames are read through callables and written one at a time, so the movie is never whole in
memory; the hyperstack is written page by page from an iterator. Each tracked frame is
deflated once, on a small pool of threads (zlib releases the GIL), and the same bytes serve
as the hyperstack's page and, where the CTC form keeps the labels, as the frame's CTC mask.
The zip's bytes depend only on the frames and the tracking (entries carry a fixed date), so
writing it twice gives the same file: a fan-in that is run again after a crash leaves what
the first run would have.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import tifffile

from consumers.imaging import DEFLATE_LEVEL
from consumers.processing import linking
from consumers.processing.track_preview import (
    animated_gif,
    lineage_png,
    outline_frame,
    preview_frames,
)

__all__ = ["CTC_FOLDER", "Previews", "ResultNames", "lineage_text", "mask_name", "write_results"]

CTC_FOLDER = "01_RES"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
COPY_CHUNK = 1024 * 1024
ENCODERS = 2  # threads deflating frames (and drawing the preview's) beside the reader
IN_FLIGHT = 2 * ENCODERS  # frames read ahead of the writer: memory stays a few frames

FrameReader = Callable[[int], np.ndarray]


@dataclass(frozen=True)
class ResultNames:
    """Where each result goes in the zip."""

    stem: str
    folder: str = ""

    def _in(self, name: str) -> str:
        return f"{self.folder}/{name}" if self.folder else name

    @property
    def tracked(self) -> str:
        return self._in(f"{self.stem}_tracked.tif")

    @property
    def lineage(self) -> str:
        return self._in("lineage.json")

    @property
    def res_track(self) -> str:
        return self._in(f"{CTC_FOLDER}/res_track.txt")

    def mask(self, frame: int, frames: int) -> str:
        return self._in(f"{CTC_FOLDER}/{mask_name(frame, frames)}")

    @property
    def preview(self) -> str:
        return self._in(f"{self.stem}_preview.gif")

    @property
    def lineage_plot(self) -> str:
        return self._in(f"{self.stem}_lineage.png")


@dataclass(frozen=True)
class Previews:
    """The pictures, also stored beside the zip for the job's ``preview_url``."""

    animation: bytes
    lineage: bytes


def mask_name(frame: int, frames: int) -> str:
    """``mask007.tif``: three digits, four for movies past 1000 frames (the CTC's rule)."""
    return f"mask{frame:0{3 if frames <= 1000 else 4}d}.tif"


def _info(name: str, compress: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


def _put(out: zipfile.ZipFile, name: str, data: bytes, *, compress: bool = False) -> None:
    out.writestr(_info(name, compress), data)


def _copy(out: zipfile.ZipFile, path: Path, name: str) -> None:
    """Store a file written to disk (its TIFF compression is enough), then remove it."""
    with open(path, "rb") as src, out.open(_info(name, False), "w", force_zip64=True) as dst:
        shutil.copyfileobj(src, dst, COPY_CHUNK)
    path.unlink()


def lineage_text(lineage: Mapping[str, object]) -> bytes:
    """``lineage.json`` with one track a line: valid JSON that reads well and diffs well."""
    lines = [f"{json.dumps(label)}: {json.dumps(track)}" for label, track in lineage.items()]
    return ("{\n" + ",\n".join(lines) + "\n}\n").encode()


def _deflated(plane: np.ndarray) -> bytes:
    """One frame as one deflated little-endian TIFF strip."""
    little = plane.dtype.newbyteorder("<")
    return zlib.compress(np.ascontiguousarray(plane, little).tobytes(), DEFLATE_LEVEL)


def _strip_tiff(strip: bytes, shape: tuple[int, int], dtype: np.dtype) -> bytes:
    """A single-plane TIFF around a strip :func:`_deflated` made."""
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer,
        iter([strip]),
        shape=shape,
        dtype=dtype,
        byteorder="<",
        compression="zlib",
        rowsperstrip=shape[0],
        photometric="minisblack",
    )
    return buffer.getvalue()


def _write_stack(
    path: Path, strips: Iterator[bytes], shape: tuple[int, ...], dtype: np.dtype
) -> None:
    """The tracked movie, page by page, from strips :func:`_deflated` made."""
    layout: dict[str, Any] = {
        "shape": shape,
        "dtype": dtype,
        "byteorder": "<",
        "compression": "zlib",
        "rowsperstrip": shape[1],
    }
    if dtype == np.uint16:
        tifffile.imwrite(path, strips, imagej=True, metadata={"axes": "TYX"}, **layout)
    else:
        tifffile.imwrite(
            path,
            strips,
            photometric="minisblack",
            metadata={"axes": "TYX", "kiosk": "tracked labels (uint32: more than 65535 tracks)"},
            **layout,
        )


@dataclass(frozen=True)
class _EncodedFrame:
    page: bytes  # the tracked frame's strip
    mask: bytes  # its CTC mask's strip: the same bytes where the CTC form keeps the labels
    outline: np.ndarray | None  # the preview's picture, for the frames it shows


def _ctc_labels(tracking: linking.Tracking, ctc: linking.Tracking) -> list[dict[int, int]]:
    """Per frame, each track label's label in the CTC form: the masks are the tracked frames
    looked up once more, not the segmentation relabelled a second time."""
    if ctc is tracking:
        return []
    return [
        {label: ctc.assignments[t][obj] for obj, label in mapping.items()}
        for t, mapping in enumerate(tracking.assignments)
    ]


def write_results(
    out: zipfile.ZipFile,
    workdir: Path,
    names: ResultNames,
    *,
    frames: int,
    shape: tuple[int, int],
    labels_of: FrameReader,
    image_of: FrameReader,
    tracking: linking.Tracking,
    progress: Callable[[int, int], None] | None = None,
) -> Previews:
    """Write every result of one movie into ``out``. ``labels_of(t)`` gives frame ``t``'s
    segmentation labels (those the tracking's assignments name), ``image_of(t)`` its image
    (read only for the frames the animation shows)."""
    dtype = np.dtype(tracking.dtype)
    ctc = linking.ctc_tracking(tracking)
    ctc_dtype = np.dtype(ctc.dtype)
    ctc_of = _ctc_labels(tracking, ctc)
    shown = set(preview_frames(frames))
    animation: list[np.ndarray] = []

    mask_spans: list[tuple[int, int]] = []

    def encode(t: int, segmented: np.ndarray, image: np.ndarray | None) -> _EncodedFrame:
        tracked = np.asarray(tracking.relabel(t, segmented), dtype=dtype)
        if tracked.shape != shape:
            raise ValueError(f"frame {t}'s labels are {tracked.shape}, not {shape}")
        page = _deflated(tracked)
        mask = (
            page if ctc is tracking else _deflated(linking.relabel(tracked, ctc_of[t], ctc_dtype))
        )
        return _EncodedFrame(page, mask, None if image is None else outline_frame(image, tracked))

    def encoded() -> Iterator[_EncodedFrame]:
        """Frames read here in order (the readers need not be thread-safe), encoded on the
        pool, handed on in order."""
        with ThreadPoolExecutor(ENCODERS, thread_name_prefix="tracking-results") as pool:
            pending: deque[Future[_EncodedFrame]] = deque()
            for t in range(frames):
                image = image_of(t) if t in shown else None
                pending.append(pool.submit(encode, t, labels_of(t), image))
                if len(pending) >= IN_FLIGHT:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def pages(masks: BinaryIO) -> Iterator[bytes]:
        for t, frame in enumerate(encoded()):
            mask = _strip_tiff(frame.mask, shape, ctc_dtype)
            mask_spans.append((masks.tell(), len(mask)))
            masks.write(mask)
            if frame.outline is not None:
                animation.append(frame.outline)
            if progress is not None:
                progress(t + 1, frames)
            yield frame.page

    stack = workdir / "tracked.tif"
    # The masks wait in one spool file until the hyperstack, the zip's first entry, is in.
    with (
        (workdir / "masks.spool").open("w+b") as masks,
        ThreadPoolExecutor(1, thread_name_prefix="tracking-preview") as pool,
    ):
        plot = pool.submit(lineage_png, tracking.tracks, frames)  # while the frames encode
        _write_stack(stack, pages(masks), (frames, *shape), dtype)
        gif = pool.submit(animated_gif, animation)  # Pillow encodes without the GIL
        _copy(out, stack, names.tracked)  # first: ImageJ opens a zip's first image
        _put(out, names.lineage, lineage_text(linking.lineage_json(tracking)), compress=True)
        _put(out, names.res_track, linking.ctc_res_track(ctc).encode(), compress=True)
        for t, (offset, size) in enumerate(mask_spans):
            masks.seek(offset)
            _put(out, names.mask(t, frames), masks.read(size))
        previews = Previews(gif.result(), plot.result())
    (workdir / "masks.spool").unlink()
    _put(out, names.preview, previews.animation)
    _put(out, names.lineage_plot, previews.lineage)
    return previews
