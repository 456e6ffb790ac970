"""Training targets of the deep-watershed heads, computed from instance labels.

Why these three: the inner distance gives one peak per nucleus (markers that separate touching
nuclei), the outer distance gives the watershed landscape and the per-nucleus interior, and the
foreground/background map gives the mask. Definitions follow DeepCell's transforms
(deepcell_toolbox / deepcell.utils.transform_utils):

- inner distance: ``1 / (1 + beta * alpha * d_c**2)`` where ``d_c`` is the distance to the
  nucleus' distance-weighted centroid and ``alpha = 1 / sqrt(area)`` ("auto");
- outer distance: Euclidean distance to the nucleus' *own* boundary divided by its maximum
  within that nucleus (0..1). Unlike a plain EDT of the foreground, touching nuclei each get
  their own boundary, so the valley between them is real;
- fgbg: one-hot background/foreground.

Pure numpy/scipy, whole-image vectorised (no per-object loop).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from consumers.processing.contract import Heads

__all__ = ["fgbg", "head_targets", "inner_distance", "outer_distance", "targets"]


def _own_boundary_distance(labels: NDArray[np.integer]) -> NDArray[np.float32]:
    """Distance of every object pixel to the nearest pixel outside its own object.

    One EDT suffices: the straight path from a pixel to any pixel of another object leaves its
    own object first, through one of its inner boundary pixels.
    """
    inner_edge = find_boundaries(labels, mode="inner", connectivity=1) & (labels > 0)
    inside = (labels > 0) & ~inner_edge
    distance = ndi.distance_transform_edt(inside).astype(np.float32) + 1.0
    distance[labels == 0] = 0.0
    return distance


def outer_distance(labels: NDArray[np.integer]) -> NDArray[np.float32]:
    """Per-object distance to its own boundary, normalised to 1 at the object's deepest pixel."""
    labels = np.asarray(labels)
    distance = _own_boundary_distance(labels)
    n = int(labels.max())
    if n == 0:
        return distance
    peak = ndi.maximum(distance, labels, index=np.arange(n + 1))
    peak = np.asarray(peak, dtype=np.float32)
    peak[peak == 0] = 1.0
    return (distance / peak[labels]).astype(np.float32)


def inner_distance(labels: NDArray[np.integer], beta: float = 1.0) -> NDArray[np.float32]:
    """DeepCell's inner distance with alpha="auto": a peak of 1 at each object's centre."""
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, dtype=np.float32)
    n = int(labels.max())
    if n == 0:
        return out
    weight = _own_boundary_distance(labels).astype(np.float64)
    flat = labels.ravel()
    yy, xx = np.indices(labels.shape, dtype=np.float64)
    w = weight.ravel()
    total = np.bincount(flat, weights=w, minlength=n + 1)
    total[total == 0] = 1.0
    cy = np.bincount(flat, weights=w * yy.ravel(), minlength=n + 1) / total
    cx = np.bincount(flat, weights=w * xx.ravel(), minlength=n + 1) / total
    area = np.bincount(flat, minlength=n + 1).astype(np.float64)
    alpha = 1.0 / np.sqrt(np.maximum(area, 1.0))
    d2 = (yy - cy[labels]) ** 2 + (xx - cx[labels]) ** 2
    value = 1.0 / (1.0 + beta * alpha[labels] * d2)
    out[...] = np.where(labels > 0, value, 0.0)
    return out


def fgbg(labels: NDArray[np.integer]) -> NDArray[np.float32]:
    """One-hot (H, W, 2): channel 0 background, channel 1 foreground."""
    fg = (np.asarray(labels) > 0).astype(np.float32)
    return np.stack([1.0 - fg, fg], axis=-1)


def targets(labels: NDArray[np.integer]) -> NDArray[np.float32]:
    """(H, W, 3): inner distance, outer distance, foreground; fgbg's one-hot is 1 - fg, fg."""
    labels = np.asarray(labels)
    return np.stack(
        [inner_distance(labels), outer_distance(labels), (labels > 0).astype(np.float32)],
        axis=-1,
    )


def head_targets(ys: np.ndarray, heads: Heads, offset: int = 0) -> dict[str, np.ndarray]:
    """A batch's (B, t, t, T) targets -> one compartment's three heads, from channels
    ``offset``.. ``offset + 2`` (inner, outer, foreground; fgbg one-hot from the foreground)."""
    fg = ys[..., offset + 2 : offset + 3]
    return {
        heads.inner: ys[..., offset : offset + 1],
        heads.outer: ys[..., offset + 1 : offset + 2],
        heads.foreground: np.concatenate([1.0 - fg, fg], axis=-1),
    }
