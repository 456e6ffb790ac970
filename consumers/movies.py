"""Movies in, one frame at a time: what the tracking job type reads.

A movie is a time series of 2-D frames; tracking segments each frame (one nuclear channel) and
links the objects over time, so a reader gives frame ``t`` as one ``(Y, X)`` plane and never
holds the whole movie. Three kinds of file are movies:

* a multi-page TIFF or OME-TIFF, ``TYX`` or ``TCYX`` (``TYXC`` with colour samples): the axes
  come from the file's OME or ImageJ metadata (tifffile's series axes), else from the job's
  ``dimension_order``, else from the shape (one unnamed axis before Y and X is time; a second,
  of at most 4, is channels). Frames are decoded page by page: reading frame ``t`` decodes only
  the page of the chosen channel. Anything with a Z axis of more than one plane is refused (a
  volume over time is not a 2-D movie);
* a zip of single 2-D frames, in the natural order of their names (``frame2`` before
  ``frame10``);
* a ``.trk`` (a tar.gz of ``raw.npy`` (T, Y, X, C), ``tracked.npy`` (T, Y, X, 1) and
  ``lineage.json``): the movie comes with its labels, which are tracked again as they are
  (:meth:`Movie.labels`); nothing is segmented. A ``.trks`` holds several such movies
  (``raw.npy`` (B, T, Y, X, C), ``lineages.json``): every one is read. The arrays are
  unpacked to a working folder and memory-mapped, so frames are read from disk.

Limits (frames, pixels per frame, pixels of the whole movie) are checked from headers before
any pixels are decoded, and the channel is chosen the way segmentation chooses it (``channels``,
or the one channel there is, or the first of identical ones). Every refusal is an
:class:`~consumers.imaging.ImageError` whose message says what to do.
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import tarfile
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, cast

import numpy as np
import tifffile

from consumers import imaging
from consumers.imaging import (
    CorruptImage,
    DimensionOrderError,
    ImageError,
    ImageInfo,
    ImageTooLarge,
    UnsupportedImage,
)
from kiosk import options
from kiosk.filetypes import FileKind, kind_from_name, sniff

__all__ = [
    "FramesZip",
    "LabelledMovie",
    "Movie",
    "MovieError",
    "MovieLimits",
    "TiffMovie",
    "frame_entries",
    "natural_key",
    "open_movies",
]

GZIP_MAGIC = b"\x1f\x8b"
TRK_SUFFIXES = (".trk", ".trks")
MAX_TRK_CHANNELS = 16
"""Channels a .trk's raw.npy may hold: enough for any microscope, and a bound on what a small
upload can unpack to."""
COPY_CHUNK = 1024 * 1024
NPY_HEADER_BYTES = 64 * 1024
"""Bytes read to parse a .npy header (NumPy writes them in well under 1 KiB)."""
MAX_LINEAGE_BYTES = 64 * 1024 * 1024


class MovieError(ImageError):
    """A file that is not a movie Kiosk can track (a Z axis, one frame, too many frames)."""


@dataclass(frozen=True)
class MovieLimits:
    """What a movie may hold, checked from its headers before any frame is decoded."""

    max_frames: int
    max_pixels: int | None = imaging.DEFAULT_MAX_PIXELS
    """Pixels of one frame (Y x X)."""
    max_total_pixels: int | None = None
    """Pixels of every frame together (of every movie, for a .trks)."""


class Movie(ABC):
    """A movie open for reading, one frame at a time."""

    name: str
    frames: int
    height: int
    width: int
    dtype: np.dtype
    dimension_order: str
    """The stored axes as read (``TYX``, ``TCYX``, ``TYXC``)."""

    @abstractmethod
    def frame(self, t: int) -> np.ndarray:
        """Frame ``t`` as a (Y, X) plane of the chosen channel, in the file's own dtype."""

    def labels(self, t: int) -> np.ndarray | None:
        """Frame ``t``'s labels when the movie comes with them (a .trk), else None."""
        return None

    @property
    def labelled(self) -> bool:
        return False

    def frame_name(self, t: int) -> str:
        """How error messages name frame ``t``."""
        return f"frame {t} of {self.name!r}"

    def __iter__(self) -> Iterator[np.ndarray]:
        for t in range(self.frames):
            yield self.frame(t)

    def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release what the movie holds open."""

    def __enter__(self) -> Movie:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Limits and channels


def check_limits(
    name: str, frames: int, height: int, width: int, limits: MovieLimits, earlier: int = 0
) -> None:
    """Refuse a movie over the limits; ``earlier``: pixels of movies before it (a .trks)."""
    if frames < 2:
        raise MovieError(
            f"{name!r} holds one image, not a movie: tracking needs at least 2 frames. Submit a "
            "single image as a segmentation job; if its planes are time points, pass "
            "dimension_order (e.g. 'TYX')."
        )
    if frames > limits.max_frames:
        raise MovieError(
            f"{name!r} has {frames} frames; the limit is {limits.max_frames} (KIOSK_MAX_FRAMES). "
            "Split the movie into shorter ones, or take every n-th frame, and submit those."
        )
    plane = height * width
    if limits.max_pixels is not None and plane > limits.max_pixels:
        raise ImageTooLarge(
            f"{name!r} has frames of {height} x {width} = {plane:,} pixels; the limit is "
            f"{limits.max_pixels:,} per frame (KIOSK_MAX_IMAGE_PIXELS). Crop or downsample the "
            "movie and submit it again."
        )
    total = earlier + frames * plane
    if limits.max_total_pixels is not None and total > limits.max_total_pixels:
        raise ImageTooLarge(
            f"{name!r} holds {frames} frames of {height} x {width}, {total:,} pixels in all; "
            f"the limit is {limits.max_total_pixels:,} (KIOSK_MAX_MOVIE_PIXELS). Split the "
            "movie into shorter ones, or crop it, and submit those."
        )


def choose_channel(first: np.ndarray, channels: str | None, name: str) -> int:
    """The channel to track, checked the way segmentation checks it: ``first`` is frame 0 with
    every channel, (Y, X, C)."""
    imaging.select_channels(first[None], channels, required=1, name=name)
    picked = imaging.parse_channels(channels)
    return picked[0] if picked else 0


def _native(plane: np.ndarray) -> np.ndarray:
    if not plane.dtype.isnative:
        plane = plane.astype(plane.dtype.newbyteorder("="))
    if plane.dtype == np.bool_:
        plane = plane.view(np.uint8)
    return plane


# --------------------------------------------------------------------------------------------
# TIFF movies


def _z_refusal(name: str, planes: int, order: str) -> MovieError:
    return MovieError(
        f"{name!r} has a Z axis of {planes} planes (axes {order}): tracking takes 2-D movies "
        "(TYX, or TCYX with channels), not volumes. Project each time point to one plane "
        "(in Fiji: Image > Stacks > Z Project) and submit that; if the planes are time "
        "points, pass dimension_order with T instead of Z (e.g. 'TYX')."
    )


def infer_movie_order(info: ImageInfo, name: str) -> str:
    """Axis letters for a TIFF whose job gives no ``dimension_order``: the file's named axes
    (T, Z, C, Y, X; S is a channel), with unnamed ones read as time, then channels (at most 4)."""
    letters = ["C" if a == "S" else a if a in "TZCYX" else "?" for a in info.axes]
    if "Y" not in letters or "X" not in letters:
        letters = ["?"] * (len(info.shape) - 2) + ["Y", "X"]
        if len(info.shape) >= 3 and info.shape[-1] <= 4 and info.shape[-3] > 4:
            letters = ["?"] * (len(info.shape) - 3) + ["Y", "X", "C"]
    for i, letter in enumerate(letters):
        if letter != "?":
            continue
        if "T" not in letters:
            letters[i] = "T"
        elif "C" not in letters and info.shape[i] <= 4:
            letters[i] = "C"
        else:
            raise DimensionOrderError(
                f"cannot tell the axes of {name!r} (shape {'x'.join(map(str, info.shape))}); "
                "pass dimension_order, e.g. 'TYX' or 'TCYX'."
            )
    return "".join(letters)


def movie_order(info: ImageInfo, dimension_order: str | None, name: str) -> str:
    """The stored axes of a TIFF movie: the job's ``dimension_order`` when given (checked the
    way segmentation checks it), else :func:`infer_movie_order`."""
    if not _given(dimension_order):
        return infer_movie_order(info, name)
    order, _ = imaging._resolve_for_info(info, dimension_order, name)
    return order


def _given(dimension_order: str | None) -> bool:
    try:
        return options.parse_dimension_order(dimension_order) is not None
    except options.OptionError as exc:
        raise DimensionOrderError(str(exc)) from None


class TiffMovie(Movie):
    """A multi-page TIFF read page by page (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        *,
        name: str,
        dimension_order: str | None,
        channels: str | None,
        limits: MovieLimits,
    ) -> None:
        self.name = name
        info = imaging.probe(path, name=name)  # also refuses a truncated file
        if info.kind is not FileKind.TIFF:
            raise MovieError(
                f"{name!r} is a single {info.kind} image, not a movie: tracking reads "
                "multi-page TIFFs, zips of frames and .trk files. Submit it as a segmentation "
                "job, or save the movie as a TIFF stack."
            )
        order = movie_order(info, dimension_order, name)
        sizes = dict(zip(order, info.shape, strict=True))
        if sizes.get("Z", 1) > 1:
            raise _z_refusal(name, sizes["Z"], order)
        if "T" not in order and sizes.get("B", 1) > 1:
            order = order.replace("B", "T")
        extra = [a for a in order if a not in "TCSYXZ" and sizes[a] > 1]
        if extra:
            raise DimensionOrderError(
                f"{name!r} has axes {order}: tracking reads one time axis (T) with channels "
                "(C); pass dimension_order naming the time axis T, e.g. 'TCYX'."
            )
        self.dimension_order = order
        self.frames = sizes.get("T", 1)
        self.height, self.width = sizes["Y"], sizes["X"]
        check_limits(name, self.frames, self.height, self.width, limits)
        self._fh = open(path, "rb")  # noqa: SIM115 - closed in close()
        try:
            self._tif = tifffile.TiffFile(self._fh, _multifile=False)
            self._layout(info, order)
            # Every channel of frame 0, lead channels outer and a page's samples inner, the
            # order imaging.to_canonical folds them in.
            first = np.concatenate([self._page(0, c) for c in range(self._lead_channels)], -1)
            self._channel = choose_channel(first, channels, name)
            self.dtype = _native(first[..., :1]).dtype
        except BaseException:
            self.close()
            raise

    def _layout(self, info: ImageInfo, order: str) -> None:
        """How frames and channels map onto pages: the axes before a page's own."""
        series = self._tif.series[0]
        page_shape = tuple(int(n) for n in series.keyframe.shape)
        page_ndim = len(page_shape)
        if tuple(info.shape[len(info.shape) - page_ndim :]) != page_shape:
            raise DimensionOrderError(
                f"{self.name!r} stores its planes in a layout Kiosk cannot read frame by "
                "frame; save the movie again as a TIFF stack (one page per frame and channel)."
            )
        self._page_order = order[len(order) - page_ndim :]
        lead = order[: len(order) - page_ndim]
        if set(self._page_order) - set("YXCS") or "Y" not in self._page_order:
            raise DimensionOrderError(
                f"dimension_order {order!r} does not fit how {self.name!r} stores its pages "
                f"({page_shape}); pass the stored axis order, e.g. 'TYX' or 'TCYX'."
            )
        self._lead_shape = tuple(info.shape[: len(lead)])
        self._lead = lead
        self._lead_channels = math.prod(
            n for a, n in zip(lead, self._lead_shape, strict=True) if a in "CS"
        )
        self._page_channels = math.prod(
            n for a, n in zip(self._page_order, page_shape, strict=True) if a in "CS"
        )

    def _page(self, t: int, channel: int) -> np.ndarray:
        """Frame ``t``, lead channel ``channel``: one page as (Y, X, page channels)."""
        # Other lead axes (a Z or B of one plane) have size 1: index 0.
        index = [t if axis == "T" else channel if axis in "CS" else 0 for axis in self._lead]
        page = int(np.ravel_multi_index(index, self._lead_shape)) if index else 0
        try:
            data = self._tif.asarray(key=page, series=0)
        except Exception as err:
            raise CorruptImage(
                f"{self.frame_name(t)} could not be decoded ({type(err).__name__}: {err}); the "
                "file is damaged. Check that it opens in Fiji, then submit it again."
            ) from err
        plane = imaging.to_canonical(
            data.reshape(data.shape[-len(self._page_order) :]), self._page_order
        )
        return plane[0]

    def frame(self, t: int) -> np.ndarray:
        if not 0 <= t < self.frames:
            raise IndexError(f"frame {t} of {self.frames}")
        lead, sample = divmod(self._channel, self._page_channels)
        return _native(self._page(t, lead)[..., sample])

    def close(self) -> None:
        tif = getattr(self, "_tif", None)
        if tif is not None:
            tif.close()
        fh = getattr(self, "_fh", None)
        if fh is not None:
            fh.close()


