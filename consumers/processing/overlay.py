"""A PNG preview of a segmentation: the image in grey with every object's outline drawn on it.

Why: the web portal and the job record show a thumbnail so a person can judge a result at a
glance without opening the label TIFF in Fiji. Large images are downsampled first (longest side
`max_side`, area-averaged image, nearest-neighbour labels) so the preview stays small and fast
whatever the input size. Outlines are drawn at preview resolution; objects can optionally be
filled with a translucent colour each (a fixed colour per label id, so repeated previews match).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from consumers.imaging import encode_png
from consumers.processing.rescale import resize_image, restore_labels

__all__ = [
    "inner_boundaries",
    "label_colours",
    "overlay_layers_png",
    "overlay_png",
    "overlay_rgb",
    "to_uint8",
]

_GOLDEN = 0.618033988749895


def to_uint8(
    image: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.8)
) -> NDArray[np.uint8]:
    """Contrast-stretch a 2D image between two percentiles into 0..255.

    Percentiles come from ~65k evenly spaced samples (plenty for a preview). 8- and 16-bit
    images, what microscopes write, go through a lookup table: one gather per pixel instead of
    float arithmetic over the whole image, since every job pays for its preview.
    """
    data = np.asarray(image)
    if data.dtype in (np.uint8, np.uint16):
        low, high = _stretch_range(data.ravel(), percentiles)
        levels = np.arange(np.iinfo(data.dtype).max + 1, dtype=np.float32)
        return _stretch(levels, low, high)[data]
    data = data.astype(np.float32, copy=False)
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return np.zeros(data.shape, np.uint8)
    low, high = _stretch_range(finite, percentiles)
    return _stretch(np.nan_to_num(data, nan=low), low, high)


def _stretch_range(values: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    step = max(1, values.size // (1 << 16))
    low, high = (float(v) for v in np.percentile(values[::step], percentiles))
    return low, (high if high > low else low + 1.0)


def _stretch(values: np.ndarray, low: float, high: float) -> NDArray[np.uint8]:
    scaled = (values - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def label_colours(labels: np.ndarray) -> NDArray[np.uint8]:
    """An RGB colour per pixel from its label id (golden-ratio hues; background black)."""
    hue = (labels.astype(np.float64) * _GOLDEN) % 1.0
    # HSV -> RGB with S = 0.75, V = 1 on the six hue sectors.
    h6 = hue * 6.0
    sector = np.floor(h6).astype(np.int8) % 6
    frac = h6 - np.floor(h6)
    s = 0.75
    p = np.full_like(hue, 1.0 - s)
    q = 1.0 - s * frac
    t = 1.0 - s * (1.0 - frac)
    one = np.ones_like(hue)
    table = [(one, t, p), (q, one, p), (p, one, t), (p, q, one), (t, p, one), (one, p, q)]
    rgb = np.zeros((*labels.shape, 3), np.float64)
    for k, (r, g, b) in enumerate(table):
        sel = sector == k
        rgb[sel, 0], rgb[sel, 1], rgb[sel, 2] = r[sel], g[sel], b[sel]
    rgb[labels == 0] = 0
    return (rgb * 255).astype(np.uint8)


def _preview_size(shape: tuple[int, int], max_side: int) -> tuple[int, int]:
    longest = max(shape)
    if longest <= max_side:
        return shape
    scale = max_side / longest
    return (max(1, math.floor(shape[0] * scale)), max(1, math.floor(shape[1] * scale)))


# Palette previews use 64 greys (entries 0..63) and the outline colour (entry 64): a preview
# needs no more, and dropping the noise in the low bits makes the PNG 2.5x smaller and 2x faster
# to compress than 255 greys.
GREY_LEVELS = 64
OUTLINE_INDEX = GREY_LEVELS


def inner_boundaries(labels: np.ndarray) -> NDArray[np.bool_]:
    """Object pixels with a 4-neighbour of another label: skimage's
    ``find_boundaries(mode="inner")``, by array shifts (25x faster)."""
    edges = np.zeros(labels.shape, bool)
    rows = labels[1:] != labels[:-1]
    edges[1:] |= rows
    edges[:-1] |= rows
    cols = labels[:, 1:] != labels[:, :-1]
    edges[:, 1:] |= cols
    edges[:, :-1] |= cols
    return edges & (labels > 0)


def _preview(
    image: np.ndarray, labels: np.ndarray, max_side: int, channel: int
) -> tuple[NDArray[np.uint8], np.ndarray]:
    """The image as 8-bit grey and the labels, both at preview size."""
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.ndim == 3:
        image = image[..., channel]
    if labels.ndim == 3 and labels.shape[-1] == 1:
        labels = labels[..., 0]
    if image.ndim != 2 or labels.shape != image.shape:
        raise ValueError(
            f"overlay needs a 2D image and labels of the same shape, got {image.shape} and "
            f"{labels.shape}"
        )
    size = _preview_size(image.shape, max_side)
    if size != image.shape:
        image = resize_image(image, size)
        labels = restore_labels(labels, size)
    return to_uint8(image), labels


def overlay_rgb(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    max_side: int = 1024,
    outline_colour: tuple[int, int, int] = (255, 64, 255),
    fill_alpha: float = 0.0,
    channel: int = 0,
) -> NDArray[np.uint8]:
    """The preview as an (y, x, 3) uint8 array (see `overlay_png`)."""
    if not 0.0 <= fill_alpha <= 1.0:
        raise ValueError(f"fill_alpha must be between 0 and 1, got {fill_alpha}")
    grey, labels = _preview(image, labels, max_side, channel)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if fill_alpha > 0:
        inside = labels > 0
        colours = label_colours(labels)
        blended = (1 - fill_alpha) * rgb[inside] + fill_alpha * colours[inside]
        rgb[inside] = np.clip(blended, 0, 255).astype(np.uint8)
    rgb[inner_boundaries(labels)] = np.asarray(outline_colour, np.uint8)
    return rgb


def overlay_png(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    max_side: int = 1024,
    outline_colour: tuple[int, int, int] = (255, 64, 255),
    fill_alpha: float = 0.0,
    channel: int = 0,
) -> bytes:
    """PNG bytes: the image contrast-stretched to grey, object outlines in `outline_colour`.

    `image` is (Y, X) or (Y, X, C) (`channel` picks which one to show), `labels` (Y, X);
    `fill_alpha` > 0 also tints each object; the longest side is at most `max_side` pixels.
    Without a fill the PNG is palette-coded (64 greys and the outline colour): a third of the
    bytes of RGB to compress, at fast zlib level 1, since every job pays for its preview.
    """
    if fill_alpha > 0:
        rgb = overlay_rgb(
            image,
            labels,
            max_side=max_side,
            outline_colour=outline_colour,
            fill_alpha=fill_alpha,
            channel=channel,
        )
        return encode_png(rgb, compress_level=1)
    return overlay_layers_png(image, [(labels, outline_colour)], max_side=max_side, channel=channel)


def overlay_layers_png(
    image: np.ndarray,
    layers: Sequence[tuple[np.ndarray, tuple[int, int, int]]],
    *,
    max_side: int = 1024,
    channel: int = 0,
) -> bytes:
    """PNG bytes: the image in grey with the outlines of each layer's objects in the layer's
    colour, later layers drawn over earlier ones (a mesmer job's cells, then their nuclei).
    Palette-coded like :func:`overlay_png`'s, which is this with one layer."""
    if not layers or len(layers) > 256 - GREY_LEVELS:
        raise ValueError(f"an overlay takes 1 to {256 - GREY_LEVELS} layers, got {len(layers)}")
    grey, first = _preview(image, layers[0][0], max_side, channel)
    indices = (grey.astype(np.uint16) * (GREY_LEVELS - 1) // 255).astype(np.uint8)
    palette = [v * 255 // (GREY_LEVELS - 1) for v in range(GREY_LEVELS) for _ in range(3)]
    for index, (labels, colour) in enumerate(layers):
        shown = first if index == 0 else restore_labels(np.asarray(labels), grey.shape)
        indices[inner_boundaries(shown)] = OUTLINE_INDEX + index
        palette += list(colour)
    picture = Image.fromarray(indices, mode="P")
    picture.putpalette(palette)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
