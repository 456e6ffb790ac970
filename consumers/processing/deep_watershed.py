"""Deep watershed: turn the nuclear model's three maps into an instance label image.

Why this shape: the model predicts, per pixel, an *inner distance* (peaks at each nucleus'
centre), an *outer distance* (distance to the nucleus' own boundary, 0..1 per nucleus) and a
foreground probability. Peaks of the inner distance give one marker per nucleus, even where
nuclei touch; a marker-seeded watershed on the negated outer distance then grows each marker to
the valley between touching nuclei, inside the foreground mask. This is deepcell_toolbox's
``deep_watershed`` (same parameter names), for one 2-D image, with tuned defaults.

Speed (one CPU core): about 0.1-0.15 s per megapixel for typical images, up to about 0.4 s for
very dense fields (10,000 nuclei in 2048x2048); peak memory about 90 MB at 2048x2048 (4,000
nuclei). Markers come from one separable maximum filter (not skimage's peak_local_max, whose
spacing pass is slow on large images), and only foreground components holding several markers
are flooded by the watershed, a band of the image at a time: the original's h_maxima + full
watershed took about 1.5 s per megapixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from skimage.morphology import disk, h_maxima
from skimage.segmentation import relabel_sequential, watershed

__all__ = ["MAXIMA_ALGORITHMS", "deep_watershed"]

MAXIMA_ALGORITHMS = ("peak_local_max", "h_maxima")

_FLOOD_PIXELS = 1 << 19
"""Pixels of image one watershed call floods at most (unless one clump is larger)."""


def deep_watershed(
    inner_distance: np.ndarray,
    outer_distance: np.ndarray,
    fgbg: np.ndarray | None = None,
    *,
    radius: int = 5,
    maxima_threshold: float = 0.2,
    interior_threshold: float = 0.05,
    fgbg_threshold: float = 0.6,
    maxima_smooth: float = 0.0,
    interior_smooth: float = 1.0,
    small_objects_threshold: int = 10,
    exclude_border: bool = False,
    maxima_algorithm: str = "peak_local_max",
) -> NDArray[np.int32]:
    """Segment one image's model outputs into labels (int32, 0 background, 1..N nuclei).

    The defaults suit a nuclear model; each bundled model's contract declares the settings
    tuned for it on held-out generated images (its training.json, "postprocessing"). The
    original's were radius=10, maxima_threshold=0.1 with h_maxima, tuned for its own model.

    Args:
        inner_distance: (H, W) inner distance map; its peaks seed one object each.
        outer_distance: (H, W) outer distance map; the watershed runs on its negation.
        fgbg: optional (H, W) foreground probability (or the model's (H, W, 2) softmax);
            pixels below ``fgbg_threshold`` are background whatever the outer distance says.
        radius: minimum distance in pixels between two markers (``peak_local_max``), or the
            footprint radius of the maxima (``h_maxima``).
        maxima_threshold: markers need an inner distance above this (``peak_local_max``), or a
            peak this much higher than its surroundings (``h_maxima``).
        interior_threshold: pixels with outer distance at or below this are background.
        fgbg_threshold: foreground probability a pixel needs when ``fgbg`` is given.
        maxima_smooth: Gaussian sigma applied to the inner distance before peak finding.
        interior_smooth: Gaussian sigma applied to the outer distance before the watershed.
        small_objects_threshold: objects with fewer pixels are removed.
        exclude_border: ignore peaks within ``radius`` of the image border.
        maxima_algorithm: "peak_local_max" (fast, the default) or "h_maxima" (the original's).
    """
    inner = _plane(inner_distance, "inner_distance")
    outer = _plane(outer_distance, "outer_distance")
    if inner.shape != outer.shape:
        raise ValueError(f"inner {inner.shape} and outer {outer.shape} distance shapes differ")
    if maxima_algorithm not in MAXIMA_ALGORITHMS:
        raise ValueError(
            f"unknown maxima_algorithm {maxima_algorithm!r}; choose one of {MAXIMA_ALGORITHMS}"
        )
    if maxima_smooth > 0:
        inner = ndi.gaussian_filter(inner, maxima_smooth)
    if interior_smooth > 0:
        outer = ndi.gaussian_filter(outer, interior_smooth)

    mask = outer > interior_threshold
    if fgbg is not None:
        foreground = np.asarray(fgbg)
        if foreground.ndim == 3 and foreground.shape[-1] == 2:
            foreground = foreground[..., 1]  # the model's two-channel softmax: 1 = foreground
        foreground = _plane(foreground, "fgbg")
        if foreground.shape != inner.shape:
            raise ValueError(f"fgbg shape {foreground.shape} differs from {inner.shape}")
        mask &= foreground > fgbg_threshold
    if not mask.any():
        return np.zeros(inner.shape, dtype=np.int32)

    radius = max(int(radius), 1)
    if maxima_algorithm == "peak_local_max":
        peaks = _local_maxima(inner, radius, maxima_threshold) & mask
    else:
        peaks = h_maxima(inner, maxima_threshold, footprint=disk(radius)).astype(bool) & mask
    if exclude_border:
        peaks[:radius] = peaks[-radius:] = False
        peaks[:, :radius] = peaks[:, -radius:] = False
    # A plateau of equal maxima is one marker.
    markers, n_markers = ndi.label(peaks, structure=np.ones((3, 3), bool))
    if n_markers == 0:
        return np.zeros(inner.shape, dtype=np.int32)
    labels = _grow(outer, markers.astype(np.int32, copy=False), n_markers, mask)
    if small_objects_threshold > 0:
        sizes = np.bincount(labels.ravel())
        too_small = sizes < small_objects_threshold
        too_small[0] = False
        labels[too_small[labels]] = 0
    labels, _, _ = relabel_sequential(labels)
    return labels.astype(np.int32, copy=False)


def _local_maxima(image: NDArray[np.float32], radius: int, threshold: float) -> NDArray[np.bool_]:
    """Pixels that are the maximum of their (2r+1)^2 window and above threshold.

    Same peaks as skimage's ``peak_local_max(min_distance=radius, threshold_abs=threshold)``
    (its Chebyshev spacing is this window), without its slow pairwise spacing pass: within one
    window only equal values can both be maxima, and those plateaus are merged by labelling.
    """
    window = ndi.maximum_filter(image, size=2 * radius + 1, mode="nearest")
    return (image >= window) & (image > threshold)


def _grow(
    outer: NDArray[np.float32],
    markers: NDArray[np.int32],
    n_markers: int,
    mask: NDArray[np.bool_],
) -> NDArray[np.int32]:
    """Marker watershed restricted to where it matters.

    A foreground component holding one marker becomes that marker's object outright; only
    components holding several markers (touching nuclei) go through the watershed (flooding
    the negated outer distance), which is most of the cost. Components without a marker stay
    background, as in a plain watershed.
    """
    components, n_components = ndi.label(mask)  # 4-connected, like the watershed's default
    seeded = markers > 0
    # Distinct (component, marker) pairs: a marker lies in one component (rarely two, when a
    # plateau touches only diagonally; it then seeds both, as the watershed would).
    pairs = np.unique(components[seeded].astype(np.int64) * (n_markers + 1) + markers[seeded])
    pair_component, pair_marker = np.divmod(pairs, n_markers + 1)
    per_component = np.bincount(pair_component, minlength=n_components + 1)
    alone = per_component[pair_component] == 1
    owner = np.zeros(n_components + 1, dtype=np.int32)
    owner[pair_component[alone]] = pair_marker[alone]
    labels = owner[components]
    crowded_ids = np.flatnonzero(per_component >= 2)
    if crowded_ids.size == 0:
        return labels
    # The crowded components flood a group at a time: the watershed is confined to the mask,
    # so a component's result depends on its own pixels only, and each call's temporaries stay
    # the size of one band of the image instead of the whole of it.
    boxes = ndi.find_objects(components, max_label=int(crowded_ids[-1]))
    in_group = np.zeros(n_components + 1, dtype=bool)
    for group, box in _flood_groups(crowded_ids, [boxes[c - 1] for c in crowded_ids]):
        in_group[group] = True
        region = in_group[components[box]]
        grown = watershed(-outer[box], markers=np.where(region, markers[box], 0), mask=region)
        labels[box][region] = grown[region]
        in_group[group] = False
    return labels


def _flood_groups(
    ids: NDArray[np.intp], boxes: Sequence[tuple[slice, ...]]
) -> list[tuple[NDArray[np.intp], tuple[slice, slice]]]:
    """Components in top-to-bottom order, grouped while their joint bounding box stays within
    ``_FLOOD_PIXELS`` (a larger component is a group of its own): (ids, box) per group."""
    groups: list[tuple[NDArray[np.intp], tuple[slice, slice]]] = []
    members: list[int] = []
    top = bottom = left = right = 0
    for i in sorted(range(len(ids)), key=lambda k: boxes[k][0].start):
        rows, cols = boxes[i]
        joined = (
            max(bottom, rows.stop) - top,
            max(right, cols.stop) - min(left, cols.start),
        )
        if members and joined[0] * joined[1] > _FLOOD_PIXELS:
            groups.append((ids[members], np.s_[top:bottom, left:right]))
            members = []
        if not members:
            top, bottom, left, right = rows.start, rows.stop, cols.start, cols.stop
        members.append(i)
        bottom, left, right = max(bottom, rows.stop), min(left, cols.start), max(right, cols.stop)
    groups.append((ids[members], np.s_[top:bottom, left:right]))
    return groups


def _plane(array: np.ndarray, name: str) -> NDArray[np.float32]:
    """Accept (H, W) or (H, W, 1) (one channel of a model output) as float32 (H, W)."""
    plane = np.asarray(array)
    if plane.ndim == 3 and plane.shape[-1] == 1:
        plane = plane[..., 0]
    if plane.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) map, got shape {plane.shape}")
    return plane.astype(np.float32, copy=False)
