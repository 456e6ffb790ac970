"""Image files in and label images out, with one axis convention for everything in between.

Reading: TIFF (multi-page, OME, ImageJ hyperstacks, LZW/deflate/... via tifffile+imagecodecs),
PNG and JPEG (Pillow) become a canonical ``(frames, Y, X, C)`` array in the file's own dtype.
Every axis that is not Y, X or a channel (time T, depth Z, batch B, a plain page sequence) is
folded into frames, in the order it was stored, because the models segment one 2D plane at a
time. How the stored axes are named comes from the job's ``dimension_order`` ("YXC", "CYX",
"ZYX", "TCYX", ...) or, by default ("infer"), from the file's own metadata (OME, ImageJ,
tifffile) and failing that from the shape: 2D -> YX, 3D with a last axis <= 4 -> YXC, other
3D -> ZYX, 4D -> TYXC / TCYX / TZYX, 5D -> TZYXC / TZCYX.

The header is read before any pixels are decoded, so an image over the size limit is refused
without allocating it. Pixels are decoded once; reordering axes is a view and at most one more
copy is made (folding transposed axes, or picking channels), so a 2048x2048 image costs at most
two extra copies of itself.

Writing: label images as zlib-compressed uint16 ImageJ TIFFs (hyperstacks with named axes for
stacks), which open in Fiji/ImageJ and napari. Over 65535 labels need uint32, which ImageJ
hyperstacks cannot hold; those are written as plain (non-ImageJ) TIFFs with the axes in
tifffile's JSON description: napari and tifffile read them exactly, Fiji opens them through
Bio-Formats ("File > Import > Bio-Formats"). PNG can be written for 8/16-bit images.

Every refusal is an `ImageError` (a ValueError) whose message says what was wrong and what to
do about it, fit to show to the person who uploaded the file.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np
import tifffile
from PIL import Image, ImageSequence

from kiosk import options
from kiosk.filetypes import ACCEPTED, FileKind, UnsupportedFile, sniff
from kiosk.options import AXIS_LETTERS

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ChannelError",
    "CorruptImage",
    "DimensionOrderError",
    "ImageError",
    "ImageInfo",
    "ImageTooLarge",
    "LoadedImage",
    "UnsupportedImage",
    "encode_labels_tiff",
    "encode_png",
    "label_dtype",
    "open_image",
    "parse_channels",
    "probe",
    "read_image",
    "resolve_dimension_order",
    "select_channels",
    "to_canonical",
    "write_labels_tiff",
    "write_png",
]

Source = bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO

#: Pixels per plane (Y * X) accepted by default: 8192 x 8192. The original Kiosk refused anything
#: over 2048 x 2048; tiling lifts that limit, and this keeps one plane's float32 working copies
#: (about 0.25 GiB each) within a consumer's memory. Configure it per deployment.
DEFAULT_MAX_PIXELS = 8192 * 8192

_CHANNEL_AXES = "CS"  # S (samples) is another name for C


class ImageError(ValueError):
    """An image Kiosk cannot use; the message says why and what to do."""


class UnsupportedImage(ImageError, UnsupportedFile):
    """Not a TIFF, PNG or JPEG (or a kind of one that cannot be decoded)."""


class CorruptImage(ImageError):
    """The file says it is an image but its contents cannot be decoded (truncated, damaged)."""


class ImageTooLarge(ImageError):
    """More pixels than the configured limit."""


class DimensionOrderError(ImageError):
    """A dimension_order that does not fit the image, or an image whose axes cannot be inferred."""


class ChannelError(ImageError):
    """A channels selection that does not fit the image or the model."""


@dataclass(frozen=True)
class ImageInfo:
    """What a file holds, read from its header without decoding pixels.

    `axes` are tifffile-style letters for the stored array (e.g. "YX", "YXS", "ZCYX", "IYX");
    "Q" marks an axis the file does not name. `full_shape`/`full_axes` keep length-1 axes
    that `shape`/`axes` leave out (ImageJ and OME files always carry all of TZCYXS).
    """

    kind: FileKind
    shape: tuple[int, ...]
    dtype: np.dtype
    axes: str
    full_shape: tuple[int, ...]
    full_axes: str


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image in canonical form plus how it was read (for writing results back)."""

    pixels: np.ndarray  # (frames, Y, X, C)
    kind: FileKind
    stored_shape: tuple[int, ...]
    dimension_order: str  # letters for the stored axes, as resolved
    frame_axes: str  # the letters folded into frames, e.g. "" (one plane), "Z", "TZ"

    @property
    def frames(self) -> int:
        return int(self.pixels.shape[0])


