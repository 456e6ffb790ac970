"""Procedural fluorescence images of nuclei with exact instance labels.

Why: the bundled nuclear model is trained, tuned and evaluated on images whose ground truth is
known to the pixel, and sample data and tests need realistic images without shipping a data set.
Everything is drawn at the nuclear model's pixel size (``MODEL_MPP`` = 0.65 um/px), where nuclei
are about 8-28 um (12-44 px) across.

What an image contains (each property drawn per image from the seed unless given):

- nuclei as perturbed ellipses (random low-order radial harmonics), varied size and elongation,
  placed at a chosen density, partly in clumps where neighbours touch (a touching pair gets the
  boundary where both shapes are equally "deep", so labels stay distinct and each label is one
  4-connected piece);
- brightness varying per nucleus (log-normal), dim cells, a flat or domed profile, optional
  brighter rims, chromatin-like texture, bright chromocentres and dark nucleoli;
- dividing cells (pairs of small, bright, close daughter nuclei), mitotic plates (bright,
  condensed, elongated) and small apoptotic bodies;
- uneven illumination (vignetting, a gradient), background offset and smooth haze;
- a Gaussian PSF, sometimes focus drifting across the field and an out-of-focus glow;
- Poisson shot noise, Gaussian read noise, camera offset, sometimes saturation and 8-bit
  quantisation with only part of the range used.

Only numpy, scipy and scikit-image: no TensorFlow (the kiosk core never imports it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from skimage.measure import label as connected_components

__all__ = ["MODEL_MPP", "generate"]

MODEL_MPP = 0.65
"""Microns per pixel of the generated images (the original nuclear model's ``model_mpp``)."""

_MIN_AREA = 8
"""Objects smaller than this many pixels (slivers cut by the border) are dropped from labels."""

_KIND_NORMAL, _KIND_DIVIDING, _KIND_MITOTIC, _KIND_APOPTOTIC = 0, 1, 2, 3


@dataclass
class _Nucleus:
    """One nucleus to draw: geometry in pixels, appearance relative to the image's typical one."""

    cy: float
    cx: float
    a: float  # semi-major axis (px)
    b: float  # semi-minor axis (px)
    angle: float
    harmonics: NDArray[np.float64]  # rows: (order, amplitude, phase)
    kind: int = _KIND_NORMAL

    @property
    def radius(self) -> float:
        return float(np.sqrt(self.a * self.b))


def generate(
    shape: tuple[int, int] = (256, 256),
    *,
    seed: int | np.random.Generator,
    coverage: float | None = None,
    mean_diameter: float | None = None,
    clumping: float | None = None,
    dividing_fraction: float | None = None,
    dim_fraction: float | None = None,
    blur: float | None = None,
    photons: float | None = None,
    dtype: str = "float32",
) -> tuple[NDArray[np.float32] | NDArray[np.uint16], NDArray[np.int32]]:
    """Draw one fluorescence nuclei image and its instance labels.

    Args:
        shape: (height, width) in pixels at ``MODEL_MPP``.
        seed: an integer (same seed, same image) or a numpy Generator.
        coverage: target fraction of the area covered by nuclei (about 0.02-0.6).
        mean_diameter: typical nucleus diameter in pixels for this image (12-44 is realistic).
        clumping: probability (0-1) that a nucleus is placed touching an existing one.
        dividing_fraction: fraction of nuclei drawn as dividing pairs or mitotic plates.
        dim_fraction: fraction of nuclei drawn 2.5-5x dimmer than the rest.
        blur: Gaussian PSF sigma in pixels.
        photons: photons collected at a typical nucleus' brightest pixels (sets the SNR).
        dtype: "float32" (camera counts as floats) or "uint16" (rounded, clipped).

    Returns:
        ``(image, labels)``: image of ``shape`` in camera counts, labels int32 with 0 for
        background and 1..N for the nuclei (each one 4-connected piece, at least 8 pixels).
    """
    if dtype not in ("float32", "uint16"):
        raise ValueError(f"dtype must be 'float32' or 'uint16', not {dtype!r}")
    height, width = int(shape[0]), int(shape[1])
    if height < 8 or width < 8:
        raise ValueError(f"shape must be at least 8x8 pixels, got {shape}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    if coverage is None:
        coverage = float(rng.choice([rng.uniform(0.02, 0.15), rng.uniform(0.15, 0.55)]))
    if mean_diameter is None:
        mean_diameter = float(np.exp(rng.uniform(np.log(12.0), np.log(44.0))))
    if clumping is None:
        clumping = float(rng.uniform(0.0, 0.8))
    if dividing_fraction is None:
        dividing_fraction = float(rng.uniform(0.0, 0.12))
    if dim_fraction is None:
        dim_fraction = float(rng.uniform(0.0, 0.15))
    if blur is None:
        blur = float(rng.uniform(0.6, 2.0))
    if photons is None:
        photons = float(np.exp(rng.uniform(np.log(12.0), np.log(3000.0))))

    nuclei = _place_nuclei(
        rng, height, width, coverage, mean_diameter / 2, clumping, dividing_fraction
    )
    labels, depth = _rasterise(nuclei, height, width)
    signal = _render_nuclei(rng, labels, depth, nuclei, dim_fraction)
    image = _camera(rng, signal, blur, photons)
    if dtype == "uint16":
        return np.clip(np.rint(image), 0, 65535).astype(np.uint16), labels
    return image, labels


def _random_shape(
    rng: np.random.Generator, radius: float, aspect: float, irregularity: float
) -> tuple[float, float, float, NDArray[np.float64]]:
    """Semi-axes, orientation and radial harmonics of one perturbed ellipse of mean radius."""
    a = radius * np.sqrt(aspect)
    b = radius / np.sqrt(aspect)
    orders = np.arange(2, 6, dtype=np.float64)
    amplitudes = rng.normal(0.0, irregularity, orders.size) / orders
    phases = rng.uniform(0.0, 2 * np.pi, orders.size)
    return a, b, float(rng.uniform(0, np.pi)), np.stack([orders, amplitudes, phases], axis=1)


def _place_nuclei(
    rng: np.random.Generator,
    height: int,
    width: int,
    coverage: float,
    mean_radius: float,
    clumping: float,
    dividing_fraction: float,
) -> list[_Nucleus]:
    """Choose positions and shapes: uniform scatter, clumps and dividing pairs, limited overlap."""
    target = round(coverage * height * width / (np.pi * mean_radius**2))
    target = max(target, 1 if rng.random() < 0.95 else 0)
    packing = rng.uniform(0.72, 0.88)  # minimum centre distance / sum of radii
    size_spread = rng.uniform(0.08, 0.25)
    aspect_scale = rng.uniform(0.1, 0.5)
    irregularity = rng.uniform(0.02, 0.12)
    margin = 0.3 * mean_radius

    centres = np.empty((0, 2))
    radii = np.empty(0)
    nuclei: list[_Nucleus] = []

    def fits(cy: float, cx: float, radius: float, packing_now: float) -> bool:
        if not (-margin <= cy <= height + margin and -margin <= cx <= width + margin):
            return False
        if radii.size == 0:
            return True
        dist = np.hypot(centres[:, 0] - cy, centres[:, 1] - cx)
        return bool(np.all(dist >= packing_now * (radii + radius)))

    def add(nucleus: _Nucleus) -> None:
        nonlocal centres, radii
        nuclei.append(nucleus)
        centres = np.vstack([centres, [nucleus.cy, nucleus.cx]])
        radii = np.append(radii, nucleus.radius)

    attempts = 0
    while len(nuclei) < target and attempts < 20 * target + 50:
        attempts += 1
        roll = rng.random()
        if roll < dividing_fraction * 0.6:
            # Telophase: two small bright daughters, a small gap apart along the division axis.
            r = mean_radius * rng.uniform(0.5, 0.7)
            axis = rng.uniform(0, np.pi)
            gap = rng.uniform(0.5, 5.0)
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            offset = (r + gap / 2) * np.array([np.sin(axis), np.cos(axis)])
            pair = []
            for sign in (-1, 1):
                a, b, _, harm = _random_shape(rng, r, rng.uniform(1.1, 1.6), irregularity)
                # Daughters are flattened along the division axis.
                pair.append(
                    _Nucleus(
                        cy + sign * offset[0],
                        cx + sign * offset[1],
                        a,
                        b,
                        axis + np.pi / 2,
                        harm,
                        _KIND_DIVIDING,
                    )
                )
            if all(fits(n.cy, n.cx, n.radius, 1.0) for n in pair):
                for n in pair:
                    add(n)
            continue
        if roll < dividing_fraction:
            kind = _KIND_MITOTIC if rng.random() < 0.7 else _KIND_APOPTOTIC
            if kind == _KIND_MITOTIC:
                r = mean_radius * rng.uniform(0.45, 0.65)
                a, b, angle, harm = _random_shape(rng, r, rng.uniform(2.0, 4.0), irregularity * 2)
            else:
                r = rng.uniform(2.2, 3.8)
                a, b, angle, harm = _random_shape(rng, r, rng.uniform(1.0, 1.3), 0.02)
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            if fits(cy, cx, r, 1.0):
                add(_Nucleus(cy, cx, a, b, angle, harm, kind))
            continue
        r = mean_radius * float(np.exp(rng.normal(0.0, size_spread)))
        r = float(np.clip(r, 0.55 * mean_radius, 1.8 * mean_radius))
        aspect = 1.0 + abs(rng.normal(0.0, aspect_scale))
        a, b, angle, harm = _random_shape(rng, r, min(aspect, 2.5), irregularity)
        normal = [n for n in nuclei if n.kind == _KIND_NORMAL]
        if normal and rng.random() < clumping:
            anchor = normal[rng.integers(len(normal))]
            direction = rng.uniform(0, 2 * np.pi)
            dist = (anchor.radius + r) * rng.uniform(packing, 1.0)
            cy = anchor.cy + dist * np.sin(direction)
            cx = anchor.cx + dist * np.cos(direction)
        else:
            cy = rng.uniform(-margin, height + margin)
            cx = rng.uniform(-margin, width + margin)
        if fits(cy, cx, r, packing):
            add(_Nucleus(cy, cx, a, b, angle, harm))
    return nuclei


def _rasterise(
    nuclei: list[_Nucleus], height: int, width: int
) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """Paint the shapes: labels, and each pixel's depth s = r / R(theta) within its nucleus.

    Where shapes overlap, the pixel goes to the nucleus it is deepest in (smallest s): touching
    nuclei meet along a curve, as nuclei pressed together do. Pieces a label lost contact with
    and slivers cut by the border are dropped, then labels are renumbered 1..N.
    """
    owner = np.zeros((height, width), dtype=np.int32)
    depth = np.full((height, width), np.inf, dtype=np.float32)
    for index, n in enumerate(nuclei, start=1):
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

    pieces = connected_components(owner, background=0, connectivity=1)
    n_pieces = int(pieces.max())
    if n_pieces:
        piece_owner = np.zeros(n_pieces + 1, dtype=np.int64)
        piece_owner[pieces.ravel()] = owner.ravel()
        piece_size = np.bincount(pieces.ravel(), minlength=n_pieces + 1)
        piece_size[0] = 0
        # Keep each label's largest piece if it is big enough; drop the rest.
        order = np.lexsort((piece_size, piece_owner))
        last = np.ones(order.size, dtype=bool)
        last[:-1] = piece_owner[order][1:] != piece_owner[order][:-1]
        keep = np.zeros(n_pieces + 1, dtype=bool)
        keep[order[last]] = True
        keep &= piece_size >= _MIN_AREA
        keep[0] = False
        kept_owner = piece_owner[keep]
        relabel = np.zeros(n_pieces + 1, dtype=np.int32)
        # New label numbers follow placement order of the kept nuclei.
        rank = np.argsort(np.argsort(kept_owner, kind="stable"), kind="stable")
        relabel[np.flatnonzero(keep)] = rank.astype(np.int32) + 1
        labels = relabel[pieces]
    else:
        labels = np.zeros((height, width), dtype=np.int32)
    depth[labels == 0] = np.inf
    # Keep only the nuclei that survived, in label order, for rendering.
    if n_pieces:
        survivors = [nuclei[o - 1] for o in np.sort(kept_owner)]
        nuclei[:] = survivors
    else:
        nuclei.clear()
    return labels, depth


def _smooth_noise(
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


@dataclass(frozen=True)
class _Appearance:
    """Per-nucleus look, one entry per label (label i at index i - 1)."""

    brightness: NDArray[np.float64]
    dome: NDArray[np.float64]  # exponent of the (1 - s^2) profile: 0 flat, larger domed
    rim: NDArray[np.float64]  # brightness of a rim just inside the edge
    texture: NDArray[np.float64]  # strength of the chromatin-like texture


def _render_nuclei(
    rng: np.random.Generator,
    labels: NDArray[np.int32],
    depth: NDArray[np.float32],
    nuclei: list[_Nucleus],
    dim_fraction: float,
) -> NDArray[np.float32]:
    """Fluorophore density of every pixel (typical nucleus about 1), before optics and noise."""
    if not nuclei:
        return np.zeros(labels.shape, dtype=np.float32)
    kinds = np.array([n.kind for n in nuclei])
    return _paint(rng, labels, depth, _appearance(rng, kinds, dim_fraction))


def _appearance(
    rng: np.random.Generator, kinds: NDArray[np.int_], dim_fraction: float
) -> _Appearance:
    """Draw each nucleus' brightness, profile, rim and texture strength from its kind."""
    count = kinds.size
    # Per-nucleus appearance, index 0 is the background.
    brightness = np.exp(rng.normal(0.0, rng.uniform(0.1, 0.4), count))
    brightness[rng.random(count) < dim_fraction] *= rng.uniform(0.2, 0.4)
    brightness[kinds == _KIND_DIVIDING] *= rng.uniform(1.3, 2.2)
    brightness[kinds == _KIND_MITOTIC] *= rng.uniform(1.6, 3.0)
    brightness[kinds == _KIND_APOPTOTIC] *= rng.uniform(1.8, 3.5)
    dome = rng.uniform(0.05, 0.5, count)
    dome[kinds != _KIND_NORMAL] = 0.08
    rim = np.where(rng.random(count) < rng.uniform(0, 0.6), rng.uniform(0.1, 0.6, count), 0.0)
    texture = rng.uniform(0.03, 0.3) * np.exp(rng.normal(0, 0.3, count))
    texture[kinds == _KIND_MITOTIC] = 0.5
    return _Appearance(brightness, dome, rim, texture)


def _paint(
    rng: np.random.Generator,
    labels: NDArray[np.int32],
    depth: NDArray[np.float32],
    look: _Appearance,
) -> NDArray[np.float32]:
    """Fluorophore density from labels, depth and each nucleus' look; texture drawn fresh."""
    shape = labels.shape
    brightness, dome, rim, texture = look.brightness, look.dome, look.rim, look.texture
    lut = lambda values: np.concatenate([[0.0], values]).astype(np.float32)  # noqa: E731
    fg = labels > 0
    s = np.where(fg, depth, 1.0)
    profile = np.power(np.clip(1.0 - s * s, 0.0, 1.0), lut(dome)[labels])
    profile += lut(rim)[labels] * np.exp(-(((1.0 - s) / 0.18) ** 2))

    fine = _smooth_noise(rng, shape, rng.uniform(0.7, 1.3))
    coarse = _smooth_noise(rng, shape, rng.uniform(2.0, 3.5))
    mix = rng.uniform(0.3, 0.8)
    chromatin = 1.0 + lut(texture)[labels] * (mix * fine + (1 - mix) * coarse)

    # Chromocentres (bright) and nucleoli (dark): sparse impulses inside nuclei, then smoothed.
    fg_index = np.flatnonzero(fg)
    spots = np.zeros(shape, dtype=np.float32)
    n_bright = rng.poisson(fg_index.size * rng.uniform(0.0, 0.02))
    n_dark = rng.poisson(fg_index.size * rng.uniform(0.0, 0.006))
    if n_bright:
        sigma = rng.uniform(0.8, 1.5)
        impulses = np.zeros(shape, dtype=np.float32)
        impulses.flat[rng.choice(fg_index, n_bright)] = rng.uniform(0.3, 1.0, n_bright)
        spots += ndi.gaussian_filter(impulses, sigma) * (2 * np.pi * sigma**2)
    if n_dark:
        sigma = rng.uniform(1.5, 2.5)
        impulses = np.zeros(shape, dtype=np.float32)
        impulses.flat[rng.choice(fg_index, n_dark)] = rng.uniform(0.2, 0.5, n_dark)
        spots -= ndi.gaussian_filter(impulses, sigma) * (2 * np.pi * sigma**2)

    signal = profile * np.maximum(chromatin + spots, 0.05) * lut(brightness)[labels]
    signal[~fg] = 0.0
    return signal.astype(np.float32)


def _illumination(rng: np.random.Generator, height: int, width: int) -> NDArray[np.float32]:
    """Uneven illumination: an off-centre vignette and a tilt, 1 at best, never below 0.2."""
    yy = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    xx = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    centre_y, centre_x = rng.uniform(-0.5, 0.5, 2)
    vignette = 1.0 - rng.uniform(0.0, 0.45) * ((yy - centre_y) ** 2 + (xx - centre_x) ** 2) / 2
    tilt = rng.uniform(-0.15, 0.15, 2)
    return np.clip(vignette + tilt[0] * yy + tilt[1] * xx, 0.2, None)


def _camera(
    rng: np.random.Generator, signal: NDArray[np.float32], blur: float, photons: float
) -> NDArray[np.float32]:
    """Illumination, background, PSF and camera: signal (about 1 per nucleus) to counts."""
    height, width = signal.shape
    illumination = _illumination(rng, height, width)
    background = rng.uniform(0.0, 0.12) + rng.uniform(0.0, 0.04) * _smooth_noise(
        rng, (height, width), rng.uniform(15.0, 40.0)
    )
    optics = ndi.gaussian_filter(signal, blur)
    if rng.random() < 0.4:
        # Focus drifting across the field (tilted slide, field curvature): blend in a softer
        # image where a smooth random weight says so.
        soft = ndi.gaussian_filter(signal, blur * rng.uniform(1.8, 3.0))
        weight = np.clip(0.5 + 0.5 * _smooth_noise(rng, (height, width), 40.0), 0.0, 1.0)
        weight *= rng.uniform(0.3, 1.0)
        optics += weight * (soft - optics)
    if rng.random() < 0.5:
        # Out-of-focus glow: a faint, wide halo of light around bright nuclei.
        optics += rng.uniform(0.02, 0.15) * ndi.gaussian_filter(signal, rng.uniform(4.0, 8.0))
    scene = optics + np.clip(background, 0.0, None)
    expected = np.clip(scene * illumination * photons, 0.0, None)

    counts = rng.poisson(expected).astype(np.float32)
    gain = rng.uniform(0.5, 4.0)
    offset = rng.choice([0.0, 100.0, rng.uniform(0.0, 500.0)])
    image = counts * gain + offset + rng.normal(0.0, rng.uniform(0.5, 6.0), signal.shape)
    image = np.clip(image, 0.0, None).astype(np.float32)
    if rng.random() < 0.25:
        # An 8-bit export (as in many public data sets): rescaled, maybe saturated, quantised,
        # often using only part of the 0..255 range.
        top = np.percentile(image, rng.uniform(99.0, 100.0))
        lo = float(image.min())
        levels = float(rng.choice([255.0, rng.uniform(30.0, 255.0)]))
        image = np.rint(np.clip((image - lo) / max(top - lo, 1e-6), 0.0, 1.0) * levels)
    return image.astype(np.float32)
