"""Intensity normalisation: the one function the nuclear model's inputs go through.

Why one function: the model was trained on images passed through exactly this code
(models/training imports it), so serving must call it too or the model sees intensities it never
learned. Each image and channel is normalised on its own, because camera offsets, exposure and
bit depth differ between files and even between channels.

Methods:

- ``"percentile"`` (the model's default): clip to the 1st..99.8th percentile, scale to [0, 1].
  Robust to hot pixels and a few saturated nuclei; a constant image becomes all zeros.
- ``"clahe"``: the original DeepCell nuclear preprocessing: min-max to [0, 1], then contrast
  limited adaptive histogram equalisation (``skimage.exposure.equalize_adapthist``, tiles of 1/8
  of the image). Evens out dim and bright regions at the cost of amplifying background noise.

Memory: one float32 output plus per-channel temporaries of one channel's size (a 2048x2048
image peaks at a few tens of MB for "percentile"; "clahe" at about 150 MB).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["METHODS", "PERCENTILES", "normalize"]

METHODS = ("percentile", "clahe")
PERCENTILES = (1.0, 99.8)
"""Lower and upper percentiles the "percentile" method maps to 0 and 1."""

_MAX_SAMPLE = 1 << 20
"""Percentiles are taken on a regular subsample of at most this many pixels: ~1M values give
percentiles within a fraction of a grey level and keep 2048x2048 inputs fast."""


def normalize(image: np.ndarray, method: str = "percentile") -> NDArray[np.float32]:
    """Normalise every image and channel to [0, 1] float32, the nuclear model's input range.

    Args:
        image: (H, W) one image; (H, W, C) one image with channels last; (B, H, W, C) a batch.
        method: "percentile" or "clahe" (see the module docstring).

    Returns:
        float32 array of the same shape with values in [0, 1]; constant channels become 0.
    """
    if method not in METHODS:
        raise ValueError(f"unknown normalisation method {method!r}; choose one of {METHODS}")
    array = np.asarray(image)
    if array.ndim not in (2, 3, 4):
        raise ValueError(
            f"expected an (H, W), (H, W, C) or (B, H, W, C) image, got shape {array.shape}"
        )
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"expected a numeric image, got dtype {array.dtype}")
    if np.iscomplexobj(array):
        raise ValueError("complex images cannot be normalised")
    out = np.empty(array.shape, dtype=np.float32)
    if array.ndim == 2:
        out[...] = _normalize_plane(array, method)
        return out
    batch = array[None] if array.ndim == 3 else array
    target = out[None] if array.ndim == 3 else out
    for b in range(batch.shape[0]):
        for c in range(batch.shape[-1]):
            target[b, ..., c] = _normalize_plane(batch[b, ..., c], method)
    return out


def _normalize_plane(plane: np.ndarray, method: str) -> NDArray[np.float32]:
    """One 2-D channel: NaN/inf-safe, float32 throughout."""
    data = plane.astype(np.float32, copy=False)
    if not np.isfinite(data).all():
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    if method == "percentile":
        return _percentile(data)
    return _clahe(data)


def _percentile(data: NDArray[np.float32]) -> NDArray[np.float32]:
    step = max(1, int(np.ceil(np.sqrt(data.size / _MAX_SAMPLE))))
    sample = data[::step, ::step]
    low, high = np.percentile(sample, PERCENTILES)
    if not high > low:
        # Nearly constant (e.g. one bright pixel on a flat field): fall back to min..max.
        low, high = float(data.min()), float(data.max())
        if not high > low:
            return np.zeros(data.shape, dtype=np.float32)
    out = data - np.float32(low)  # new array: the input is never modified
    out *= np.float32(1.0 / (high - low))
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _clahe(data: NDArray[np.float32]) -> NDArray[np.float32]:
    from skimage.exposure import equalize_adapthist

    low, high = float(data.min()), float(data.max())
    if not high > low:
        return np.zeros(data.shape, dtype=np.float32)
    scaled = (data - np.float32(low)) * np.float32(1.0 / (high - low))
    np.clip(scaled, 0.0, 1.0, out=scaled)
    return equalize_adapthist(scaled).astype(np.float32, copy=False)
