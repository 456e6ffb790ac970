"""The classical baselines: nuclei by Otsu threshold + distance-peak-seeded watershed; whole
cells by a watershed seeded with those nuclei on the membrane or cytoplasm channel.

Why: a deep model's numbers mean little without the method a lab would use without one (the
CellProfiler / Fiji recipe). It needs no model server, so it also segments when none is up.
Steps: Gaussian smoothing, a global Otsu threshold, holes filled and specks removed, then the
Euclidean distance to the background is smoothed, its peaks (at least `min_distance_um` apart)
seed a watershed on the negated distance, which splits touching round nuclei at their necks.

Defaults suit fluorescent nuclei at the nuclear model's 0.65 um/px (nuclei 8-20 um across);
lengths are given in microns and converted with `mpp`, so other pixel sizes need only `mpp`.

Whole cells (CellProfiler's IdentifySecondaryObjects, "Watershed - Image"): the cell mask is the
second channel above its Otsu threshold (on log intensities), closed and hole-filled, plus the
nuclei; each nucleus floods it, over the membrane's bright ridges (membrane stain) or down from
the bright cytoplasm to the dim borders between cells (cytoplasm stain). Cells with no nucleus
found are missed.

Whole cells from one channel (no nuclei to seed them): the nuclear recipe at a cell's scale on
what marks a cell in that channel, the log intensity of a fluorescent cytoplasm, or a
brightfield image's local contrast (its dim interior and bright or dark edge differ from the
flat background, while the interior may not differ in level at all).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.morphology import disk
from skimage.segmentation import relabel_sequential, watershed

__all__ = [
    "SINGLE_STAINS",
    "STAINS",
    "classical_cytoplasm",
    "classical_segment",
    "classical_whole_cell",
]

STAINS = ("membrane", "cytoplasm")
SINGLE_STAINS = ("cytoplasm", "brightfield")


def classical_segment(
    image: np.ndarray,
    *,
    mpp: float = 0.65,
    smoothing_um: float = 0.65,
    min_distance_um: float = 2.0,
    min_area_um2: float = 12.0,
    threshold: float | None = None,
) -> NDArray[np.int32]:
    """Segment nuclei in one 2D image (or (Y, X, 1)) into int32 labels (0 = background).

    `smoothing_um` is the Gaussian sigma before thresholding; `min_distance_um` the least
    distance between two nucleus centres (smaller splits more); `min_area_um2` the smallest
    object kept; `threshold` replaces Otsu's when given (in the image's units).
    """
    plane = np.asarray(image)
    if plane.ndim == 3 and plane.shape[-1] == 1:
        plane = plane[..., 0]
    if plane.ndim != 2:
        raise ValueError(f"classical_segment takes one 2D image, got shape {plane.shape}")
    if not (np.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp must be a positive number of microns per pixel, got {mpp!r}")
    data = np.nan_to_num(plane.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if smoothing_um > 0:
        data = ndi.gaussian_filter(data, smoothing_um / mpp)
    if data.size == 0 or float(data.max()) == float(data.min()):
        return np.zeros(plane.shape, np.int32)

    level = threshold_otsu(data) if threshold is None else float(threshold)
    mask = ndi.binary_fill_holes(data > level)
    min_area = max(1, round(min_area_um2 / mpp**2))
    mask = _remove_small(mask, min_area)
    if not mask.any():
        return np.zeros(plane.shape, np.int32)

    distance = ndi.distance_transform_edt(mask).astype(np.float32)
    # Smoothing the distance merges the twin peaks of elongated nuclei into one.
    distance = ndi.gaussian_filter(distance, 1.0)
    min_distance = max(1, round(min_distance_um / mpp))
    components, _ = ndi.label(mask)
    peaks = peak_local_max(
        distance,
        min_distance=min_distance,
        labels=components,
        exclude_border=False,
        num_peaks_per_label=np.inf,
    )
    markers = np.zeros(plane.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    # A component without a peak (tiny or flat) still becomes one object.
    seeded = np.zeros(int(components.max()) + 1, bool)
    seeded[components[tuple(peaks.T)]] = True
    unseeded = ~seeded[components] & mask
    if unseeded.any():
        extra, _ = ndi.label(unseeded)
        markers[unseeded] = extra[unseeded] + len(peaks)
    labels = watershed(-distance, markers=markers, mask=mask)
    labels = _remove_small_labels(labels, min_area)
    labels, _, _ = relabel_sequential(labels)
    return labels.astype(np.int32, copy=False)


def classical_whole_cell(
    nuclear: np.ndarray,
    stain: np.ndarray,
    *,
    stain_kind: str,
    mpp: float = 0.65,
    smoothing_um: float = 0.65,
    min_area_um2: float = 12.0,
    closing_um: float = 2.6,
) -> tuple[NDArray[np.int32], NDArray[np.int32]]:
    """(cells, nuclei) int32 labels from a nuclear and a membrane or cytoplasm image (2D each).

    Cell k holds nucleus k (nuclei by :func:`classical_segment`); `stain_kind` says what the
    second image shows ("membrane" or "cytoplasm"), which decides the flooding direction;
    `closing_um` bridges gaps in the stain's mask (a patchy membrane) before holes are filled.
    Settings chosen on generated images outside every model's seed ranges.
    """
    if stain_kind not in STAINS:
        raise ValueError(f"stain_kind must be one of {', '.join(STAINS)}, not {stain_kind!r}")
    nuc, cyto = np.asarray(nuclear), np.asarray(stain)
    if nuc.ndim != 2 or nuc.shape != cyto.shape:
        raise ValueError(
            f"classical_whole_cell takes two 2D images of one shape, got {nuc.shape} and "
            f"{cyto.shape}"
        )
    nuclei = classical_segment(nuc, mpp=mpp, smoothing_um=smoothing_um, min_area_um2=min_area_um2)
    data = np.nan_to_num(cyto.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if smoothing_um > 0:
        data = ndi.gaussian_filter(data, smoothing_um / mpp)
    if float(data.max()) == float(data.min()) or not nuclei.any():
        return nuclei.copy(), nuclei
    # Otsu on the log: dim and bright cells both clear it (on the raw counts it splits them).
    logged = np.log1p(np.maximum(data - float(data.min()), 0.0))
    mask = ndi.binary_closing(
        logged > threshold_otsu(logged), disk(max(1, round(closing_um / mpp)))
    )
    mask = ndi.binary_fill_holes(mask) | (nuclei > 0)
    landscape = data if stain_kind == "membrane" else -data
    cells = watershed(landscape, markers=nuclei, mask=mask)
    return cells.astype(np.int32, copy=False), nuclei


def classical_cytoplasm(
    image: np.ndarray,
    *,
    stain_kind: str,
    mpp: float = 0.65,
    min_distance_um: float = 8.0,
    min_area_um2: float = 40.0,
    background_um: float = 20.0,
) -> NDArray[np.int32]:
    """Whole cells from one fluorescent cytoplasm or brightfield image (2D): what marks cells
    in it (log intensity; for brightfield the relative departure from the background smoothed
    over `background_um`), then :func:`classical_segment` with cell-sized settings."""
    if stain_kind not in SINGLE_STAINS:
        raise ValueError(
            f"stain_kind must be one of {', '.join(SINGLE_STAINS)}, not {stain_kind!r}"
        )
    data = np.nan_to_num(np.asarray(image, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if data.ndim != 2:
        raise ValueError(f"classical_cytoplasm takes one 2D image, got shape {data.shape}")
    if stain_kind == "cytoplasm":
        marked = np.log1p(np.maximum(data - float(data.min()), 0.0))
    else:  # the relative departure from the flat-field background, which also evens it
        fine = ndi.gaussian_filter(data, 1.0)
        background = ndi.gaussian_filter(fine, background_um / mpp)
        ratio = fine / np.maximum(background, 1e-3 * max(float(background.max()), 1e-6))
        marked = ndi.gaussian_filter(np.abs(ratio - 1.0), 2.0)
    return classical_segment(
        marked, mpp=mpp, min_distance_um=min_distance_um, min_area_um2=min_area_um2
    )


def _remove_small(mask: np.ndarray, min_area: int) -> np.ndarray:
    components, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(components.ravel())
    keep = sizes >= min_area
    keep[0] = False
    return keep[components]


def _remove_small_labels(labels: np.ndarray, min_area: int) -> np.ndarray:
    sizes = np.bincount(labels.ravel())
    small = sizes < min_area
    small[0] = False
    if small.any():
        labels = labels.copy()
        labels[small[labels]] = 0
    return labels