# --------------------------------------------------------------------------------------------
# Zips of frames


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders numbers by value: ``frame2`` before ``frame10``."""
    parts = re.split(r"(\d+)", name.replace("\\", "/").lower())
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts if p)


def frame_entries(infos: Sequence[zipfile.ZipInfo]) -> list[zipfile.ZipInfo]:
    """The image entries of a zip in frame order (folders and macOS metadata left out)."""
    images = []
    for info in infos:
        parts = PurePosixPath(info.filename.replace("\\", "/")).parts
        if info.is_dir() or not parts or "__MACOSX" in parts or parts[-1].startswith("._"):
            continue
        if kind_from_name(info.filename) in (FileKind.TIFF, FileKind.PNG, FileKind.JPEG):
            images.append(info)
    return sorted(images, key=lambda info: natural_key(info.filename))


def _frame_order(dimension_order: str | None) -> str | None:
    """A zip's frames are single images: a ``dimension_order`` with T names the movie, not a
    frame, so it is not applied to each frame."""
    if not _given(dimension_order):
        return "infer"
    order = options.parse_dimension_order(dimension_order) or ""
    return "infer" if "T" in order or "B" in order else order


class FramesZip(Movie):
    """A zip of single 2-D frames, one frame per entry in :func:`natural_key` order. Every
    entry's header is read at opening (size, one plane each, same size as the first)."""

    def __init__(
        self,
        archive: zipfile.ZipFile,
        entries: Sequence[zipfile.ZipInfo],
        *,
        name: str,
        dimension_order: str | None,
        channels: str | None,
        limits: MovieLimits,
        owns_archive: bool = False,
    ) -> None:
        self.name = name
        self._archive = archive
        self._owns_archive = owns_archive
        self._entries = sorted(entries, key=lambda info: natural_key(info.filename))
        self._order = _frame_order(dimension_order)
        self._channels = channels
        self._max_pixels = limits.max_pixels
        self.dimension_order = "TYX"
        self.frames = len(self._entries)
        if self.frames == 0:
            raise MovieError(
                f"{name!r} holds no frames: zip .tif or .png images, one per frame, and "
                "submit it again."
            )
        # The count first, from the directory alone: nothing is read for a zip over the limit.
        check_limits(name, max(self.frames, 2), 1, 1, limits)
        shapes = [self._probe(t) for t in range(self.frames)]
        self.height, self.width = shapes[0]
        for t, shape in enumerate(shapes):
            if shape != shapes[0]:
                raise MovieError(
                    f"{self.frame_name(t)} is {shape[0]} x {shape[1]} but the first frame is "
                    f"{self.height} x {self.width}: every frame of a movie must be the same "
                    "size. Crop or resize the frames alike and submit the zip again."
                )
        check_limits(name, self.frames, self.height, self.width, limits)
        self.dtype = self.frame(0).dtype

    def frame_name(self, t: int) -> str:
        return f"frame {t} ({self._entries[t].filename!r})"

    def close(self) -> None:
        if self._owns_archive:
            self._archive.close()

    def _probe(self, t: int) -> tuple[int, int]:
        info = self._entries[t]
        try:
            with self._archive.open(info) as src:
                header = imaging.probe(cast(BinaryIO, src), name=info.filename, size=info.file_size)
        except ImageError as exc:
            raise type(exc)(f"{self.frame_name(t)}: {exc}") from exc
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise CorruptImage(
                f"{self.frame_name(t)} cannot be read from the zip ({exc}); create the zip again."
            ) from exc
        order = imaging.resolve_dimension_order(
            header.shape, self._order, header.axes, name=info.filename
        )
        sizes = dict(zip(order, header.shape, strict=True))
        planes = math.prod(n for a, n in sizes.items() if a not in "YXCS")
        if planes != 1:
            raise MovieError(
                f"{self.frame_name(t)} holds {planes} planes: a zip of frames holds one 2-D "
                "image per frame. Submit a multi-page movie on its own (or a zip of movies, "
                "each a multi-page TIFF)."
            )
        return sizes["Y"], sizes["X"]

    def frame(self, t: int) -> np.ndarray:
        info = self._entries[t]
        try:
            data = self._archive.read(info)
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise CorruptImage(
                f"{self.frame_name(t)} cannot be read from the zip ({exc}); create the zip again."
            ) from exc
        try:
            loaded = imaging.open_image(
                data,
                name=info.filename,
                dimension_order=self._order,
                channels=self._channels,
                required_channels=1,
                max_pixels=self._max_pixels,
            )
        except ImageError as exc:
            raise type(exc)(f"{self.frame_name(t)}: {exc}") from exc
        plane = loaded.pixels[0, ..., 0]
        if plane.shape != (self.height, self.width):
            raise MovieError(
                f"{self.frame_name(t)} decodes to {plane.shape[0]} x {plane.shape[1]}, not the "
                f"{self.height} x {self.width} its header says; save it again."
            )
        return _native(plane)


