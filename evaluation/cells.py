"""Procedural images of whole cells, each with its nucleus, in four channels with exact labels.

Why: whole-cell models (two channels, nuclear + membrane or cytoplasm, like Mesmer; or one
cytoplasm channel, fluorescent or brightfield) are trained and scored on images whose cells and
nuclei are known to the pixel, without shipping a data set. Drawn at the nuclear model's pixel
size (``MODEL_MPP`` = 0.65 um/px) with the nuclei generator's shapes, nuclear rendering, optics
and camera (``evaluation.drawing``, ``evaluation.synthetic``).

What an image contains (each property drawn per image from the seed unless given, see
``CellParams``):

- ``culture``: adherent cells 22-50 um across, sparse or dense, scattered or grown into touching
  clusters, elongated and irregular (lobes, protrusions), some spread (large, flat, very
  irregular) and some rounded (small, thick, bright; half of them with a condensed mitotic
  nucleus);
- ``tissue``: packed polygonal cells 10-22 um across of varied sizes, with gaps (lumen, stroma)
  where the tissue is not;
- every cell has a nucleus inside it, off-centre at random; touching cells meet along the curve
  where both shapes are equally deep (a seeded watershed from the nuclei, so each cell is one
  piece around its nucleus);
- four channels: ``nuclear`` (the nuclei generator's look: dome, rims, chromatin, nucleoli),
  ``membrane`` (a patchy bright band at every cell's edge, so doubled where cells touch, over
  a faint cytoplasm), ``cytoplasm`` (bright where the cell is thick, thinning to its edge,
  mottled, the nucleus excluded more or less) and ``brightfield`` (a phase-like transmission
  image: a dim interior, a bright (phase halo) or dark (defocus) band at the edge, a faint
  nucleus and granules, low contrast, strong uneven illumination);
- dim and bright cells, spectral bleed-through between the fluorescent channels, debris (small
  bright specks in fluorescence, dark in brightfield, never labelled);
- the nuclei generator's optics and camera for each fluorescent channel (uneven illumination,
  PSF, focus drift, glow, shot and read noise, sometimes an 8-bit export).

Ground truth: ``cells`` holds labels 1..N, each one 4-connected piece of at least
``MIN_CELL_AREA`` pixels; ``nuclei`` holds the nucleus of cell k as label k (inside cell k, one
piece of at least ``MIN_NUCLEUS_AREA`` pixels). A cell cut by the image edge may show no nucleus,
as in real images. Labels and channels are drawn from the same final labels: what is labelled is
what is drawn, in every channel.

Only numpy, scipy and scikit-image: no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries, watershed

from evaluation.drawing import (
    camera,
    illumination,
    keep_largest_pieces,
    paint_depth,
    random_shape,
    sensor,
    smooth_noise,
)
from evaluation.synthetic import (
    _KIND_MITOTIC,
    _KIND_NORMAL,
    MODEL_MPP,
    _appearance,
    _paint,
)

__all__ = [
    "CHANNELS",
    "MIN_CELL_AREA",
    "MIN_NUCLEUS_AREA",
    "MODEL_MPP",
    "SETTINGS",
    "CellImage",
    "CellParams",
    "generate_cells",
]

CHANNELS = ("nuclear", "membrane", "cytoplasm", "brightfield")
"""The rendered channels, in the order ``CellImage.stack`` gives them by default."""

SETTINGS = ("culture", "tissue")

MIN_CELL_AREA = 30
"""Cells with fewer visible pixels (slivers cut by the border) are neither labelled nor drawn."""

MIN_NUCLEUS_AREA = 8
"""Nuclei with fewer visible pixels are neither labelled nor drawn (as in the nuclei generator)."""

_NORMAL, _SPREAD, _ROUNDED, _TISSUE = 0, 1, 2, 3


@dataclass(frozen=True)
class CellParams:
    """What an image looks like; every field can be passed to ``generate_cells`` to fix it.

    Lengths are in pixels at 0.65 um/px. Fields not given are drawn per image from the seed (the
    ranges follow the setting, which is drawn first).
    """

    setting: str = "culture"
    """``culture`` (cells on a dish) or ``tissue`` (packed cells in a section)."""
    coverage: float = 0.3
    """Culture: fraction of the field covered by cells. Tissue: fraction that is tissue."""
    cell_diameter: float = 46.0
    """Typical cell diameter (culture 34-76 px, tissue 16-34 px)."""
    nucleus_ratio: float = 0.4
    """Typical nucleus diameter / cell diameter."""
    size_spread: float = 0.2
    """Cell-to-cell spread of sizes (sd of the log diameter)."""
    clustering: float = 0.5
    """Culture: chance a cell is placed touching an existing one (clusters, colonies)."""
    spread_fraction: float = 0.15
    """Culture: fraction of spread cells (large, flat, very irregular)."""
    rounded_fraction: float = 0.1
    """Culture: fraction of rounded cells (small, thick, bright, strong halo)."""
    irregularity: float = 0.15
    """Outline irregularity (amplitude of the radial harmonics)."""
    dim_fraction: float = 0.08
    """Fraction of cells drawn 2.5-5x dimmer in the fluorescent channels."""
    bright_fraction: float = 0.05
    """Fraction of cells drawn 2-4x brighter in the fluorescent channels."""
    blur: float = 1.2
    """Gaussian PSF sigma in pixels."""
    photons: float = 300.0
    """Photons at a typical cell's brightest fluorescent pixels (sets the SNR)."""
    brightfield_photons: float = 1500.0
    """Photons per background pixel of the brightfield channel."""
    contrast: float = 0.06
    """Brightfield: how much light a cell's thickest part takes away (dim interior)."""
    halo: float = 0.15
    """Brightfield: edge band strength, positive a bright (phase) halo, negative a dark edge."""
    bleed_through: float = 0.05
    """Largest fraction of one fluorescent channel's signal seen in another."""
    debris: float = 1.0
    """Debris particles per 10,000 pixels of background."""

    def __post_init__(self) -> None:
        if self.setting not in SETTINGS:
            raise ValueError(f"setting must be one of {', '.join(SETTINGS)}, not {self.setting!r}")
        if not 0 < self.coverage <= 1:
            raise ValueError(f"coverage must be in (0, 1], got {self.coverage!r}")
        if not 8 <= self.cell_diameter <= 200:
            raise ValueError(f"cell_diameter must be 8-200 px, got {self.cell_diameter!r}")
        if not 0.15 <= self.nucleus_ratio <= 0.8:
            raise ValueError(f"nucleus_ratio must be 0.15-0.8, got {self.nucleus_ratio!r}")
        for name in (
            "clustering",
            "spread_fraction",
            "rounded_fraction",
            "dim_fraction",
            "bright_fraction",
        ):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.spread_fraction + self.rounded_fraction > 1:
            raise ValueError("spread_fraction + rounded_fraction must be at most 1")
        for name in ("size_spread", "irregularity", "debris"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be zero or more, got {getattr(self, name)!r}")
        for name in ("blur", "photons", "brightfield_photons"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not 0 <= self.contrast < 1:
            raise ValueError(f"contrast must be in [0, 1), got {self.contrast!r}")
        if not -1 <= self.halo <= 1:
            raise ValueError(f"halo must be in [-1, 1], got {self.halo!r}")
        if not 0 <= self.bleed_through < 1:
            raise ValueError(f"bleed_through must be in [0, 1), got {self.bleed_through!r}")


@dataclass(frozen=True)
class CellImage:
    """A generated image: four channels (camera counts, float32) and exact labels."""

    nuclear: NDArray[np.float32]
    membrane: NDArray[np.float32]
    cytoplasm: NDArray[np.float32]
    brightfield: NDArray[np.float32]
    cells: NDArray[np.int32]
    """Whole-cell labels 1..N, 0 background."""
    nuclei: NDArray[np.int32]
    """Nuclear labels: the nucleus of cell k is k (a cell cut by the edge may have none)."""
    debris: NDArray[np.bool_]
    """Where debris was drawn (never part of a label)."""
    mpp: float
    """Microns per pixel."""
    params: CellParams
    """The parameters it was drawn with."""

    def stack(self, channels: tuple[str, ...] = CHANNELS) -> NDArray[np.float32]:
        """The named channels as one (Y, X, C) array, in the order named (a model's input)."""
        unknown = [c for c in channels if c not in CHANNELS]
        if unknown or not channels:
            raise ValueError(
                f"channels must name some of {', '.join(CHANNELS)}; got {', '.join(channels)}"
            )
        return np.stack([getattr(self, c) for c in channels], axis=-1)


@dataclass
class _Outline:
    cy: float
    cx: float
    a: float
    b: float
    angle: float
    harmonics: NDArray[np.float64]

    @property
    def radius(self) -> float:
        return float(np.sqrt(self.a * self.b))


def generate_cells(
    shape: tuple[int, int] = (256, 256),
    *,
    seed: int | np.random.Generator,
    **overrides: float | str,
) -> CellImage:
    """Draw one image of cells with nuclei in four channels, and its whole-cell and nuclear labels.

    Args:
        shape: (height, width) in pixels at ``MODEL_MPP``.
        seed: an integer (same seed and overrides, same image) or a numpy Generator.
        overrides: ``CellParams`` fields to fix instead of drawing (setting, coverage, ...).
    """
    names = {f.name for f in fields(CellParams)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(
            f"unknown cell parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    height, width = int(shape[0]), int(shape[1])
    if height < 32 or width < 32:
        raise ValueError(f"shape must be at least 32x32 pixels, got {shape}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    setting = overrides.get("setting")
    if setting is None:
        setting = "culture" if rng.random() < 0.65 else "tissue"
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)}, not {setting!r}")
    params = replace(_draw_params(rng, str(setting)), **overrides)  # type: ignore[arg-type]

    # Cells are placed and labelled on a canvas larger than the image, so that cells whose
    # centre lies outside still reach in across the edge, as they do under a microscope.
    pad = int(min(np.ceil(0.6 * params.cell_diameter), 48))
    canvas = (height + 2 * pad, width + 2 * pad)
    if params.setting == "tissue":
        bodies, nuclei, kinds = _place_tissue(rng, params, canvas)
    else:
        bodies, nuclei, kinds = _place_culture(rng, params, canvas)
    inner = (slice(pad, pad + height), slice(pad, pad + width))
    cells, nuclei_labels, nuclear_depth, cell_kinds = _labels(bodies, nuclei, kinds, canvas, inner)
    # Rounded cells are half of the time in mitosis: a condensed, bright nucleus.
    nucleus_cells = np.unique(nuclei_labels[nuclei_labels > 0])
    mitotic = (cell_kinds[nucleus_cells] == _ROUNDED) & (rng.random(nucleus_cells.size) < 0.5)
    nuclear_kinds = np.where(mitotic, _KIND_MITOTIC, _KIND_NORMAL)

    geometry = _Geometry.of(cells, nuclei_labels)
    nuclear = _render_nuclear(rng, params, nuclei_labels, nuclear_depth, nuclear_kinds)
    cytoplasm = _render_cytoplasm(rng, params, cells, geometry, cell_kinds)
    membrane = _render_membrane(rng, params, cells, geometry)
    debris, debris_masks = _debris(rng, params, cells)
    nuclear_signal = nuclear
    nuclear = nuclear + rng.uniform(0, params.bleed_through) * cytoplasm + debris[0]
    membrane = membrane + rng.uniform(0, params.bleed_through) * nuclear_signal + debris[1]
    cytoplasm = cytoplasm + rng.uniform(0, params.bleed_through) * nuclear_signal + debris[2]
    photons = params.photons * np.exp(rng.uniform(-0.5, 0.5, 3))
    brightfield = _render_brightfield(
        rng, params, cells, geometry, cell_kinds, nuclear_signal, debris[3]
    )
    return CellImage(
        nuclear=camera(rng, nuclear, params.blur, float(photons[0])),
        membrane=camera(rng, membrane, params.blur, float(photons[1])),
        cytoplasm=camera(rng, cytoplasm, params.blur, float(photons[2])),
        brightfield=brightfield,
        cells=cells,
        nuclei=nuclei_labels,
        debris=debris_masks,
        mpp=MODEL_MPP,
        params=params,
    )


def _draw_params(rng: np.random.Generator, setting: str) -> CellParams:
    """Every parameter drawn for one image, in a fixed order (overrides replace them after)."""
    log_uniform = lambda lo, hi: float(np.exp(rng.uniform(np.log(lo), np.log(hi))))  # noqa: E731
    culture = setting == "culture"
    if culture:
        sparse = rng.random() < 0.4
        coverage = rng.uniform(0.03, 0.2) if sparse else rng.uniform(0.2, 0.65)
        diameter = log_uniform(34.0, 76.0)
        ratio = rng.uniform(0.35, 0.55)
        irregularity = rng.uniform(0.08, 0.4)
    else:
        coverage = float(min(rng.uniform(0.55, 1.15), 1.0))
        diameter = log_uniform(16.0, 34.0)
        ratio = rng.uniform(0.5, 0.7)
        irregularity = rng.uniform(0.03, 0.12)
    size_spread = rng.uniform(0.1, 0.3)
    clustering = rng.uniform(0.0, 0.9) if culture else 0.0
    spread = rng.uniform(0.0, 0.4) if culture else 0.0
    rounded = rng.uniform(0.0, 0.3) if culture else 0.0
    return CellParams(
        setting=setting,
        coverage=float(coverage),
        cell_diameter=diameter,
        nucleus_ratio=float(ratio),
        size_spread=float(size_spread),
        clustering=float(clustering),
        spread_fraction=float(spread),
        rounded_fraction=float(rounded),
        irregularity=float(irregularity),
        dim_fraction=float(rng.uniform(0.0, 0.15)),
        bright_fraction=float(rng.uniform(0.0, 0.1)),
        blur=float(rng.uniform(0.6, 2.0)),
        photons=log_uniform(20.0, 3000.0),
        brightfield_photons=log_uniform(200.0, 5000.0),
        contrast=float(rng.uniform(0.02, 0.15)),
        halo=float(rng.uniform(0.05, 0.35) * (1.0 if rng.random() < 0.6 else -1.0)),
        bleed_through=float(rng.uniform(0.0, 0.15)),
        debris=float(rng.uniform(0.0, 3.0)),
    )


def _make_cell(
    rng: np.random.Generator,
    params: CellParams,
    cy: float,
    cx: float,
    radius: float,
    nucleus_radius: float,
    kind: int,
) -> tuple[list[_Outline], _Outline]:
    """A cell's outlines (a body of mean ``radius``, in culture maybe protrusions reaching out
    of it) and a nucleus that fits inside the body, off-centre at random."""
    irregularity, orders = params.irregularity, 6
    if kind == _SPREAD:
        aspect, irregularity, orders = 1.0 + abs(rng.normal(0.0, 0.3)), irregularity * 1.8, 8
    elif kind == _ROUNDED:
        aspect, irregularity, orders = 1.0 + abs(rng.normal(0.0, 0.05)), 0.03, 5
    elif kind == _TISSUE:
        aspect, orders = 1.0 + abs(rng.normal(0.0, 0.2)), 5
    else:
        aspect, orders = 1.0 + abs(rng.normal(0.0, 0.45)), 8
    a, b, angle, harmonics = random_shape(rng, radius, min(aspect, 3.0), irregularity, orders)
    body = _Outline(cy, cx, a, b, angle, harmonics)
    nucleus_aspect = min(1.0 + abs(rng.normal(0.0, 0.25)), 1.8)
    na, nb, nangle, nharmonics = random_shape(rng, nucleus_radius, nucleus_aspect, 0.05)
    if aspect > 1.3:
        nangle = angle + rng.normal(0.0, 0.3)  # nuclei of elongated cells lie along them
    # The body holds the disc of radius `inside` about its centre; the nucleus lies within
    # `outside` of its own: shrink it to leave a rim of cytoplasm, then shift it within the room.
    inside = b * max(1.0 - float(np.abs(harmonics[:, 1]).sum()), 0.6)
    outside = na * (1.0 + float(np.abs(nharmonics[:, 1]).sum()))
    room = 0.85 * inside
    if outside > room:
        na, nb, outside = na * room / outside, nb * room / outside, room
    shift = rng.uniform(0.0, 1.0) * (room - outside)
    direction = rng.uniform(0.0, 2 * np.pi)
    nucleus = _Outline(
        cy + shift * np.sin(direction), cx + shift * np.cos(direction), na, nb, nangle, nharmonics
    )
    outlines = [body]
    protrusions = rng.poisson(1.5 if kind == _SPREAD else 0.6) if kind in (_NORMAL, _SPREAD) else 0
    for _ in range(protrusions):
        # A lamellipodium or process: a narrow lobe rooted inside the body, pointing out.
        direction = rng.uniform(0.0, 2 * np.pi)
        reach = radius * rng.uniform(0.7, 1.0)
        pa, pb, _, pharmonics = random_shape(
            rng, radius * rng.uniform(0.3, 0.5), rng.uniform(3.0, 8.0), 0.1, 3
        )
        pcy, pcx = cy + reach * np.sin(direction), cx + reach * np.cos(direction)
        outlines.append(_Outline(pcy, pcx, pa, pb, direction, pharmonics))
    return outlines, nucleus


class _Placed:
    """Cells placed so far, with their radii, for the spacing checks."""

    def __init__(self, capacity: int) -> None:
        self.centres = np.empty((capacity, 2))
        self.radii = np.empty(capacity)
        self.nuclear = np.empty((capacity, 2))
        self.nuclear_radii = np.empty(capacity)
        self.count = 0
        self.bodies: list[_Outline] = []
        self.nuclei: list[_Outline] = []
        self.kinds: list[int] = []

    def clear_of(self, cy: float, cx: float, radius: float, packing: float) -> bool:
        n = self.count
        dist = np.hypot(self.centres[:n, 0] - cy, self.centres[:n, 1] - cx)
        return bool(np.all(dist >= packing * (self.radii[:n] + radius)))

    def nucleus_clear(self, nucleus: _Outline) -> bool:
        n = self.count
        dist = np.hypot(self.nuclear[:n, 0] - nucleus.cy, self.nuclear[:n, 1] - nucleus.cx)
        return bool(np.all(dist >= 1.1 * (self.nuclear_radii[:n] + nucleus.a) + 2.0))

    def add(self, body: list[_Outline], nucleus: _Outline, radius: float, kind: int) -> None:
        if self.count == self.radii.size:
            grow = self.radii.size
            self.centres = np.vstack([self.centres, np.empty((grow, 2))])
            self.nuclear = np.vstack([self.nuclear, np.empty((grow, 2))])
            self.radii = np.concatenate([self.radii, np.empty(grow)])
            self.nuclear_radii = np.concatenate([self.nuclear_radii, np.empty(grow)])
        i = self.count
        self.centres[i] = body[0].cy, body[0].cx
        self.radii[i] = radius
        self.nuclear[i] = nucleus.cy, nucleus.cx
        self.nuclear_radii[i] = nucleus.a
        self.count += 1
        self.bodies.extend(body)
        self.nuclei.append(nucleus)
        self.kinds.append(kind)

    def result(self) -> tuple[list[_Outline], list[_Outline], NDArray[np.int_]]:
        return self.bodies, self.nuclei, np.array(self.kinds, dtype=np.int_)


def _place_culture(
    rng: np.random.Generator, params: CellParams, canvas: tuple[int, int]
) -> tuple[list[_Outline], list[_Outline], NDArray[np.int_]]:
    """Scatter cells, many grown onto existing ones (clusters), bodies overlapping a little."""
    height, width = canvas
    mean_radius = params.cell_diameter / 2
    target = max(1, round(params.coverage * height * width / (np.pi * mean_radius**2)))
    packing = rng.uniform(0.75, 0.95)  # closest body centres / sum of radii
    placed = _Placed(target)
    for _ in range(30 * target + 50):
        if placed.count >= target:
            break
        roll = rng.random()
        kind = (
            _SPREAD
            if roll < params.spread_fraction
            else _ROUNDED
            if roll < params.spread_fraction + params.rounded_fraction
            else _NORMAL
        )
        size = float(np.clip(np.exp(rng.normal(0.0, params.size_spread)), 0.5, 2.0))
        nucleus_radius = mean_radius * params.nucleus_ratio * size ** (1 / 3)
        radius = mean_radius * size
        if kind == _SPREAD:
            radius *= rng.uniform(1.3, 1.8)
        elif kind == _ROUNDED:
            nucleus_radius *= rng.uniform(0.75, 0.95)
            radius = nucleus_radius * rng.uniform(1.2, 1.45)
        if placed.count and rng.random() < params.clustering:
            anchor = int(rng.integers(placed.count))
            direction = rng.uniform(0.0, 2 * np.pi)
            dist = (placed.radii[anchor] + radius) * rng.uniform(packing, 1.0)
            cy = placed.centres[anchor, 0] + dist * np.sin(direction)
            cx = placed.centres[anchor, 1] + dist * np.cos(direction)
        else:
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        if not placed.clear_of(cy, cx, radius, packing):
            continue
        body, nucleus = _make_cell(rng, params, cy, cx, radius, nucleus_radius, kind)
        if placed.nucleus_clear(nucleus):
            placed.add(body, nucleus, radius, kind)
    return placed.result()


def _place_tissue(
    rng: np.random.Generator, params: CellParams, canvas: tuple[int, int]
) -> tuple[list[_Outline], list[_Outline], NDArray[np.int_]]:
    """Pack cells where the tissue is, then swell them so that they fill the space between."""
    height, width = canvas
    mean_radius = params.cell_diameter / 2
    tissue = np.ones(canvas, dtype=bool)
    if params.coverage < 0.98:
        field = smooth_noise(rng, canvas, 2.5 * params.cell_diameter)
        tissue = field > np.quantile(field, 1.0 - params.coverage)
    target = max(1, round(params.coverage * height * width / (np.pi * mean_radius**2)))
    packing = rng.uniform(0.8, 0.95)
    swell = rng.uniform(1.45, 1.7)
    placed = _Placed(target)
    # Candidates come in batches, checked against the cells placed so far all at once (dart
    # throwing one candidate at a time costs more than the rest of the image).
    for _ in range(12):
        if placed.count >= target:
            break
        batch = 4 * target
        spots = rng.uniform(0.0, 1.0, (batch, 2)) * (height, width)
        sizes = np.clip(np.exp(rng.normal(0.0, params.size_spread, batch)), 0.5, 2.0)
        radii = mean_radius * sizes * 0.85
        keep = tissue[spots[:, 0].astype(int), spots[:, 1].astype(int)]
        if placed.count:
            n = placed.count
            dist = np.hypot(
                spots[:, None, 0] - placed.centres[None, :n, 0],
                spots[:, None, 1] - placed.centres[None, :n, 1],
            )
            keep &= np.all(dist >= packing * (radii[:, None] + placed.radii[None, :n]), axis=1)
        first = placed.count
        for k in np.flatnonzero(keep):
            if placed.count >= target:
                break
            cy, cx = spots[k]
            n = placed.count
            near = np.hypot(placed.centres[first:n, 0] - cy, placed.centres[first:n, 1] - cx)
            if np.any(near < packing * (placed.radii[first:n] + radii[k])):
                continue
            nucleus_radius = mean_radius * params.nucleus_ratio * float(sizes[k]) ** 0.5
            body, nucleus = _make_cell(
                rng, params, cy, cx, radii[k] * swell, nucleus_radius, _TISSUE
            )
            placed.add(body, nucleus, radii[k], _TISSUE)
    return placed.result()


def _labels(
    bodies: list[_Outline],
    nuclei: list[_Outline],
    kinds: NDArray[np.int_],
    canvas: tuple[int, int],
    inner: tuple[slice, slice],
) -> tuple[NDArray[np.int32], NDArray[np.int32], NDArray[np.float32], NDArray[np.int_]]:
    """Whole-cell and nuclear labels in view, the nuclei's depth, and each cell's kind.

    Cells grow from their nuclei (a seeded watershed) over the painted depth of their bodies:
    where bodies overlap they meet where both are equally deep, each cell stays one piece
    around its own nucleus, and a nucleus can never be claimed by a neighbour. The kinds are
    indexed by cell label (index 0 the background).
    """
    nuclear_owner, nuclear_depth = paint_depth(nuclei, *canvas)
    nuclear_labels, nucleus_cell = keep_largest_pieces(nuclear_owner, MIN_NUCLEUS_AREA)
    markers = np.concatenate([[0], nucleus_cell]).astype(np.int32)[nuclear_labels]
    _, body_depth = paint_depth(bodies, *canvas)
    inside = (body_depth < 1.0) | (markers > 0)
    grown = watershed(np.where(inside, body_depth, 1.0), markers, mask=inside, connectivity=1)

    # Cut to the image: the cells' visible pieces, then each kept cell's nucleus within it.
    cells, cell_owner = keep_largest_pieces(grown[inner].astype(np.int32), MIN_CELL_AREA)
    lut = np.zeros(len(nuclei) + 1, dtype=np.int32)
    lut[cell_owner] = np.arange(1, cell_owner.size + 1, dtype=np.int32)
    candidate = lut[markers[inner]]
    candidate[candidate != cells] = 0
    pieces, nucleus_of = keep_largest_pieces(candidate, MIN_NUCLEUS_AREA)
    nuclei_labels = np.concatenate([[0], nucleus_of]).astype(np.int32)[pieces]
    depth = nuclear_depth[inner].copy()
    depth[pieces == 0] = np.inf
    cell_kinds = np.concatenate([[_NORMAL], kinds[cell_owner - 1]]).astype(np.int_)
    return cells, nuclei_labels, depth, cell_kinds


@dataclass(frozen=True)
class _Geometry:
    """Per-pixel geometry of the final labels, shared by the renderers."""

    edge: NDArray[np.float32]
    """Distance to the own cell's edge (0 on its outermost pixels), 0 outside cells."""
    height: NDArray[np.float32]
    """``edge`` over the cell's largest ``edge``: 0 at the edge, 1 at its thickest point."""
    outside: NDArray[np.float32]
    """Distance of background pixels to the nearest cell (0 inside cells)."""
    nearest: NDArray[np.int32]
    """The label of the nearest cell for every pixel (own label inside cells)."""
    nuclear: NDArray[np.bool_]
    """Where the nuclei are."""

    @classmethod
    def of(cls, cells: NDArray[np.int32], nuclei: NDArray[np.int32]) -> _Geometry:
        count = int(cells.max())
        border = find_boundaries(cells, connectivity=1, mode="inner")
        edge = ndi.distance_transform_edt(~border).astype(np.float32)
        edge[cells == 0] = 0.0
        peak = np.ones(count + 1, dtype=np.float32)
        if count:
            peak[1:] = np.maximum(ndi.maximum(edge, cells, np.arange(1, count + 1)), 1.0)
        outside, index = ndi.distance_transform_edt(cells == 0, return_indices=True)
        nearest = cells[index[0], index[1]] if count else np.zeros_like(cells)
        return cls(
            edge,
            edge / peak[cells],
            outside.astype(np.float32),
            nearest,
            nuclei > 0,
        )


def _per_cell(
    rng: np.random.Generator, params: CellParams, count: int, spread: float
) -> NDArray[np.float32]:
    """Per-cell brightness, index 0 the background: log-normal, some dim, some bright."""
    brightness = np.exp(rng.normal(0.0, spread, count + 1))
    brightness[rng.random(count + 1) < params.dim_fraction] *= rng.uniform(0.2, 0.4)
    brightness[rng.random(count + 1) < params.bright_fraction] *= rng.uniform(2.0, 4.0)
    brightness[0] = 0.0
    return brightness.astype(np.float32)


def _render_nuclear(
    rng: np.random.Generator,
    params: CellParams,
    nuclei: NDArray[np.int32],
    depth: NDArray[np.float32],
    kinds: NDArray[np.int_],
) -> NDArray[np.float32]:
    """The nuclear stain, drawn as the nuclei generator draws nuclei."""
    if not kinds.size:
        return np.zeros(nuclei.shape, dtype=np.float32)
    sequential = np.zeros(int(nuclei.max()) + 1, dtype=np.int32)
    present = np.unique(nuclei[nuclei > 0])
    sequential[present] = np.arange(1, present.size + 1, dtype=np.int32)
    return _paint(rng, sequential[nuclei], depth, _appearance(rng, kinds, params.dim_fraction))


def _render_cytoplasm(
    rng: np.random.Generator,
    params: CellParams,
    cells: NDArray[np.int32],
    geometry: _Geometry,
    kinds: NDArray[np.int_],
) -> NDArray[np.float32]:
    """A cytoplasmic dye: thick parts bright, thinning to the edge, mottled, nucleus excluded."""
    count = int(cells.max())
    brightness = _per_cell(rng, params, count, rng.uniform(0.2, 0.5))
    brightness[kinds == _ROUNDED] *= rng.uniform(1.5, 2.5)
    exclusion = np.clip(rng.uniform(-0.3, 0.8) + rng.normal(0.0, 0.1, count + 1), -0.5, 0.95)
    profile = np.power(geometry.height, rng.uniform(0.3, 0.9))
    texture = 1.0 + rng.uniform(0.05, 0.3) * smooth_noise(rng, cells.shape, rng.uniform(1.0, 2.5))
    signal = brightness[cells] * profile * np.clip(texture, 0.1, None)
    nuclear = geometry.nuclear
    signal[nuclear] *= (1.0 - exclusion[cells])[nuclear]
    return signal.astype(np.float32)


def _render_membrane(
    rng: np.random.Generator, params: CellParams, cells: NDArray[np.int32], geometry: _Geometry
) -> NDArray[np.float32]:
    """A membrane stain: a patchy band along every cell's edge over a faint cytoplasm."""
    count = int(cells.max())
    brightness = _per_cell(rng, params, count, rng.uniform(0.15, 0.4))
    width = rng.uniform(0.7, 1.6)
    band = np.exp(-((geometry.edge / width) ** 2))
    patches = np.clip(1.0 + 0.5 * smooth_noise(rng, cells.shape, rng.uniform(1.0, 2.5)), 0.15, None)
    diffuse = rng.uniform(0.05, 0.3) * np.power(geometry.height, 0.5)
    signal = brightness[cells] * (band * patches + diffuse)
    signal[cells == 0] = 0.0
    return signal.astype(np.float32)


def _render_brightfield(
    rng: np.random.Generator,
    params: CellParams,
    cells: NDArray[np.int32],
    geometry: _Geometry,
    kinds: NDArray[np.int_],
    nuclear: NDArray[np.float32],
    debris: NDArray[np.float32],
) -> NDArray[np.float32]:
    """Transmitted light: cells take a little light away and bend some into a band at their
    edge (bright: phase halo; dark: defocus); then strong uneven illumination and a sensor."""
    count = int(cells.max())
    thickness = np.ones(count + 1, dtype=np.float32)
    thickness[kinds == _ROUNDED] = rng.uniform(1.8, 3.0)
    thickness[0] = 0.0
    strength = thickness[geometry.nearest]
    width = rng.uniform(1.2, 3.0)
    ring_out = np.exp(-((geometry.outside / width) ** 2)) * (cells == 0)
    ring_in = np.exp(-((geometry.edge / (0.7 * width)) ** 2)) * (cells > 0)
    body = np.power(geometry.height, 0.5) * thickness[cells]
    transmission = 1.0 - params.contrast * body
    transmission += params.halo * strength * (ring_out - 0.4 * ring_in)
    if nuclear.any():
        scale = float(np.percentile(nuclear[nuclear > 0], 99)) or 1.0
        transmission += rng.uniform(-0.6, 0.3) * params.contrast * nuclear / scale
    granules = np.zeros(cells.shape, dtype=np.float32)
    inside = np.flatnonzero(cells)
    n_granules = rng.poisson(inside.size * rng.uniform(0.0, 0.01))
    if n_granules:
        granules.flat[rng.choice(inside, n_granules)] = rng.uniform(0.5, 1.0, n_granules)
        granules = ndi.gaussian_filter(granules, 0.8) * (2 * np.pi * 0.64)
    transmission -= params.contrast * granules + debris
    light = illumination(rng, *cells.shape) * (
        1.0 + 0.05 * smooth_noise(rng, cells.shape, rng.uniform(20.0, 60.0))
    )
    optics = ndi.gaussian_filter(np.clip(transmission, 0.0, None), params.blur)
    # On small images the light's smooth noise can dip below zero: no light, not negative light.
    expected = np.clip(optics * light * params.brightfield_photons, 0.0, None)
    return sensor(rng, expected.astype(np.float32))


def _debris(
    rng: np.random.Generator, params: CellParams, cells: NDArray[np.int32]
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Small particles clear of every cell: signal per channel (nuclear, membrane, cytoplasm,
    brightfield absorption) and where they are."""
    shape = cells.shape
    signal = np.zeros((4, *shape), dtype=np.float32)
    where = np.zeros(shape, dtype=bool)
    clearance = ndi.distance_transform_edt(cells == 0)
    count = rng.poisson(params.debris * shape[0] * shape[1] / 1e4)
    for _ in range(count):
        radius = float(np.exp(rng.uniform(np.log(0.6), np.log(2.5))))
        cy, cx = int(rng.integers(shape[0])), int(rng.integers(shape[1]))
        if clearance[cy, cx] < 2 * radius + 3:
            continue
        reach = int(np.ceil(2 * radius))
        y0, y1 = max(cy - reach, 0), min(cy + reach + 1, shape[0])
        x0, x1 = max(cx - reach, 0), min(cx + reach + 1, shape[1])
        dy = np.arange(y0, y1)[:, None] - cy
        dx = np.arange(x0, x1)[None, :] - cx
        blob = np.exp(-(dy**2 + dx**2) / (2 * radius**2)).astype(np.float32)
        blob[dy**2 + dx**2 > reach**2] = 0.0
        shown = rng.random(4) < 0.6
        shown[rng.integers(4)] = True
        brightness = np.exp(rng.uniform(np.log(0.3), np.log(4.0), 4))
        brightness[3] = rng.uniform(0.05, 0.4)
        for channel in np.flatnonzero(shown):
            signal[channel, y0:y1, x0:x1] += brightness[channel] * blob
        where[y0:y1, x0:x1] |= blob > 0.2
    return signal, where
