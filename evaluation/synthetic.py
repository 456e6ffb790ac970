"""Procedural fluorescence images of nuclei with exact instance labels.

Why: the bundled nuclear model is trained, tuned and evaluated on images whose ground truth is
known to the pixel, and sample data and tests need realistic images without shipping a data set.
Everything is drawn at the nuclear model's pixel size (``MODEL_MPP`` = 0.65 um/px), where nuclei
are about 8-28 um (12-44 px) across.

What an image contains (each property drawn per image from the seed unless given):

- nuclei as perturbed ellipses (random low-order radial harmonics), varied size and elongation
  (about a third of the images hold elongated nuclei, axis ratios up to 4),
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

from evaluation.drawing import (
    camera,
    keep_largest_pieces,
    paint_depth,
    random_shape,
    smooth_noise,
)

__all__ = ["MODEL_MPP", "generate"]

MODEL_MPP = 0.65
"""Microns per pixel of the generated images (the original nuclear model's ``model_mpp``)."""

_MIN_AREA = 8
"""Objects smaller than this many pixels (slivers cut by the border) are dropped from labels."""

_MAX_ASPECT = 4.0
"""Longest-to-shortest axis ratio of a drawn interphase nucleus."""

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
    image = camera(rng, signal, blur, photons)
    if dtype == "uint16":
        return np.clip(np.rint(image), 0, 65535).astype(np.uint16), labels
    return image, labels


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
    # Most images hold roundish nuclei; about a third hold elongated ones (axis ratios of 2-4,
    # as in many real preparations), which a model trained on round ones tends to split in two.
    elongated = rng.random() < 0.35
    aspect_scale = rng.uniform(0.6, 1.4) if elongated else rng.uniform(0.1, 0.5)
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
                a, b, _, harm = random_shape(rng, r, rng.uniform(1.1, 1.6), irregularity)
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
                a, b, angle, harm = random_shape(rng, r, rng.uniform(2.0, 4.0), irregularity * 2)
            else:
                r = rng.uniform(2.2, 3.8)
                a, b, angle, harm = random_shape(rng, r, rng.uniform(1.0, 1.3), 0.02)
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            if fits(cy, cx, r, 1.0):
                add(_Nucleus(cy, cx, a, b, angle, harm, kind))
            continue
        r = mean_radius * float(np.exp(rng.normal(0.0, size_spread)))
        r = float(np.clip(r, 0.55 * mean_radius, 1.8 * mean_radius))
        aspect = 1.0 + abs(rng.normal(0.0, aspect_scale))
        a, b, angle, harm = random_shape(rng, r, min(aspect, _MAX_ASPECT), irregularity)
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
    owner, depth = paint_depth(nuclei, height, width)
    labels, kept_owner = keep_largest_pieces(owner, _MIN_AREA)
    depth[labels == 0] = np.inf
    # Keep only the nuclei that survived, in label order, for rendering.
    nuclei[:] = [nuclei[o - 1] for o in kept_owner]
    return labels, depth


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

    fine = smooth_noise(rng, shape, rng.uniform(0.7, 1.3))
    coarse = smooth_noise(rng, shape, rng.uniform(2.0, 3.5))
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
