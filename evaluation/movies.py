"""Procedural live-cell movies of fluorescent nuclei with exact tracking ground truth.

Why: cell tracking (linking objects over time, finding divisions) is tuned and scored on movies
whose every track, division and lineage is known, without shipping a data set. Frames are drawn
with the nuclei generator's shapes, rasteriser, rendering and optics (``evaluation.synthetic``)
at the nuclear model's pixel size (0.65 um/px, nuclei ~13 um = 20 px across, as in HeLa).

What a movie models (all drawn from the seed; every parameter overridable, see ``MovieParams``):

- motion: a persistent (correlated) random walk of a few px per frame, a slowly turning shape;
- crowding: nuclei push each other apart (touching neighbours keep distinct labels);
- cells leaving across the edges (their track ends) and entering from outside (new tracks;
  a cell that comes back is a new track too);
- growth between divisions, then mitosis: the mother rounds up and brightens for a few frames,
  then splits into two daughters of about half its area each that move apart, bright at first;
- occasional death (the nucleus shrinks, condenses and brightens, then disappears);
- photobleaching (exponential over time), per-cell frame-to-frame intensity flicker, fresh
  chromatin texture each frame, a fixed uneven illumination and background, a Gaussian PSF,
  Poisson shot noise and Gaussian read noise.

Ground truth follows the Cell Tracking Challenge: ``labels[t]`` holds track labels (constant along
a track), each one 4-connected piece of at least ``min_area`` pixels; ``tracks`` holds one
``L B E P`` record per track; a division ends the mother on the frame before its daughters' first
frame, and each daughter has the mother as parent.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from consumers.ctc import TrackTruth, write_ctc_result, write_ctc_truth_folder
from evaluation.drawing import illumination, smooth_noise
from evaluation.synthetic import (
    _KIND_APOPTOTIC,
    _KIND_DIVIDING,
    _KIND_MITOTIC,
    _KIND_NORMAL,
    MODEL_MPP,
    _Appearance,
    _Nucleus,
    _paint,
    _rasterise,
)

__all__ = [
    "Movie",
    "MovieParams",
    "TrackTruth",
    "generate_movie",
    "write_ctc_result",
    "write_ctc_truth",
]


@dataclass(frozen=True)
class MovieParams:
    """What a movie looks like; pass any field to ``generate_movie`` as a keyword override.

    Lengths in pixels at 0.65 um/px, times in frames (think 5-10 minutes per frame for HeLa).
    """

    coverage: float = 0.2
    """Fraction of the field covered by nuclei in the first frame (sets the cell count)."""
    diameter: float = 20.0
    """Typical nucleus diameter in pixels (HeLa: ~13 um)."""
    size_spread: float = 0.12
    """Spread of nucleus sizes (sd of the log diameter)."""
    speed: float = 3.0
    """Typical (rms) displacement per frame in pixels."""
    persistence: float = 0.7
    """Correlation of a cell's velocity from one frame to the next (0: random, 1: straight)."""
    division_rate: float = 0.01
    """Chance per cell and frame that a cell starts mitosis."""
    rounding_frames: int = 3
    """Frames a mother spends rounding up and brightening before it splits."""
    growth: float = 0.005
    """Fractional area growth per frame between divisions."""
    death_rate: float = 0.001
    """Chance per cell and frame that a cell starts dying (shrinks, brightens, disappears)."""
    entry_rate: float | None = None
    """Cells entering across the edges per frame; None: about as many as leave at the start."""
    bleaching: float = 0.01
    """Photobleaching: brightness falls as exp(-bleaching * frame)."""
    flicker: float = 0.05
    """Frame-to-frame brightness jitter of each cell (sd of the log brightness)."""
    brightness_spread: float = 0.25
    """Cell-to-cell brightness spread (sd of the log brightness)."""
    photons: float = 300.0
    """Photons at a typical nucleus' brightest pixels in the first frame (sets the SNR)."""
    read_noise: float = 3.0
    """Camera read noise, in counts."""
    background: float = 0.05
    """Background light relative to a typical nucleus."""
    blur: float = 1.0
    """Gaussian PSF sigma in pixels."""
    min_area: int = 20
    """Smallest visible piece of a nucleus that is labelled (and drawn) in a frame."""

    def __post_init__(self) -> None:
        for name in ("coverage", "diameter", "speed", "photons", "blur"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in (
            "size_spread",
            "division_rate",
            "growth",
            "death_rate",
            "bleaching",
            "flicker",
            "brightness_spread",
            "read_noise",
            "background",
        ):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be zero or more, got {getattr(self, name)!r}")
        if not 0 <= self.persistence < 1:
            raise ValueError(f"persistence must be in [0, 1), got {self.persistence!r}")
        if not 0 < self.coverage < 0.7:
            raise ValueError(f"coverage must be in (0, 0.7), got {self.coverage!r}")
        if self.division_rate > 0.5 or self.death_rate > 0.5:
            raise ValueError("division_rate and death_rate are chances per frame: at most 0.5")
        if self.rounding_frames < 1:
            raise ValueError(f"rounding_frames must be 1 or more, got {self.rounding_frames!r}")
        if self.min_area < 8:
            raise ValueError(f"min_area must be at least 8 pixels, got {self.min_area!r}")
        if self.entry_rate is not None and not self.entry_rate >= 0:
            raise ValueError(f"entry_rate must be zero or more (or None), got {self.entry_rate!r}")


@dataclass(frozen=True)
class Movie:
    """A generated movie and its ground truth (CTC semantics, see the module docstring)."""

    images: NDArray[np.uint16]
    """(T, Y, X) fluorescence frames, camera counts."""
    labels: NDArray[np.int32]
    """(T, Y, X) track labels, 0 background."""
    tracks: dict[int, TrackTruth]
    """One record per track label."""
    mpp: float = MODEL_MPP
    """Microns per pixel."""
    params: MovieParams = field(default_factory=MovieParams)
    """The parameters it was drawn with."""

    @property
    def divisions(self) -> dict[int, tuple[int, ...]]:
        """Mother track label -> its two daughter track labels.

        Only mothers with two daughters in view count, as in the CTC division scores; a mother
        whose other daughter was born outside the field still has a parent link to the one seen.
        """
        daughters: dict[int, list[int]] = {}
        for track in self.tracks.values():
            if track.parent:
                daughters.setdefault(track.parent, []).append(track.label)
        return {m: tuple(sorted(d)) for m, d in sorted(daughters.items()) if len(d) >= 2}


_INTERPHASE, _MITOSIS, _DYING = 0, 1, 2
_DYING_FRAMES = 4


@dataclass
class _Cell:
    """A simulated cell; ``area`` is its interphase nucleus area (px), shown area may differ."""

    cy: float
    cx: float
    vy: float
    vx: float
    area: float
    aspect: float
    angle: float
    harmonics: NDArray[np.float64]
    look: tuple[float, float, float, float]  # brightness, dome, rim, texture
    state: int = _INTERPHASE
    progress: int = 0  # frames spent in mitosis or dying
    age: int = 99  # frames since birth (daughters are bright for a few frames)
    mother_track: int = 0  # the mother's track, for a daughter's first frame
    born: int = -1  # frame a daughter appears first
    track: int = 0  # current track label (0: none)


def generate_movie(
    seed: int,
    *,
    frames: int = 30,
    shape: tuple[int, int] = (256, 256),
    **overrides: float | int | None,
) -> Movie:
    """Draw a movie of ``frames`` frames of ``shape`` pixels and its tracking ground truth.

    ``overrides`` are ``MovieParams`` fields (coverage, diameter, speed, division_rate, ...).
    The same seed and arguments give the same movie; motion and lineage do not depend on the
    imaging parameters (photons, noise, bleaching...), so those can vary over the same cells.
    """
    names = {f.name for f in fields(MovieParams)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(
            f"unknown movie parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    params = replace(MovieParams(), **overrides)  # type: ignore[arg-type]
    if frames < 1:
        raise ValueError(f"frames must be 1 or more, got {frames}")
    height, width = int(shape[0]), int(shape[1])
    if height < 32 or width < 32:
        raise ValueError(f"shape must be at least 32x32 pixels, got {shape}")
    motion_seq, look_seq, camera_seq = np.random.SeedSequence(seed).spawn(3)
    motion = np.random.default_rng(motion_seq)
    look_rng = np.random.default_rng(look_seq)
    camera = _Camera(np.random.default_rng(camera_seq), params, height, width)

    cells = _initial_cells(motion, params, height, width)
    images = np.zeros((frames, height, width), dtype=np.uint16)
    labels = np.zeros((frames, height, width), dtype=np.int32)
    tracks: dict[int, TrackTruth] = {}
    next_label = 1
    for t in range(frames):
        if t:
            cells = _step(motion, cells, params, height, width, t)
        nuclei = [_nucleus(cell, params) for cell in cells]
        frame_labels, depth, shown = _draw_labels(nuclei, height, width, params.min_area)
        shown_cells = [cells[i] for i in shown]
        # Tracks: a cell seen in the previous frame continues; otherwise a new track starts.
        lut = np.zeros(len(shown_cells) + 1, dtype=np.int32)
        visible = set()
        for index, cell in enumerate(shown_cells, start=1):
            if cell.track and cell.track in tracks and tracks[cell.track].last == t - 1:
                tracks[cell.track] = replace(tracks[cell.track], last=t)
            else:
                mother = tracks.get(cell.mother_track)
                parent = (
                    cell.mother_track if mother and cell.born == t and mother.last == t - 1 else 0
                )
                cell.track = next_label
                tracks[next_label] = TrackTruth(next_label, t, t, parent)
                next_label += 1
            lut[index] = cell.track
            visible.add(id(cell))
        for cell in cells:
            if id(cell) not in visible:
                cell.track = 0
        labels[t] = lut[frame_labels]
        signal = _paint(look_rng, frame_labels, depth, _looks(look_rng, shown_cells, params, t))
        images[t] = camera.expose(signal)
    return Movie(images, labels, tracks, MODEL_MPP, params)


def write_ctc_truth(movie: Movie, folder: Path) -> None:
    """Write the movie's ground truth in the CTC layout: ``folder/TRA/man_track.txt`` and
    ``folder/TRA/man_trackTTT.tif`` (uint16 masks, one per frame)."""
    write_ctc_truth_folder(Path(folder), movie.labels, movie.tracks)


def _new_shape(rng: np.random.Generator) -> tuple[float, float, NDArray[np.float64]]:
    """Aspect ratio, orientation and radial harmonics of a nucleus (as the still generator's)."""
    aspect = float(min(1.0 + abs(rng.normal(0.0, 0.25)), 2.0))
    orders = np.arange(2, 6, dtype=np.float64)
    amplitudes = rng.normal(0.0, 0.06, orders.size) / orders
    phases = rng.uniform(0.0, 2 * np.pi, orders.size)
    return aspect, float(rng.uniform(0, np.pi)), np.stack([orders, amplitudes, phases], axis=1)


def _new_cell(
    rng: np.random.Generator, params: MovieParams, cy: float, cx: float, area: float
) -> _Cell:
    aspect, angle, harmonics = _new_shape(rng)
    v = rng.normal(0.0, params.speed / np.sqrt(2), 2)
    look = (
        float(np.exp(rng.normal(0.0, params.brightness_spread))),
        float(rng.uniform(0.1, 0.5)),
        float(rng.uniform(0.0, 0.3)),
        float(rng.uniform(0.05, 0.2)),
    )
    return _Cell(cy, cx, float(v[0]), float(v[1]), area, aspect, angle, harmonics, look)


def _typical_area(rng: np.random.Generator, params: MovieParams) -> float:
    diameter = params.diameter * float(np.exp(rng.normal(0.0, params.size_spread)))
    return float(np.pi * (diameter / 2) ** 2)


def _initial_cells(
    rng: np.random.Generator, params: MovieParams, height: int, width: int
) -> list[_Cell]:
    """Scatter cells over the field, non-overlapping, up to the asked coverage."""
    mean_area = np.pi * (params.diameter / 2) ** 2
    target = max(1, round(params.coverage * height * width / mean_area))
    cells: list[_Cell] = []
    for _ in range(30 * target):
        if len(cells) >= target:
            break
        # Cells part-way through their cycle: between one and two newborn areas.
        area = _typical_area(rng, params) * float(rng.uniform(0.75, 1.25))
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = np.sqrt(area / np.pi)
        if all(np.hypot(c.cy - cy, c.cx - cx) >= 1.05 * (r + _radius(c)) for c in cells):
            cell = _new_cell(rng, params, cy, cx, area)
            cell.age = int(rng.integers(10, 100))
            cells.append(cell)
    return cells


def _radius(cell: _Cell) -> float:
    return float(np.sqrt(_shown_area(cell) / np.pi))


def _shown_area(cell: _Cell) -> float:
    if cell.state == _MITOSIS:
        return cell.area * 0.9  # condensed, rounded
    if cell.state == _DYING:
        return cell.area * 0.55**cell.progress
    return cell.area


def _step(
    rng: np.random.Generator,
    cells: list[_Cell],
    params: MovieParams,
    height: int,
    width: int,
    t: int,
) -> list[_Cell]:
    """Advance the population by one frame: events, divisions, motion, crowding, edges."""
    survivors: list[_Cell] = []
    for cell in cells:
        cell.age += 1
        if cell.state == _MITOSIS:
            if cell.progress >= params.rounding_frames:
                survivors.extend(_divide(rng, cell, params, t))
                continue
            cell.progress += 1
        elif cell.state == _DYING:
            if cell.progress >= _DYING_FRAMES:
                continue
            cell.progress += 1
        else:
            roll = rng.random()
            if roll < params.division_rate:
                cell.state, cell.progress = _MITOSIS, 1
            elif roll < params.division_rate + params.death_rate:
                cell.state, cell.progress = _DYING, 1
            cell.area *= 1.0 + params.growth
        survivors.append(cell)
    cells = survivors

    # Correlated random walk; cells in mitosis or dying barely move.
    p = params.persistence
    kick = params.speed / np.sqrt(2) * np.sqrt(1 - p * p)
    for cell in cells:
        noise = rng.normal(0.0, kick, 2)
        cell.vy = p * cell.vy + float(noise[0])
        cell.vx = p * cell.vx + float(noise[1])
        damp = 1.0 if cell.state == _INTERPHASE else 0.25
        cell.cy += damp * cell.vy
        cell.cx += damp * cell.vx
        cell.angle += float(rng.normal(0.0, 0.05))
    _push_apart(cells)

    # Leaving: gone once wholly outside the field (with a margin).
    kept = []
    for cell in cells:
        r = _radius(cell) + 2.0
        if -r < cell.cy < height + r and -r < cell.cx < width + r:
            kept.append(cell)
    cells = kept

    # Entering: new cells just outside an edge, heading in.
    rate = params.entry_rate
    if rate is None:
        density = params.coverage / (np.pi * (params.diameter / 2) ** 2)
        rate = density * 2 * (height + width) * params.speed / np.sqrt(2 * np.pi)
    for _ in range(int(rng.poisson(rate))):
        area = _typical_area(rng, params)
        r = float(np.sqrt(area / np.pi))
        side = rng.uniform(0, 2 * (height + width))
        depth = r * float(rng.uniform(0.2, 0.9))
        inward = abs(float(rng.normal(params.speed, params.speed / 3)))
        if side < width:
            cy, cx, vy, vx = -depth, side, inward, 0.0
        elif side < 2 * width:
            cy, cx, vy, vx = height + depth, side - width, -inward, 0.0
        elif side < 2 * width + height:
            cy, cx, vy, vx = side - 2 * width, -depth, 0.0, inward
        else:
            cy, cx, vy, vx = side - 2 * width - height, width + depth, 0.0, -inward
        if all(np.hypot(c.cy - cy, c.cx - cx) >= r + _radius(c) for c in cells):
            cell = _new_cell(rng, params, cy, cx, area)
            cell.vy, cell.vx = vy, vx
            cells.append(cell)
    return cells


def _divide(rng: np.random.Generator, mother: _Cell, params: MovieParams, t: int) -> list[_Cell]:
    """Two daughters of about half the mother's area each, side by side, moving apart."""
    axis = float(rng.uniform(0, np.pi))
    unit = np.array([np.sin(axis), np.cos(axis)])
    share = float(rng.uniform(0.45, 0.55))
    daughters = []
    for sign, fraction in ((1.0, share), (-1.0, 1.0 - share)):
        area = mother.area * fraction
        r = float(np.sqrt(area / np.pi))
        offset = sign * (r + 0.5) * unit
        cell = _new_cell(rng, params, mother.cy + offset[0], mother.cx + offset[1], area)
        # Daughters are flattened along the division axis and move apart.
        cell.aspect = float(rng.uniform(1.2, 1.5))
        cell.angle = axis + np.pi / 2
        apart = sign * float(rng.uniform(0.6, 1.0)) * params.speed * unit
        cell.vy, cell.vx = float(apart[0]), float(apart[1])
        cell.look = (
            mother.look[0] * float(np.exp(rng.normal(0.0, 0.1))),
            *mother.look[1:],
        )
        cell.age, cell.mother_track, cell.born = 0, mother.track, t
        daughters.append(cell)
    return daughters


def _push_apart(cells: list[_Cell], iterations: int = 8) -> None:
    """Crowding: move overlapping nuclei apart until they at most touch."""
    if len(cells) < 2:
        return
    pos = np.array([[c.cy, c.cx] for c in cells])
    radii = np.array([_radius(c) for c in cells])
    reach = 0.97 * (radii[:, None] + radii[None, :])
    for _ in range(iterations):
        delta = pos[:, None, :] - pos[None, :, :]
        dist = np.hypot(delta[..., 0], delta[..., 1])
        np.fill_diagonal(dist, np.inf)
        overlap = np.clip(reach - dist, 0.0, None)
        if not overlap.any():
            break
        direction = delta / np.maximum(dist, 1e-6)[..., None]
        pos += 0.5 * (overlap[..., None] * direction).sum(axis=1)
    for cell, (cy, cx) in zip(cells, pos, strict=True):
        cell.cy, cell.cx = float(cy), float(cx)


def _nucleus(cell: _Cell, params: MovieParams) -> _Nucleus:
    """The shape drawn for a cell this frame (rounding up in mitosis, condensing when dying)."""
    aspect, harmonics, kind = cell.aspect, cell.harmonics, _KIND_NORMAL
    if cell.state == _MITOSIS:
        done = cell.progress / params.rounding_frames
        aspect = 1.0 + (aspect - 1.0) * (1.0 - done) * 0.5
        harmonics = harmonics * np.array([1.0, 1.0 - done, 1.0])
        kind = _KIND_MITOTIC
    elif cell.state == _DYING:
        aspect, kind = 1.0 + (aspect - 1.0) * 0.3, _KIND_APOPTOTIC
    elif cell.age < 3:
        kind = _KIND_DIVIDING
    r = np.sqrt(_shown_area(cell) / np.pi)
    a, b = r * np.sqrt(aspect), r / np.sqrt(aspect)
    return _Nucleus(cell.cy, cell.cx, float(a), float(b), cell.angle, harmonics, kind)


def _draw_labels(
    nuclei: list[_Nucleus], height: int, width: int, min_area: int
) -> tuple[NDArray[np.int32], NDArray[np.float32], list[int]]:
    """Rasterise; labels 1..N and, for each, the index of its nucleus in ``nuclei``.

    Nuclei whose visible part is smaller than ``min_area`` (cut by the edge or a neighbour) are
    left out of labels and image alike.
    """
    order = {id(n): i for i, n in enumerate(nuclei)}
    kept = list(nuclei)
    labels, depth = _rasterise(kept, height, width)
    areas = np.bincount(labels.ravel(), minlength=len(kept) + 1)
    keep = areas >= min_area
    keep[0] = True
    if not keep.all():
        relabel = np.zeros(keep.size, dtype=np.int32)
        relabel[keep] = np.arange(int(keep.sum()), dtype=np.int32)
        labels = relabel[labels]
        depth[labels == 0] = np.inf
        kept = [n for n, k in zip(kept, keep[1:], strict=True) if k]
    return labels, depth, [order[id(n)] for n in kept]


def _looks(
    rng: np.random.Generator, cells: list[_Cell], params: MovieParams, t: int
) -> _Appearance:
    """Each shown cell's appearance this frame: own look, mitosis/death/newborn brightening,
    flicker and photobleaching."""
    count = len(cells)
    brightness = np.empty(count)
    dome = np.empty(count)
    rim = np.empty(count)
    texture = np.empty(count)
    flicker = np.exp(rng.normal(0.0, params.flicker, count))
    bleach = float(np.exp(-params.bleaching * t))
    for i, cell in enumerate(cells):
        b, d, r, x = cell.look
        if cell.state == _MITOSIS:
            b *= 1.0 + 0.8 * cell.progress / params.rounding_frames
            d, x = 0.08, 0.45
        elif cell.state == _DYING:
            b *= 1.0 + 0.5 * cell.progress
            d, r = 0.08, 0.0
        elif cell.age < 6:
            b *= 1.0 + 0.6 * 0.6**cell.age  # newborn daughters: condensed, bright
        brightness[i] = b * flicker[i] * bleach
        dome[i], rim[i], texture[i] = d, r, x
    return _Appearance(brightness, dome, rim, texture)


class _Camera:
    """Fixed optics for the whole movie; fresh shot and read noise for every frame."""

    def __init__(self, rng: np.random.Generator, params: MovieParams, height: int, width: int):
        self.rng = rng
        self.params = params
        self.illumination = illumination(rng, height, width)
        haze = params.background * (
            1.0 + 0.3 * smooth_noise(rng, (height, width), float(rng.uniform(15.0, 40.0)))
        )
        self.background = np.clip(haze, 0.0, None)
        self.gain = float(rng.uniform(1.0, 3.0))
        self.offset = float(rng.choice([0.0, 100.0]))

    def expose(self, signal: NDArray[np.float32]) -> NDArray[np.uint16]:
        p = self.params
        scene = ndi.gaussian_filter(signal, p.blur) + self.background
        expected = np.clip(scene * self.illumination * p.photons, 0.0, None)
        counts = self.rng.poisson(expected) * self.gain + self.offset
        counts = counts + self.rng.normal(0.0, p.read_noise, counts.shape)
        return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)