# --------------------------------------------------------------------------------------------
# .trk / .trks


def _npy_header(prefix: bytes, what: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the start of a .npy file."""
    src = io.BytesIO(prefix)
    try:
        version = np.lib.format.read_magic(src)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(src)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(src)
    except (ValueError, OSError, EOFError) as exc:
        raise CorruptImage(f"{what} is not a NumPy array file ({exc}); export it again.") from exc
    if dtype.hasobject:
        raise UnsupportedImage(f"{what} holds Python objects, not pixels; export it again.")
    return tuple(int(n) for n in shape), dtype


class LabelledMovie(Movie):
    """One movie of a .trk (or of a .trks: ``batch``), memory-mapped, with its labels."""

    def __init__(
        self, raw: np.ndarray, tracked: np.ndarray, *, name: str, channel: int, order: str
    ) -> None:
        self.name = name
        self._raw = raw
        self._tracked = tracked
        self._channel = channel
        self.frames, self.height, self.width = (int(n) for n in raw.shape[:3])
        self.dtype = _native(raw[:0, :0, :0, 0]).dtype
        self.dimension_order = order

    @property
    def labelled(self) -> bool:
        return True

    def frame(self, t: int) -> np.ndarray:
        return _native(np.asarray(self._raw[t, ..., self._channel]))

    def labels(self, t: int) -> np.ndarray:
        plane = np.asarray(self._tracked[t, ..., 0])
        if not np.issubdtype(plane.dtype, np.integer):
            if not np.all(np.mod(plane, 1) == 0) or (plane.size and plane.min() < 0):
                raise CorruptImage(
                    f"tracked.npy of {self.name!r} holds values that are not labels in frame "
                    f"{t}; labels are whole numbers from 0."
                )
            plane = plane.astype(np.int64)
        if plane.size and plane.min() < 0:
            raise CorruptImage(f"tracked.npy of {self.name!r} has negative labels in frame {t}.")
        return plane


@dataclass
class _TrkArrays:
    """What a .trk's headers said, checked as each member streams past."""

    name: str
    several: bool
    limits: MovieLimits
    shapes: dict[str, tuple[int, ...]]

    @property
    def layout(self) -> str:
        return "(B, T, Y, X, C)" if self.several else "(T, Y, X, C)"

    def check(self, member: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        what = f"{member} of {self.name!r}"
        kind = ".trks" if self.several else ".trk"
        if len(shape) != (5 if self.several else 4):
            raise DimensionOrderError(
                f"{what} has shape {shape}; a {kind} holds {self.layout} arrays. Export it "
                "again with DeepCell's save_trk(s)."
            )
        if member == "tracked.npy" and (
            shape[-1] != 1
            or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating))
        ):
            raise UnsupportedImage(
                f"{what} has shape {shape} of {dtype}: labels are one channel of whole numbers."
            )
        if member == "raw.npy" and shape[-1] > MAX_TRK_CHANNELS:
            raise ImageTooLarge(
                f"{what} has {shape[-1]} channels; Kiosk takes at most {MAX_TRK_CHANNELS}. Keep "
                "the channels to track and export it again."
            )
        movies = shape[0] if self.several else 1
        frames, height, width = shape[-4:-1]
        pixels = 0
        for b in range(movies):
            label = f"{self.name} (movie {b})" if self.several else self.name
            check_limits(label, frames, height, width, self.limits, pixels)
            pixels += frames * height * width
        self.shapes[member] = shape

    def check_both(self) -> None:
        missing = [n for n in ("raw.npy", "tracked.npy") if n not in self.shapes]
        if missing:
            kind = ".trks" if self.several else ".trk"
            lineage = "lineages.json" if self.several else "lineage.json"
            raise UnsupportedImage(
                f"{self.name!r} is not a {kind} file: it has no {' or '.join(missing)}. A "
                f"{kind} is a tar.gz of raw.npy, tracked.npy and {lineage}, as DeepCell "
                "writes it."
            )
        raw, tracked = self.shapes["raw.npy"], self.shapes["tracked.npy"]
        if raw[:-1] != tracked[:-1]:
            raise DimensionOrderError(
                f"tracked.npy of {self.name!r} has shape {tracked} but raw.npy {raw}: the labels "
                "must cover the same frames. Export the file again."
            )