# --------------------------------------------------------------------------------------------
# Reading


def _describe(name: str | None) -> str:
    return repr(name) if name else "the image"


def _open_source(source: Source) -> tuple[BinaryIO, bool]:
    """A seekable binary handle for the source, and whether we opened it (and must close it)."""
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(source), True
    if isinstance(source, str | os.PathLike):
        return open(source, "rb"), True
    if hasattr(source, "read"):
        if hasattr(source, "seekable") and source.seekable():
            return source, False
        return io.BytesIO(source.read()), True
    raise TypeError(f"cannot read an image from {type(source).__name__}")


def _name_of(source: Source, name: str | None) -> str | None:
    if name:
        return name
    if isinstance(source, str | os.PathLike):
        return Path(source).name
    return getattr(source, "name", None) if hasattr(source, "read") else None


def _sniff(fh: BinaryIO, name: str | None) -> FileKind:
    start = fh.tell()
    head = fh.read(16)
    fh.seek(start)
    if not head:
        raise CorruptImage(f"{_describe(name)} is empty: choose the file again and upload it.")
    kind = sniff(head)
    if kind is FileKind.TRK:
        raise UnsupportedImage(
            f"{_describe(name)} is a .trk/.trks tracked movie, not an image: submit it as a "
            "tracking job."
        )
    if kind is None or kind is FileKind.ZIP:
        found = "a zip archive" if kind is FileKind.ZIP else "no image format Kiosk knows"
        raise UnsupportedImage(
            f"{_describe(name)} is {found}, not an image: Kiosk reads {ACCEPTED}. "
            "Convert it (e.g. save as TIFF in Fiji) and upload again."
        )
    return kind


def _corrupt(name: str | None, kind: FileKind, err: BaseException) -> CorruptImage:
    return CorruptImage(
        f"{_describe(name)} could not be decoded as {kind} ({type(err).__name__}: {err}); "
        "the file is truncated or damaged. Check that it opens in Fiji, then upload it again."
    )


def _tiff_info(tif: tifffile.TiffFile, name: str | None, size: int) -> ImageInfo:
    if not tif.series or not tif.series[0].shape or 0 in tif.series[0].shape:
        raise CorruptImage(
            f"{_describe(name)} is a TIFF without any image in it; it may be damaged: "
            "export it again and upload it."
        )
    series = tif.series[0]  # extra series are pyramids/thumbnails; the first is the image
    # A TIFF cut short keeps its header; refuse it before decoding reads past the end.
    for page in series.pages[:4096]:
        if page is None:
            continue
        offsets = getattr(page, "dataoffsets", ()) or ()
        counts = getattr(page, "databytecounts", ()) or ()
        if offsets and counts and max(o + c for o, c in zip(offsets, counts, strict=False)) > size:
            raise CorruptImage(
                f"{_describe(name)} is truncated: its pixel data runs past the end of the file "
                f"({size} bytes). Upload the complete file again."
            )
    return ImageInfo(
        kind=FileKind.TIFF,
        shape=tuple(int(n) for n in series.shape),
        dtype=np.dtype(series.dtype),
        axes=series.axes,
        full_shape=tuple(int(n) for n in series.get_shape(False)),
        full_axes=series.get_axes(False),
    )


