"""Drawing pieces shared by the image generators: shapes, rasterising, texture, light, camera.

Why one module: nuclei (``evaluation.synthetic``), whole cells (``evaluation.cells``) and movies
(``evaluation.movies``) are drawn with the same shapes, optics and camera, so an improvement to
realism reaches every generator, and each generator keeps only what is its own.

Every function takes the random generator explicitly and draws from it in a fixed order: the same
seed gives the same pixels (the nuclei generator's output is pinned by checksums).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from skimage.measure import label as connected_components

__all__ = [
    "Outline",
    "camera",
    "illumination",
    "keep_largest_pieces",
    "paint_depth",
    "random_shape",
    "sensor",
    "smooth_noise",
]


class Outline(Protocol):
    """A perturbed ellipse: centre, semi-axes (px), orientation and radial harmonics."""

    cy: float
    cx: float
    a: float
    b: float
    angle: float
    harmonics: NDArray[np.float64]  # rows: (order, amplitude, phase)


def random_shape(
    rng: np.random.Generator,
    radius: float,
    aspect: float,
    irregularity: float,
    max_order: int = 5,
) -> tuple[float, float, float, NDArray[np.float64]]:
    """Semi-axes, orientation and radial harmonics of one perturbed ellipse of mean radius.

    Harmonics of order 2..``max_order`` get amplitudes ~ N(0, irregularity) / order: low orders
    bend the outline, higher ones (cells: up to 8) add lobes and protrusions.
    """
    a = radius * np.sqrt(aspect)
    b = radius / np.sqrt(aspect)
    orders = np.arange(2, max_order + 1, dtype=np.float64)
    amplitudes = rng.normal(0.0, irregularity, orders.size) / orders
    phases = rng.uniform(0.0, 2 * np.pi, orders.size)
    return a, b, float(rng.uniform(0, np.pi)), np.stack([orders, amplitudes, phases], axis=1)


def paint_depth(
    shapes: Sequence[Outline], height: int, width: int
) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """Each pixel's owner (1-based index into ``shapes``, 0 none) and depth s = r / R(theta).

    s is 0 at a shape's centre and 1 on its outline. Where shapes overlap, the pixel goes to the
    shape it is deepest in (smallest s): touching objects meet along a curve, as cells and
    nuclei pressed together do. Depth is inf where no shape reaches.
    """
    owner = np.zeros((height, width), dtype=np.int32)
    depth = np.full((height, width), np.inf, dtype=np.float32)
    for index, n in enumerate(shapes, start=1):
        extent = n.a * (1.0 + np.abs(n.harmonics[:, 1]).sum()) + 1.5
        y0, y1 = max(int(n.cy - extent), 0), min(int(np.ceil(n.cy + extent)) + 1, height)
        x0, x1 = max(int(n.cx - extent), 0), min(int(np.ceil(n.cx + extent)) + 1, width)
        if y0 >= y1 or x0 >= x1:
            continue
        dy = np.arange(y0, y1, dtype=np.float64)[:, None] - n.cy
        dx = np.arange(x0, x1, dtype=np.float64)[None, :] - n.cx
        r = np.hypot(dy, dx)
        theta = np.arctan2(dy, dx)
        local = theta - n.angle
        ellipse = n.a * n.b / np.hypot(n.b * np.cos(local), n.a * np.sin(local))
        wobble = 1.0 + sum(amp * np.cos(order * theta + phase) for order, amp, phase in n.harmonics)
        s = (r / (ellipse * np.maximum(wobble, 0.6))).astype(np.float32)
        best = depth[y0:y1, x0:x1]
        take = (s < 1.0) & (s < best)
        best[take] = s[take]
        owner[y0:y1, x0:x1][take] = index
    return owner, depth


def keep_largest_pieces(
    owner: NDArray[np.int32], min_area: int
) -> tuple[NDArray[np.int32], NDArray[np.int64]]:
    """Labels 1..N from an owner image: each owner's largest 4-connected piece, if big enough.

    Pieces an owner lost contact with (cut off by a neighbour or the border) and pieces smaller
    than ``min_area`` are dropped. New labels follow the owners' order; the second result holds
    the owner of label i at index i - 1 (ascending).
    """
    pieces = connected_components(owner, background=0, connectivity=1)
    n_pieces = int(pieces.max())
    if not n_pieces:
        return np.zeros(owner.shape, dtype=np.int32), np.zeros(0, dtype=np.int64)
    piece_owner = np.zeros(n_pieces + 1, dtype=np.int64)
    piece_owner[pieces.ravel()] = owner.ravel()
    piece_size = np.bincount(pieces.ravel(), minlength=n_pieces + 1)
    piece_size[0] = 0
    order = np.lexsort((piece_size, piece_owner))
    last = np.ones(order.size, dtype=bool)
    last[:-1] = piece_owner[order][1:] != piece_owner[order][:-1]
    keep = np.zeros(n_pieces + 1, dtype=bool)
    keep[order[last]] = True
    keep &= piece_size >= min_area
    keep[0] = False
    kept_owner = piece_owner[keep]
    relabel = np.zeros(n_pieces + 1, dtype=np.int32)
    rank = np.argsort(np.argsort(kept_owner, kind="stable"), kind="stable")
    relabel[np.flatnonzero(keep)] = rank.astype(np.int32) + 1
    return relabel[pieces], np.sort(kept_owner)


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], sigma: float
) -> NDArray[np.float32]:
    """Gaussian-filtered white noise rescaled to unit standard deviation.

    Wide filters run on a coarser grid and are interpolated back up: same look, far less time.
    """
    step = max(1, int(sigma // 3))
    coarse_shape = (shape[0] // step + 2, shape[1] // step + 2)
    field = ndi.gaussian_filter(rng.standard_normal(coarse_shape, dtype=np.float32), sigma / step)
    if step > 1:
        field = ndi.zoom(field, step, order=1)[: shape[0], : shape[1]]
    else:
        field = field[: shape[0], : shape[1]]
    std = float(field.std())
    return field / std if std > 0 else field


def illumination(rng: np.random.Generator, height: int, width: int) -> NDArray[np.float32]:
    """Uneven illumination: an off-centre vignette and a tilt, 1 at best, never below 0.2."""
    yy = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    xx = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    centre_y, centre_x = rng.uniform(-0.5, 0.5, 2)
    vignette = 1.0 - rng.uniform(0.0, 0.45) * ((yy - centre_y) ** 2 + (xx - centre_x) ** 2) / 2
    tilt = rng.uniform(-0.15, 0.15, 2)
    return np.clip(vignette + tilt[0] * yy + tilt[1] * xx, 0.2, None)


def camera(
    rng: np.random.Generator, signal: NDArray[np.float32], blur: float, photons: float
) -> NDArray[np.float32]:
    """Fluorescence: illumination, background, PSF and sensor; signal (about 1 per object) to
    camera counts."""
    height, width = signal.shape
    light = illumination(rng, height, width)
    background = rng.uniform(0.0, 0.12) + rng.uniform(0.0, 0.04) * smooth_noise(
        rng, (height, width), rng.uniform(15.0, 40.0)
    )
    optics = ndi.gaussian_filter(signal, blur)
    if rng.random() < 0.4:
        # Focus drifting across the field (tilted slide, field curvature): blend in a softer
        # image where a smooth random weight says so.
        soft = ndi.gaussian_filter(signal, blur * rng.uniform(1.8, 3.0))
        weight = np.clip(0.5 + 0.5 * smooth_noise(rng, (height, width), 40.0), 0.0, 1.0)
        weight *= rng.uniform(0.3, 1.0)
        optics += weight * (soft - optics)
    if rng.random() < 0.5:
        # Out-of-focus glow: a faint, wide halo of light around bright objects.
        optics += rng.uniform(0.02, 0.15) * ndi.gaussian_filter(signal, rng.uniform(4.0, 8.0))
    scene = optics + np.clip(background, 0.0, None)
    return sensor(rng, np.clip(scene * light * photons, 0.0, None))


def sensor(rng: np.random.Generator, expected: NDArray[np.float32]) -> NDArray[np.float32]:
    """Expected photons per pixel to counts: shot noise, gain, offset, read noise, and
    sometimes an 8-bit export."""
    counts = rng.poisson(expected).astype(np.float32)
    gain = rng.uniform(0.5, 4.0)
    offset = rng.choice([0.0, 100.0, rng.uniform(0.0, 500.0)])
    image = counts * gain + offset + rng.normal(0.0, rng.uniform(0.5, 6.0), expected.shape)
    image = np.clip(image, 0.0, None).astype(np.float32)
    if rng.random() < 0.25:
        # An 8-bit export (as in many public data sets): rescaled, maybe saturated, quantised,
        # often using only part of the 0..255 range.
        top = np.percentile(image, rng.uniform(99.0, 100.0))
        lo = float(image.min())
        levels = float(rng.choice([255.0, rng.uniform(30.0, 255.0)]))
        image = np.rint(np.clip((image - lo) / max(top - lo, 1e-6), 0.0, 1.0) * levels)
    return image.astype(np.float32)