def _stream_npy(src: BinaryIO, dest: Path, arrays: _TrkArrays, member: str) -> None:
    """Check a .npy's header against the limits, then write it out; nothing past a refused
    header is decompressed."""
    prefix = src.read(NPY_HEADER_BYTES)
    shape, dtype = _npy_header(prefix, f"{member} of {arrays.name!r}")
    arrays.check(member, shape, dtype)
    with open(dest, "wb") as out:
        out.write(prefix)
        shutil.copyfileobj(src, out, COPY_CHUNK)


def _check_lineage(src: BinaryIO, member: str, name: str) -> None:
    """The lineage a .trk comes with is not used (its labels are tracked again), but a file
    that is not JSON says the archive is damaged."""
    try:
        json.loads(src.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptImage(f"{member} of {name!r} is not JSON ({exc}); export it again.") from exc


@contextmanager
def _open_trk(
    path: Path, *, name: str, channels: str | None, limits: MovieLimits, workdir: Path
) -> Iterator[list[Movie]]:
    """Unpack a .trk/.trks in one pass over its stream, each array checked from its header
    before the rest of it is unpacked; then memory-map the arrays."""
    several = name.lower().endswith(".trks")
    arrays = _TrkArrays(name, several, limits, {})
    lineage = "lineages.json" if several else "lineage.json"
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                base = member.name.removeprefix("./")
                if not member.isfile() or base not in ("raw.npy", "tracked.npy", lineage):
                    continue
                src = tar.extractfile(member)
                if src is None:
                    continue
                with src:
                    if base == lineage:
                        if member.size <= MAX_LINEAGE_BYTES:
                            _check_lineage(cast(BinaryIO, src), base, name)
                    else:
                        _stream_npy(cast(BinaryIO, src), workdir / base, arrays, base)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise CorruptImage(
            f"{name!r} is not a readable .trk/.trks (tar.gz) file ({exc}); export it again."
        ) from exc
    arrays.check_both()
    try:
        raw = np.load(workdir / "raw.npy", mmap_mode="r")
        tracked = np.load(workdir / "tracked.npy", mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise CorruptImage(
            f"the arrays of {name!r} cannot be read ({exc}); export it again."
        ) from exc
    if not several:
        raw, tracked = raw[None], tracked[None]
    channel = choose_channel(np.asarray(raw[0, 0]), channels, name)
    yield [
        LabelledMovie(
            raw[b],
            tracked[b],
            name=f"{name} (movie {b})" if several else name,
            channel=channel,
            order="BTYXC" if several else "TYXC",
        )
        for b in range(raw.shape[0])
    ]


# --------------------------------------------------------------------------------------------
# Opening


def is_trk(name: str) -> bool:
    return name.lower().endswith(TRK_SUFFIXES)


@contextmanager
def open_movies(
    path: Path,
    *,
    name: str,
    dimension_order: str | None = None,
    channels: str | None = None,
    limits: MovieLimits,
    workdir: Path,
) -> Iterator[list[Movie]]:
    """The movies of a file: one for a TIFF or a zip of frames, one per movie of a .trks.
    ``workdir`` is where a .trk's arrays are unpacked (it must outlive the block)."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head:
        raise CorruptImage(f"{name!r} is empty: choose the file again and submit it.")
    if head.startswith(GZIP_MAGIC) or is_trk(name):
        with _open_trk(path, name=name, channels=channels, limits=limits, workdir=workdir) as m:
            yield m
        return
    kind = sniff(head)
    with ExitStack() as stack:
        if kind is FileKind.ZIP:
            try:
                archive = stack.enter_context(zipfile.ZipFile(path))
            except (zipfile.BadZipFile, OSError) as exc:
                raise CorruptImage(f"{name!r} is not a readable zip ({exc}).") from exc
            movie: Movie = FramesZip(
                archive,
                frame_entries(archive.infolist()),
                name=name,
                dimension_order=dimension_order,
                channels=channels,
                limits=limits,
            )
        elif kind is FileKind.TIFF or kind is None:
            tiff = TiffMovie(
                path, name=name, dimension_order=dimension_order, channels=channels, limits=limits
            )
            stack.callback(tiff.close)
            movie = tiff
        else:
            raise MovieError(
                f"{name!r} is a single {kind} image, not a movie: tracking reads multi-page "
                "TIFFs, zips of frames and .trk files. Submit it as a segmentation job, or "
                "save the movie as a TIFF stack."
            )
        yield [movie]