_PIL_CONVERT = {"P": "RGB", "PA": "RGBA", "1": "L", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB"}


def _pil_target_mode(img: Image.Image) -> str | None:
    """The mode a Pillow image is converted to before becoming an array (None: keep it)."""
    if img.mode == "P" and "transparency" in img.info:
        return "RGBA"
    return _PIL_CONVERT.get(img.mode)


def _pil_frames(img: Image.Image, kind: FileKind) -> int:
    """Frames to read: every frame of an animated PNG; one of a JPEG, whose extra "frames"
    (MPO) are camera previews, not data."""
    if kind is FileKind.JPEG:
        return 1
    return int(getattr(img, "n_frames", 1) or 1)


def _pil_info(img: Image.Image, kind: FileKind) -> ImageInfo:
    mode = _pil_target_mode(img) or img.mode
    bands = Image.getmodebands(mode) if mode != img.mode else len(img.getbands())
    shape: tuple[int, ...] = (img.height, img.width)
    axes = "YX"
    if bands > 1:
        shape += (bands,)
        axes += "S"
    n_frames = _pil_frames(img, kind)
    if n_frames > 1:
        shape = (n_frames, *shape)
        axes = "I" + axes
    dtype = {"L": np.uint8, "I;16": np.uint16, "I;16B": np.uint16, "I": np.int32, "F": np.float32}
    return ImageInfo(
        kind=kind,
        shape=shape,
        dtype=np.dtype(dtype.get(mode, np.uint8)),
        axes=axes,
        full_shape=shape,
        full_axes=axes,
    )


class _Borrowed(io.BufferedIOBase):
    """A read-only view of a handle that Pillow may close without closing the handle."""

    def __init__(self, fh: BinaryIO) -> None:
        super().__init__()
        self._fh = fh

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        return self._fh.read(-1 if size is None else size)

    read1 = read

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()


def _pil_open(fh: BinaryIO, name: str | None, kind: FileKind) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(cast(BinaryIO, _Borrowed(fh)))  # a file object in all but name
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(
            f"{_describe(name)} is far too large to decode safely ({err}). "
            "Crop or downsample it, or split it into tiles, and upload the parts."
        ) from err
    except Exception as err:
        raise _corrupt(name, kind, err) from err


def probe(source: Source, *, name: str | None = None, size: int | None = None) -> ImageInfo:
    """Shape, dtype and axes of an image file from its header, without decoding pixels.
    ``size``: the file's length when the stream cannot cheaply tell (a zip entry)."""
    name = _name_of(source, name)
    fh, owned = _open_source(source)
    try:
        kind = _sniff(fh, name)
        return _probe_open(fh, name, kind, size)
    finally:
        if owned:
            fh.close()


def pixel_bytes(source: Source, *, name: str | None = None, size: int | None = None) -> int:
    """Bytes the image's pixels take decoded, every page or frame together, from its header:
    what a file of the image can justify being."""
    info = probe(source, name=name, size=size)
    return math.prod(info.shape) * info.dtype.itemsize


def _file_size(fh: BinaryIO) -> int:
    here = fh.tell()
    fh.seek(0, io.SEEK_END)
    size = fh.tell()
    fh.seek(here)
    return size


def _probe_open(
    fh: BinaryIO, name: str | None, kind: FileKind, size: int | None = None
) -> ImageInfo:
    if kind is FileKind.TIFF:
        try:
            with tifffile.TiffFile(fh, _multifile=False) as tif:
                return _tiff_info(tif, name, _file_size(fh) if size is None else size)
        except ImageError:
            raise
        except Exception as err:
            raise _corrupt(name, kind, err) from err
    img = _pil_open(fh, name, kind)
    try:
        return _pil_info(img, kind)
    finally:
        img.close()


def _decode_tiff(fh: BinaryIO, name: str | None) -> np.ndarray:
    try:
        with tifffile.TiffFile(fh, _multifile=False) as tif:
            return tif.series[0].asarray()
    except ImageError:
        raise
    except Exception as err:
        raise _corrupt(name, FileKind.TIFF, err) from err


def _decode_pil(fh: BinaryIO, name: str | None, kind: FileKind) -> np.ndarray:
    img = _pil_open(fh, name, kind)
    try:
        frames = []
        for i, frame in enumerate(ImageSequence.Iterator(img)):
            if i >= _pil_frames(img, kind):
                break
            frame.load()
            mode = _pil_target_mode(frame)
            frames.append(np.asarray(frame.convert(mode) if mode else frame))
    except ImageError:
        raise
    except Exception as err:
        raise _corrupt(name, kind, err) from err
    finally:
        img.close()
    if len(frames) == 1:
        return frames[0]
    return np.stack(frames)


def _check_size(
    info: ImageInfo,
    order: str,
    shape: tuple[int, ...],
    name: str | None,
    max_pixels: int | None,
    max_total_pixels: int | None,
) -> None:
    ny = shape[order.index("Y")]
    nx = shape[order.index("X")]
    plane = ny * nx
    if max_pixels is not None and plane > max_pixels:
        side = int(np.sqrt(max_pixels))
        raise ImageTooLarge(
            f"{_describe(name)} is {ny} x {nx} = {plane:,} pixels per plane; the limit is "
            f"{max_pixels:,} (about {side} x {side}). Crop or downsample the image, or split it "
            "into tiles, and upload the parts (an operator can raise the limit)."
        )
    frames = int(np.prod([n for n, a in zip(shape, order, strict=True) if a not in "YXCS"]))
    total = plane * frames
    if max_total_pixels is not None and total > max_total_pixels:
        raise ImageTooLarge(
            f"{_describe(name)} holds {frames} planes of {ny} x {nx} = {total:,} pixels; the "
            f"limit is {max_total_pixels:,}. Split the stack into smaller files (e.g. a zip of "
            "shorter stacks) and upload those."
        )


def open_image(
    source: Source,
    *,
    name: str | None = None,
    dimension_order: str | None = "infer",
    channels: str | Sequence[int] | None = None,
    required_channels: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_total_pixels: int | None = None,
) -> LoadedImage:
    """Decode an image file (bytes, path or binary file) into canonical (frames, Y, X, C) form.

    `dimension_order` names the stored axes ("infer" reads the file's metadata or guesses from
    the shape); `channels` picks channels by index ("0", "1,2"); `required_channels` is how many
    the model needs (a mismatch is a `ChannelError` saying what the image has and what to pass).
    `max_pixels` limits Y * X of one plane and `max_total_pixels` all planes together; both are
    checked from the header before pixels are decoded.
    """
    name = _name_of(source, name)
    fh, owned = _open_source(source)
    try:
        kind = _sniff(fh, name)
        info = _probe_open(fh, name, kind)
        order, shape = _resolve_for_info(info, dimension_order, name)
        _check_size(info, order, shape, name, max_pixels, max_total_pixels)
        fh.seek(0)
        data = _decode_tiff(fh, name) if kind is FileKind.TIFF else _decode_pil(fh, name, kind)
    finally:
        if owned:
            fh.close()
    if data.shape != info.shape:  # decoders may disagree with headers on odd files
        order, shape = _resolve_for_info(
            ImageInfo(kind, data.shape, data.dtype, _unknown_axes(data.ndim), data.shape, ""),
            dimension_order,
            name,
        )
    data = data.reshape(shape)
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    if data.dtype == np.bool_:
        data = data.view(np.uint8)
    pixels = to_canonical(data, order)
    pixels = select_channels(pixels, channels, required=required_channels, name=name)
    return LoadedImage(
        pixels=pixels,
        kind=kind,
        stored_shape=tuple(data.shape),
        dimension_order=order,
        frame_axes="".join(a for a in order if a not in "YXCS"),
    )


def read_image(
    source: Source,
    *,
    name: str | None = None,
    dimension_order: str | None = "infer",
    channels: str | Sequence[int] | None = None,
    required_channels: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_total_pixels: int | None = None,
) -> np.ndarray:
    """`open_image(...).pixels`: the canonical (frames, Y, X, C) array."""
    return open_image(
        source,
        name=name,
        dimension_order=dimension_order,
        channels=channels,
        required_channels=required_channels,
        max_pixels=max_pixels,
        max_total_pixels=max_total_pixels,
    ).pixels


# --------------------------------------------------------------------------------------------
# Axes


def _unknown_axes(ndim: int) -> str:
    return "Q" * ndim


def _infer_from_shape(shape: tuple[int, ...], name: str | None) -> str:
    """The default guess for arrays whose file names no axes (see the module docstring)."""
    nd = len(shape)
    small = [n <= 4 for n in shape]
    if nd == 2:
        return "YX"
    if nd == 3:
        return "YXC" if small[2] else "ZYX"
    if nd == 4:
        if small[3]:
            return "TYXC"
        return "TCYX" if small[1] else "TZYX"
    if nd == 5:
        if small[4]:
            return "TZYXC"
        if small[2]:
            return "TZCYX"
    raise DimensionOrderError(
        f"cannot tell the axes of {_describe(name)} (shape {'x'.join(map(str, shape))}); "
        f"pass dimension_order with one letter per axis from {AXIS_LETTERS}, e.g. 'TZCYX'."
    )


def _from_file_axes(axes: str) -> str:
    """tifffile's axis letters in Kiosk's alphabet: S stays a channel axis, the rest are frames
    unless they are Y, X or C."""
    # Pages (I), series, angles, ...: all fold into frames like batch (B) does.
    return "".join(a if a in "YXCSTZ" else "B" for a in axes)


def _normalise_order(dimension_order: str | None) -> str | None:
    """Upper-cased order, or None for "infer"; letters checked (not yet against a shape)."""
    try:
        return options.parse_dimension_order(dimension_order)
    except options.OptionError as exc:
        raise DimensionOrderError(str(exc)) from None


def _validate_order(order: str, shape: tuple[int, ...], name: str | None) -> None:
    _normalise_order(order)
    if len(order) != len(shape):
        dims = "x".join(map(str, shape))
        raise DimensionOrderError(
            f"dimension_order {order!r} names {len(order)} axes but {_describe(name)} has "
            f"{len(shape)} (shape {dims}); pass one letter per axis, e.g. "
            f"{_infer_from_shape_or_none(shape)!r}."
        )


def _infer_from_shape_or_none(shape: tuple[int, ...]) -> str:
    try:
        return _infer_from_shape(shape, None)
    except DimensionOrderError:
        return "TZCYX"[-len(shape) :] if len(shape) <= 5 else "B" * (len(shape) - 5) + "TZCYX"


def resolve_dimension_order(
    shape: Sequence[int],
    dimension_order: str | None = "infer",
    file_axes: str | None = None,
    *,
    name: str | None = None,
) -> str:
    """Axis letters (from BTZCSYX) for an array of `shape`.

    An explicit `dimension_order` wins; "infer" uses the file's named axes when it has them
    (tifffile letters; "Q" means unnamed) and otherwise the shape rules of the module docstring.
    """
    shape = tuple(int(n) for n in shape)
    order = _normalise_order(dimension_order)
    if order is None:
        if file_axes and len(file_axes) == len(shape) and "Q" not in file_axes:
            order = _from_file_axes(file_axes)
            if "Y" in order and "X" in order:
                return order
        order = _infer_from_shape(shape, name)
    _validate_order(order, shape, name)
    return order


def _resolve_for_info(
    info: ImageInfo, dimension_order: str | None, name: str | None
) -> tuple[str, tuple[int, ...]]:
    """Order and array shape to use; tolerates an explicit order that names length-1 axes the
    file stores but tifffile squeezes away (e.g. 'TCYX' for a one-timepoint ImageJ stack)."""
    order = _normalise_order(dimension_order)
    shape = info.shape
    if order is not None and len(order) != len(shape) and info.full_axes:
        singles = {a for a, n in zip(info.full_axes, info.full_shape, strict=True) if n == 1}
        kept = "".join(a for a in order if a in info.axes or a not in singles)
        if len(kept) == len(shape):
            order = kept
    return resolve_dimension_order(shape, order or "infer", info.axes, name=name), shape


def to_canonical(array: np.ndarray, order: str) -> np.ndarray:
    """Rearrange an array whose axes are named by `order` into (frames, Y, X, C).

    Frame axes keep their stored order (T before Z in "TZYX"); several channel axes (C and S)
    fold into one. A view when the stored order already fits, else one copy.
    """
    if len(order) != array.ndim:
        raise DimensionOrderError(
            f"dimension_order {order!r} names {len(order)} axes but the array has {array.ndim}."
        )
    frame_idx = [i for i, a in enumerate(order) if a not in "YXCS"]
    chan_idx = [i for i, a in enumerate(order) if a in _CHANNEL_AXES]
    perm = [*frame_idx, order.index("Y"), order.index("X"), *chan_idx]
    moved = array.transpose(perm)
    n_frames = int(np.prod([array.shape[i] for i in frame_idx], dtype=np.int64))
    n_chan = int(np.prod([array.shape[i] for i in chan_idx], dtype=np.int64))
    ny, nx = array.shape[order.index("Y")], array.shape[order.index("X")]
    return moved.reshape(n_frames, ny, nx, n_chan)


# --------------------------------------------------------------------------------------------
# Channels


def parse_channels(channels: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """The job's `channels` ("0", "1,2", "", None, or a list of ints) as indices; None = all."""
    try:
        return options.parse_channels(channels)
    except options.OptionError as exc:
        raise ChannelError(str(exc)) from None


def select_channels(
    image: np.ndarray,
    channels: str | Sequence[int] | None,
    *,
    required: int | None = None,
    name: str | None = None,
) -> np.ndarray:
    """Pick channels of a (frames, Y, X, C) image, and check the model gets as many as it needs.

    With no selection and a model that needs fewer channels than the image has, an image whose
    channels are all identical (a grey picture saved as RGB, common for JPEG/PNG) gives its
    first ones; anything else is a `ChannelError` naming the channel count and what to pass.
    """
    n = image.shape[-1]
    picked = parse_channels(channels)
    what = f"{_describe(name)} has {n} channel{'s' if n != 1 else ''}"
    if picked is not None:
        missing = [c for c in picked if c >= n]
        if missing:
            raise ChannelError(
                f"channel {missing[0]} does not exist: {what} (indices 0..{n - 1}). "
                f"Pass channels from 0 to {n - 1}, e.g. channels='0'."
            )
        if required is not None and len(picked) != required:
            example = ",".join(str(c) for c in range(min(required, n)))
            raise ChannelError(
                f"channels {channels!r} selects {len(picked)} channel(s) but the model needs "
                f"{required}; {what}. Pass {required} index(es), e.g. channels='{example}'."
            )
        if picked == tuple(range(n)):
            return image
        if len(picked) == 1:
            return image[..., picked[0] : picked[0] + 1]
        return image[..., list(picked)]
    if required is None or n == required:
        return image
    if n > required and _channels_identical(image):
        return image[..., :required]
    if n > required:
        raise ChannelError(
            f"{what} but the model needs {required}; pass channels to choose "
            f"{'it' if required == 1 else 'them'} (indices 0..{n - 1}), e.g. channels='0' for "
            "the first, or the index of the nuclear channel."
        )
    raise ChannelError(
        f"{what} but the model needs {required}; upload an image with {required} channels "
        "(or choose a model made for this many)."
    )


def _channels_identical(image: np.ndarray) -> bool:
    first = image[..., 0]
    return all(np.array_equal(first, image[..., c]) for c in range(1, image.shape[-1]))


# --------------------------------------------------------------------------------------------
# Writing


def label_dtype(labels: np.ndarray) -> np.dtype:
    """uint16 when every label fits (the ImageJ-friendly case), else uint32."""
    if labels.size == 0:
        return np.dtype(np.uint16)
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise ValueError(f"label images must not hold negative labels (found {low})")
    if high > np.iinfo(np.uint32).max:
        raise ValueError(f"label {high} does not fit in uint32")
    return np.dtype(np.uint16 if high <= np.iinfo(np.uint16).max else np.uint32)


def _label_axes(labels: np.ndarray, axes: str | None) -> str:
    if axes is None:
        axes = {2: "YX", 3: "ZYX", 4: "TZYX"}.get(labels.ndim)
        if axes is None:
            raise ValueError(f"label images are 2D to 4D (got shape {labels.shape}); pass axes")
    axes = axes.upper()
    if len(axes) != labels.ndim or axes[-2:] != "YX" or len(set(axes)) != len(axes):
        raise ValueError(f"axes {axes!r} do not fit label shape {labels.shape} (must end in YX)")
    if set(axes) - set("TZCYX"):
        raise ValueError(f"label axes {axes!r} must use letters from TZCYX")
    return axes


DEFLATE_LEVEL = 1
"""zlib level of label images: they deflate 24:1 at level 1 in 40-55 % of level 6's time
(which gives 50:1), and every job writes one."""


def encode_labels_tiff(
    labels: np.ndarray,
    *,
    axes: str | None = None,
    mpp: float | None = None,
    compression: str = "zlib",
) -> bytes:
    """A label image as TIFF bytes that Fiji/ImageJ and napari open with the labels intact.

    2D -> one page; stacks -> one page per plane with `axes` ("ZYX" by default for 3D, "TYX"
    for a movie, "TZYX" for 4D) recorded as an ImageJ hyperstack. `mpp` (microns per pixel) is
    stored as the pixel size. Deflate (zlib, :data:`DEFLATE_LEVEL`): label images shrink
    10-50x.
    uint16 when labels fit (ImageJ hyperstack), else uint32 in a plain TIFF (see module doc).
    A trailing length-1 channel axis, as pipelines produce, is dropped.
    """
    labels = np.asarray(labels)
    if labels.ndim >= 3 and labels.shape[-1] == 1 and (axes is None or len(axes) < labels.ndim):
        labels = labels[..., 0]
    whole = np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_
    if not whole and not np.all(np.mod(labels, 1) == 0):
        raise ValueError("label images must hold whole numbers")
    axes = _label_axes(labels, axes)
    dtype = label_dtype(labels)
    out = labels.astype(dtype, copy=False)
    buf = io.BytesIO()
    kwargs: dict = {"compression": compression}
    if compression == "zlib":
        kwargs["compressionargs"] = {"level": DEFLATE_LEVEL}
    if mpp:
        kwargs["resolution"] = (1.0 / mpp, 1.0 / mpp)
    if dtype == np.uint16:
        metadata: dict = {"axes": axes}
        if mpp:
            metadata["unit"] = "um"
        tifffile.imwrite(buf, out, imagej=True, metadata=metadata, **kwargs)
    else:
        tifffile.imwrite(
            buf,
            out,
            photometric="minisblack",
            metadata={"axes": axes, "kiosk": "label image (uint32: more than 65535 labels)"},
            **kwargs,
        )
    return buf.getvalue()


def write_labels_tiff(path: str | os.PathLike[str], labels: np.ndarray, **kwargs) -> Path:
    """`encode_labels_tiff` to a file."""
    path = Path(path)
    path.write_bytes(encode_labels_tiff(labels, **kwargs))
    return path


def encode_png(image: np.ndarray, *, compress_level: int = 6) -> bytes:
    """A 2D (Y, X) or (Y, X, 1|3|4) uint8/uint16 array as PNG bytes (RGB/RGBA need uint8).

    Labels fit when there are at most 65535 of them; bool images become 0/255.
    """
    image = np.asarray(image)
    if image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
        raise ValueError(f"PNG holds (Y, X), (Y, X, 3) or (Y, X, 4) images, not {image.shape}")
    if image.dtype not in (np.uint8, np.uint16):
        fits = np.issubdtype(image.dtype, np.integer) and image.size > 0
        if fits and image.min() >= 0 and image.max() <= np.iinfo(np.uint16).max:
            image = image.astype(np.uint16)
        if image.dtype not in (np.uint8, np.uint16):
            raise ValueError(
                f"PNG holds 8- or 16-bit unsigned integers, not {image.dtype} "
                f"(values {image.min()}..{image.max()}); scale or convert the image first"
            )
    if image.ndim == 3 and image.dtype != np.uint8:
        raise ValueError("colour PNGs must be uint8")
    if image.ndim == 2 and image.dtype == np.uint16:
        pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint16))
    else:
        pil = Image.fromarray(image)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def write_png(path: str | os.PathLike[str], image: np.ndarray, **kwargs) -> Path:
    """`encode_png` to a file."""
    path = Path(path)
    path.write_bytes(encode_png(image, **kwargs))
    return path
