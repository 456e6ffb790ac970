"""Resample images to the model's pixel size and label images back to the original grid.

A segmentation model learns objects at one physical pixel size (the nuclear model: 0.65 um per
pixel), so an image taken at another size is resampled by ``image_mpp / model_mpp`` before
prediction: an image with 1.3 um pixels is upsampled 2x, one with 0.325 um pixels is halved.
Images use bilinear interpolation, with a Gaussian anti-aliasing prefilter when shrinking (an
area-like average, as scikit-image's resize does); the labels that come back are resampled with
nearest neighbour so that every output label is one the model's grid produced (no new values,
no blended ids). Both directions use pixel-centre alignment, so restore_labels(rescale(x)) lands
objects where they were.

A scale of 1 (within `SCALE_TOLERANCE`) returns the input itself: no copy, no resampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

__all__ = [
    "SCALE_TOLERANCE",
    "rescale_to_model",
    "rescaled_shape",
    "resize_image",
    "restore_labels",
    "scale_factor",
]

#: Relative difference from 1 below which no resampling is done (0.5 px over 1000 px).
SCALE_TOLERANCE = 5e-4


def scale_factor(image_mpp: float | None, model_mpp: float | None) -> float:
    """How much to enlarge the image: image_mpp / model_mpp (1.0 when either is unknown)."""
    if image_mpp is None or model_mpp is None:
        return 1.0
    for name, value in (("image_mpp", image_mpp), ("model_mpp", model_mpp)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(
                f"{name} must be a positive number of microns per pixel, got {value!r}"
            )
    scale = float(image_mpp) / float(model_mpp)
    return 1.0 if abs(scale - 1.0) < SCALE_TOLERANCE else scale


def rescaled_shape(shape: Sequence[int], scale: float) -> tuple[int, int]:
    """The (Y, X) size an image of `shape` gets when scaled by `scale` (at least 1x1)."""
    return (max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale)))


def resize_image(image: np.ndarray, shape: Sequence[int]) -> NDArray[np.float32]:
    """Bilinear resize of a (Y, X) or (Y, X, C) image to `shape` (Y, X), float32.

    Shrinking smooths first (sigma = (factor - 1) / 2 per axis) so that fine texture averages
    rather than aliases.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"expected a (Y, X) or (Y, X, C) image, got shape {image.shape}")
    target = (int(shape[0]), int(shape[1]))
    if image.shape[:2] == target:
        return image if image.dtype == np.float32 else image.astype(np.float32)
    data = image.astype(np.float32, copy=False)
    factors = [image.shape[0] / target[0], image.shape[1] / target[1]]
    sigma = [max(0.0, (f - 1.0) / 2.0) for f in factors]
    if any(s > 0 for s in sigma):
        sigma_full = sigma + [0.0] * (image.ndim - 2)
        data = ndi.gaussian_filter(data, sigma_full, mode="mirror", truncate=3.0)
    zoom = [target[0] / image.shape[0], target[1] / image.shape[1]] + [1.0] * (image.ndim - 2)
    out = ndi.zoom(data, zoom, order=1, mode="nearest", grid_mode=True, output=np.float32)
    if out.shape[:2] != target:  # zoom rounds the same way, but pin it
        out = out[: target[0], : target[1]]
    return out


def rescale_to_model(
    image: np.ndarray, image_mpp: float | None, model_mpp: float | None
) -> np.ndarray:
    """Resample a (Y, X) or (Y, X, C) image to the model's pixel size.

    The input itself comes back (same object, same dtype) when no scaling is needed; otherwise
    a new float32 array of `rescaled_shape(image.shape, scale)`.
    """
    scale = scale_factor(image_mpp, model_mpp)
    if scale == 1.0:
        return image
    return resize_image(image, rescaled_shape(image.shape, scale))


def restore_labels(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resample of a (Y, X[, ...]) label image to `shape` (Y, X).

    Each output pixel takes the label under its centre, so values are only ever copied: no new
    label appears (a label can vanish if its object shrinks below one pixel). Returns `labels`
    itself when it already has the shape.
    """
    labels = np.asarray(labels)
    target = (int(shape[0]), int(shape[1]))
    if labels.shape[:2] == target:
        return labels
    rows = _nearest_index(labels.shape[0], target[0])
    cols = _nearest_index(labels.shape[1], target[1])
    return labels[rows[:, None], cols[None, :]]


def _nearest_index(n_in: int, n_out: int) -> NDArray[np.intp]:
    """Source index under each output pixel centre, with pixel-centre (grid mode) alignment."""
    centres = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out)
    return np.clip(np.floor(centres).astype(np.intp), 0, n_in - 1)
