"""Linking segmented frames over time: tracks, divisions and gap closing (pure maths, no I/O).

Why this shape: a movie is segmented frame by frame and never held in memory whole, so every
frame is reduced once to a small table of its objects (`measure`: centroid, area, mean
intensity, roundness) and `link` works from those tables alone.

Per frame, the open tracks are matched to the frame's cells by one linear assignment with birth
and death blocks (Jaqaman et al., 2008; the original DeepCell tracker's formulation), the cost
of a link being the squared distance from the track's predicted position, normalised by the
reach, plus a penalty for a change of area. A track missed for up to `gap_frames` frames stays
open and can be re-joined (gap closing), with a reach that grows like a random walk's.

Divisions are decided after each frame's assignment, from the cues a dividing nucleus shows:
two daughters appear near the mother's last position, on opposite sides of it, apart, similar
to each other, each smaller than the mother and together about its size; the mother rounds up
and brightens just before. Distance alone finds almost no divisions (one daughter simply
continues the mother's track), so a track whose continuation shrank, or which has none, is
tested against pairs of nearby cells: its continuation, unmatched cells, or cells taken from
another track's weak link (which then gets a second chance). The best-scoring pairs win. A
divided mother is capped: its track ends on the frame before its daughters' first frame. At
the end, divisions that were a nucleus cut in two by the segmentation are undone: a daughter
gone again within a couple of frames, or one daughter alone the next frame at the mother's size.

The feature score (`_division_score`) is hand-tuned. `link` may be given a `DivisionScorer`
instead, which receives each frame's candidates at once (`DivisionCandidates`: the cues of
`DIVISION_FEATURES`, the feature score among them, and each cell's window when the frames were
measured with `patch_size`) and answers probabilities; the tracking job type's learned scorer
is a model on the model server (`consumers.division_scorer`). Without one, linking is exactly
the feature score's.

`lineage_json` writes the original's lineage.json; `ctc_tracking` gives the Cell Tracking
Challenge's form (a track continued after a gap gets a new label, parent the part before) for
`ctc_res_track` and the CTC mask files.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import dataclass, field
from functools import cached_property
from itertools import pairwise
from typing import NamedTuple, Protocol

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "DIVISION_FEATURES",
    "Cells",
    "DivisionCandidates",
    "DivisionScorer",
    "LinkParams",
    "Linker",
    "Track",
    "Tracking",
    "ctc_res_track",
    "ctc_tracking",
    "lineage_json",
    "link",
    "measure",
    "relabel",
]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

_UNREACHABLE = 1e9  # cost of a pair the assignment must not choose (finite: scipy needs one)
_SHRUNK = 0.8  # a track whose continuation is this much smaller than it may have divided
_TAKE_WEIGHT = 6.0  # division score lost by taking a cell from a sure link (cost 0)
_REMERGED = 0.8  # a lone daughter this close to its mother's size was never divided
_MERGED = -1  # `first` of a working track merged back into its mother
_OWN, _OTHER = 255, 100  # a patch's mask channel: the object itself, its neighbours
LOOKUP_LIMIT = 1 << 24
"""Largest label :func:`relabel` maps through a lookup table (64 MiB of uint32 at most)."""

DIVISION_FEATURES: tuple[str, ...] = (
    "score",  # the feature score (`_division_score`), before the cost of taking cells
    "opposite",  # cosine of the angle daughter-mother-daughter (-1: opposite sides)
    "centred",  # offset of the daughters' midpoint from the mother, per half separation
    "total",  # log of the daughters' summed area over the mother's
    "balance",  # log of the larger daughter's area over the smaller's
    "larger",  # the larger daughter's area over the mother's
    "apart",  # separation over the sum of the daughters' disc radii
    "separation",  # daughters' separation over the division distance
    "brighter",  # log of the mother's last intensity over her recent mean (0: unknown)
    "rounder",  # the mother's last roundness minus her recent mean
    "roundness",  # the mother's last roundness
    "a_roundness",  # the larger daughter's roundness
    "b_roundness",  # the smaller daughter's
    "a_intensity",  # log of the larger daughter's intensity over the mother's (0: unknown)
    "b_intensity",  # the smaller daughter's
    "cut",  # 1 when the mother or a daughter touches the frame's edge
    "continuation",  # 1 when a daughter is the mother's own continuation
    "take_a",  # what taking the larger daughter from another track costs (0: free)
    "take_b",  # the smaller daughter's
)
"""The scalar features of a division candidate, in the order a `DivisionScorer` receives them."""


class _Rows(NamedTuple):
    y: list[float]
    x: list[float]
    area: list[float]
    intensity: list[float]
    roundness: list[float]
    edge: list[bool]
    label: list[int]


@dataclass(frozen=True)
class Cells:
    """One frame's objects, measured once; every array has one entry per object.

    `intensities` is the object's mean intensity (NaN when no image was given), `roundness`
    its minor/major axis ratio from the second moments (1 = round) and `edge` whether it
    touches the frame's border (its size is then partly unseen); all feed division scoring.
    `patches` (optional, from `measure(..., patch_size=P)`): a (N, P, P, 2) uint8 window
    centred on each object, channel 0 the frame's normalised image, channel 1 its mask (255 the
    object, 100 its neighbours): what a learned `DivisionScorer` looks at, kept small so that a
    long movie's tables stay far below its frames' size.
    """

    frame: int
    labels: IntArray
    centroids: FloatArray  # (N, 2) (y, x) px
    areas: FloatArray
    intensities: FloatArray
    roundness: FloatArray
    edge: NDArray[np.bool_]
    patches: NDArray[np.uint8] | None = None

    def __post_init__(self) -> None:
        n = len(self.labels)
        if np.shape(self.centroids) != (n, 2):
            raise ValueError(
                f"frame {self.frame}: centroids must be ({n}, 2), one (y, x) per label; "
                f"got {np.shape(self.centroids)}"
            )
        for name in ("areas", "intensities", "roundness", "edge"):
            if np.shape(getattr(self, name)) != (n,):
                raise ValueError(
                    f"frame {self.frame}: {name} must have one value per label ({n}); "
                    f"got shape {np.shape(getattr(self, name))}"
                )
        if self.patches is not None and (
            self.patches.ndim != 4
            or self.patches.shape[0] != n
            or self.patches.shape[1] != self.patches.shape[2]
            or self.patches.shape[3] != 2
        ):
            raise ValueError(
                f"frame {self.frame}: patches must be ({n}, P, P, 2), one square window with "
                f"image and mask per label; got {self.patches.shape}"
            )
        if n and int(np.min(self.labels)) <= 0:
            raise ValueError(f"frame {self.frame}: labels must be positive (0 is background)")
        if len(np.unique(self.labels)) != n:
            raise ValueError(f"frame {self.frame}: labels must be unique")

    def __len__(self) -> int:
        return len(self.labels)

    @cached_property
    def rows(self) -> _Rows:
        """The columns as Python lists: the linker reads objects one at a time, and a list
        item is several times faster to read than a numpy scalar."""
        return _Rows(
            self.centroids[:, 0].tolist(),
            self.centroids[:, 1].tolist(),
            self.areas.astype(np.float64).tolist(),
            self.intensities.astype(np.float64).tolist(),
            self.roundness.astype(np.float64).tolist(),
            self.edge.astype(bool).tolist(),
            self.labels.astype(np.int64).tolist(),
        )

    @classmethod
    def empty(cls, frame: int, patch_size: int = 0) -> Cells:
        """A frame with no objects."""
        none = np.zeros(0, np.float64)
        patches = np.zeros((0, patch_size, patch_size, 2), np.uint8) if patch_size else None
        return cls(
            frame,
            np.zeros(0, np.int64),
            np.zeros((0, 2)),
            none,
            none,
            none,
            np.zeros(0, bool),
            patches,
        )


def measure(
    labels: np.ndarray, image: np.ndarray | None = None, frame: int = 0, patch_size: int = 0
) -> Cells:
    """Centroid, area, mean intensity and roundness of every object of one labelled frame.

    Sums over the labelled pixels with `np.bincount` (one pass per feature) rather than
    regionprops' per-object loop: a 512 x 512 frame of 150 nuclei costs a few milliseconds.
    `patch_size` > 0 also keeps each object's window (`Cells.patches`; needs the image).
    """
    if patch_size < 0 or patch_size % 2:
        raise ValueError(
            f"patch_size must be 0 (no patches) or a positive even number of pixels; "
            f"got {patch_size}"
        )
    if patch_size and image is None:
        raise ValueError(f"frame {frame}: patches need the image; pass image= or patch_size=0")
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"frame {frame}: labels must be one 2-D (Y, X) frame; got {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"frame {frame}: labels must be integers; got {lab.dtype}")
    if image is not None and np.shape(image) != lab.shape:
        raise ValueError(
            f"frame {frame}: image {np.shape(image)} and labels {lab.shape} must have one shape"
        )
    flat = lab.ravel()
    pixels = np.flatnonzero(flat > 0)
    if pixels.size == 0:
        return Cells.empty(frame, patch_size)
    values = flat[pixels].astype(np.int64)
    ids, index, border_cells = _index_labels(values, lab)
    n = ids.size
    ys, xs = np.divmod(pixels, lab.shape[1])
    area = np.bincount(index, minlength=n).astype(np.float64)
    cy = np.bincount(index, ys, n) / area
    cx = np.bincount(index, xs, n) / area
    dy, dx = ys - cy[index], xs - cx[index]
    myy = np.bincount(index, dy * dy, n) / area
    mxx = np.bincount(index, dx * dx, n) / area
    mxy = np.bincount(index, dy * dx, n) / area
    half_trace = (myy + mxx) / 2
    spread = np.sqrt(((myy - mxx) / 2) ** 2 + mxy**2)
    major, minor = half_trace + spread, np.maximum(half_trace - spread, 0.0)
    roundness = np.where(major > 0, np.sqrt(minor / np.where(major > 0, major, 1.0)), 1.0)
    if image is None:
        intensity = np.full(n, np.nan)
    else:
        pixel_values = np.asarray(image).ravel()[pixels].astype(np.float64)
        intensity = np.bincount(index, pixel_values, n) / area
    edge = np.zeros(n, bool)
    edge[border_cells] = True
    centroids = np.stack([cy, cx], axis=1)
    patches = None
    if patch_size:
        assert image is not None
        patches = _patches(lab, np.asarray(image), ids, centroids, patch_size)
    return Cells(frame, ids, centroids, area, intensity, roundness, edge, patches)


def _index_labels(
    values: NDArray[np.int64], labels: np.ndarray
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """The sorted object ids, each pixel's position among them, and the positions of the
    objects touching the border. Labels as segmentation writes them (1..n, or a few gaps)
    are indexed through a lookup table, 4x faster than sorting every pixel; sparse ids
    (e.g. a .trk's track labels in the millions) fall back to `np.unique`."""
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]).astype(np.int64)
    border = border[border > 0]
    top = int(values.max())
    if top <= 4 * values.size + 65_536:
        present = np.bincount(values, minlength=top + 1) > 0
        present[0] = False
        ids = np.flatnonzero(present)
        position = np.zeros(top + 1, np.int64)
        position[ids] = np.arange(ids.size)
        return ids, position[values], position[border]
    ids, index = np.unique(values, return_inverse=True)
    return ids, index, np.flatnonzero(np.isin(ids, border))


def _patches(
    lab: np.ndarray, image: np.ndarray, ids: IntArray, centroids: FloatArray, size: int
) -> NDArray[np.uint8]:
    """(N, size, size, 2) uint8 windows centred on each object: the image scaled from its
    1st..99.8th percentile to 0..255 (one scale per frame, so brightness changes show), and the
    mask (255 the object, 100 other objects). Outside the frame is 0 in both."""
    plane = image.astype(np.float32)
    low, high = np.percentile(plane, (1.0, 99.8))
    scaled = np.clip((plane - low) / max(float(high - low), 1e-6), 0.0, 1.0) * 255.0
    half = size // 2
    img = np.pad(scaled.astype(np.uint8), half)
    mask = np.pad(lab, half)
    top = np.rint(centroids).astype(np.int64)  # the window's corner in padded coordinates
    offsets = np.arange(size)
    rows = top[:, 0, None] + offsets[None, :]  # (N, size)
    cols = top[:, 1, None] + offsets[None, :]
    window = (rows[:, :, None], cols[:, None, :])
    out = np.empty((len(ids), size, size, 2), np.uint8)
    out[..., 0] = img[window]
    objects = mask[window]
    out[..., 1] = np.where(objects == ids[:, None, None], _OWN, np.where(objects > 0, _OTHER, 0))
    return out


@dataclass(frozen=True)
class LinkParams:
    """Linking settings; distances in pixels at the nuclear model's 0.65 um/px.

    HeLa nuclei (~15 um, ~25 px across) move a few pixels between frames a few minutes apart.
    """

    max_distance: float = 25.0
    """Farthest a cell is linked between consecutive frames (px): about a nucleus diameter.
    The original used 50; a shorter reach leaves fewer wrong links for the assignment to pick
    where cells crowd, and still reaches a nucleus moving 8 px per frame."""
    gap_frames: int = 2
    """Frames a track may be missed and still be re-joined (0 = no gap closing)."""
    gap_penalty: float = 0.2
    """Cost added per missed frame, so a direct link beats a gap-closing one."""
    area_weight: float = 0.3
    """Weight of the squared log area ratio in a link's cost (0 = distance only)."""
    velocity: float = 0.5
    """Fraction of a track's last displacement carried into its predicted position."""
    divisions: bool = True
    """Detect divisions (False: every new cell starts a parentless track)."""
    division_distance: float = 25.0
    """Farthest a daughter's centroid lies from the mother's last centroid (px)."""
    division_threshold: float = 0.0
    """Smallest division score accepted; higher finds fewer, surer divisions."""
    min_daughter_frames: int = 3
    """A division whose daughter is gone again sooner (before the movie ends) is undone: a
    nucleus split in two by the segmentation for a frame, not a mitosis."""

    def __post_init__(self) -> None:
        if not self.max_distance > 0 or not self.division_distance > 0:
            raise ValueError("max_distance and division_distance must be positive (pixels)")
        if self.gap_frames < 0:
            raise ValueError("gap_frames must be 0 (no gap closing) or more")
        if self.min_daughter_frames < 1:
            raise ValueError("min_daughter_frames must be 1 (keep every division) or more")
        if min(self.gap_penalty, self.area_weight, self.velocity) < 0:
            raise ValueError("gap_penalty, area_weight and velocity must not be negative")


@dataclass(frozen=True)
class Track:
    """One track: frames `first`..`last` (it may skip gap frames), its parent and daughters."""

    label: int
    first: int
    last: int
    parent: int | None
    daughters: tuple[int, ...]


@dataclass(frozen=True)
class Tracking:
    """Tracks by label (1.., in order of first appearance) and, per frame, which segmentation
    label became which track label."""

    tracks: dict[int, Track]
    assignments: list[dict[int, int]]

    @property
    def dtype(self) -> np.dtype:
        """uint16 for the tracked label images, uint32 past 65535 tracks."""
        top = max(self.tracks, default=0)
        return np.dtype(np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32)

    def relabel(self, frame: int, labels: np.ndarray) -> np.ndarray:
        """A segmentation frame with every object's label replaced by its track label.

        Objects without a track (none are left out by `link`, but a caller may drop some)
        become background.
        """
        if not 0 <= frame < len(self.assignments):
            raise ValueError(f"frame {frame} is outside the movie (0..{len(self.assignments) - 1})")
        return relabel(labels, self.assignments[frame], self.dtype)


def relabel(labels: np.ndarray, mapping: dict[int, int], dtype: np.dtype) -> np.ndarray:
    """``labels`` with each value ``mapping`` names replaced by what it maps to; every other
    value becomes 0 (background).

    Labels are small integers (a frame's objects, a movie's tracks), so one lookup table indexed
    by the label image does it in a single gather, several times faster than a binary search
    per pixel; labels past :data:`LOOKUP_LIMIT` (or not integers) take the search instead.
    """
    lab = np.asarray(labels)
    out_dtype = np.dtype(dtype)
    if not mapping or lab.size == 0:
        return np.zeros(lab.shape, out_dtype)
    keys = np.fromiter(mapping, np.int64, len(mapping))
    values = np.fromiter(mapping.values(), np.int64, len(mapping)).astype(out_dtype)
    if lab.dtype.kind in "ui":
        low, high = int(lab.min()), int(lab.max())
        if low >= 0 and high <= LOOKUP_LIMIT:
            table = np.zeros(high + 1, out_dtype)
            inside = keys <= high
            table[keys[inside]] = values[inside]
            return table[lab]
    order = np.argsort(keys)
    keys, values = keys[order], values[order]
    out = np.zeros(lab.shape, out_dtype)
    pos = np.clip(np.searchsorted(keys, lab), 0, len(keys) - 1)
    hit = keys[pos] == lab
    out[hit] = values[pos[hit]]
    return out


@dataclass(frozen=True)
class DivisionCandidates:
    """One frame's division candidates, for a `DivisionScorer`: mother and daughters as the
    linker sees them, each row one (mother, larger daughter, smaller daughter)."""

    frame: int
    """The daughters' frame; each mother was last seen the frame before."""
    mother_labels: IntArray
    """(n,) the mother's segmentation label in her last frame."""
    daughter_labels: IntArray
    """(n, 2) the daughters' segmentation labels, the larger first."""
    features: NDArray[np.float32]
    """(n, len(DIVISION_FEATURES)) the scalar cues, in `DIVISION_FEATURES` order."""
    patches: NDArray[np.uint8] | None
    """(n, 3, P, P, 2) mother, larger and smaller daughter's `Cells.patches`; None when the
    frames were measured without patches."""

    def __len__(self) -> int:
        return len(self.mother_labels)


class DivisionScorer(Protocol):
    """Scores one frame's division candidates: the probability that each is a true division.

    Given to `link`, it replaces the feature score: a candidate's score is then the logit of
    its probability (accepted from `LinkParams.division_threshold`, 0 = even odds), and the
    cost of taking cells from other tracks is the scorer's to weigh (it is among the
    features). A scorer that looks at `patches` needs frames measured with `patch_size`.
    """

    def __call__(self, candidates: DivisionCandidates) -> NDArray[np.float64]: ...


@dataclass
class _State:
    """Per-track working values, grown as tracks are created (index = creation order)."""

    pos: list[tuple[float, float]] = field(default_factory=list)
    vel: list[tuple[float, float]] = field(default_factory=list)
    area: list[float] = field(default_factory=list)
    intensity: list[float] = field(default_factory=list)  # at the last frame
    intensity_mean: list[float] = field(default_factory=list)  # before the last frame
    roundness: list[float] = field(default_factory=list)
    roundness_mean: list[float] = field(default_factory=list)
    edge: list[bool] = field(default_factory=list)
    first: list[int] = field(default_factory=list)
    last: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)  # -1 = none
    daughters: list[list[int]] = field(default_factory=list)
    label: list[int] = field(default_factory=list)  # segmentation label at the last frame
    patch: list[NDArray[np.uint8] | None] = field(default_factory=list)  # at the last frame

    def new(self, cells: Cells, i: int, parent: int = -1) -> int:
        key = len(self.first)
        row = cells.rows
        self.label.append(row.label[i])
        self.patch.append(None if cells.patches is None else cells.patches[i])
        self.pos.append((row.y[i], row.x[i]))
        self.vel.append((0.0, 0.0))
        self.area.append(row.area[i])
        self.intensity.append(row.intensity[i])
        self.intensity_mean.append(row.intensity[i])
        self.roundness.append(row.roundness[i])
        self.roundness_mean.append(row.roundness[i])
        self.edge.append(row.edge[i])
        self.first.append(cells.frame)
        self.last.append(cells.frame)
        self.parent.append(parent)
        self.daughters.append([])
        return key

    def extend(self, key: int, cells: Cells, i: int) -> None:
        row = cells.rows
        y, x = row.y[i], row.x[i]
        py, px = self.pos[key]
        dt = cells.frame - self.last[key]
        self.vel[key] = ((y - py) / dt, (x - px) / dt)
        self.pos[key] = (y, x)
        self.area[key] = row.area[i]
        self.intensity_mean[key] = _blend(self.intensity_mean[key], self.intensity[key])
        self.intensity[key] = row.intensity[i]
        self.roundness_mean[key] = _blend(self.roundness_mean[key], self.roundness[key])
        self.roundness[key] = row.roundness[i]
        self.edge[key] = row.edge[i]
        self.last[key] = cells.frame
        self.label[key] = row.label[i]
        self.patch[key] = None if cells.patches is None else cells.patches[i]


def _blend(mean: float, value: float, weight: float = 0.25) -> float:
    return value if math.isnan(mean) else (1 - weight) * mean + weight * value


class Linker:
    """Links a movie's frames as they come: `add` each frame's cells in order, `finish` once.

    A linker may be fed the first frames while the rest are still being segmented and the
    others later: the tracks are the same as linking them all in one go (`link`). What
    `finish` does last (undoing divisions that were a nucleus cut in two) needs every frame.
    """

    def __init__(
        self, params: LinkParams = LinkParams(), division_scorer: DivisionScorer | None = None
    ) -> None:
        self.params = params
        self.division_scorer = division_scorer
        self._state = _State()
        self._assigned: list[dict[int, int]] = []  # per frame: cell index -> track key
        self._open: list[int] = []
        self._seen: list[Cells] = []
        self._finished = False

    @property
    def frames(self) -> int:
        """Frames linked so far (the next `add` takes frame `frames`)."""
        return len(self._seen)

    def add(self, cells: Cells) -> None:
        """Link the next frame's cells to the open tracks (divisions included)."""
        if self._finished:
            raise RuntimeError("this linker has finished: start a new one")
        t, params, state = len(self._seen), self.params, self._state
        if cells.frame != t:
            raise ValueError(
                f"frames must be given in order, one per frame: item {t} is frame {cells.frame}"
            )
        self._seen.append(cells)
        open_keys = self._open
        links = _assign(state, open_keys, cells, range(len(cells)), params)
        divided: list[tuple[int, tuple[int, int]]] = []
        if params.divisions and t > 0 and len(cells):
            divided = _divisions(state, open_keys, links, cells, params, self.division_scorer)
        capped = {mother for mother, _ in divided}
        in_pairs = {cell for _, pair in divided for cell in pair}
        robbed = [links.pop(c)[0] for c in in_pairs if c in links and links[c][0] not in capped]
        for cell in in_pairs:
            links.pop(cell, None)
        if robbed:  # tracks whose cell became a daughter get a second chance
            free = [c for c in range(len(cells)) if c not in links and c not in in_pairs]
            links.update(_assign(state, robbed, cells, free, params))
        frame_keys = {cell: key for cell, (key, _) in links.items()}
        for cell, key in frame_keys.items():
            state.extend(key, cells, cell)
        created = []
        for mother, pair in divided:
            for cell in pair:
                daughter = state.new(cells, cell, parent=mother)
                state.daughters[mother].append(daughter)
                frame_keys[cell] = daughter
                created.append(daughter)
        for cell in range(len(cells)):
            if cell not in frame_keys:
                frame_keys[cell] = state.new(cells, cell)
                created.append(frame_keys[cell])
        self._assigned.append(frame_keys)
        self._open = [
            k
            for k in [*open_keys, *created]
            if k not in capped and state.last[k] >= t - params.gap_frames
        ]

    def finish(self) -> Tracking:
        """The tracks of every frame added: call once, after the movie's last frame."""
        if self._finished:
            raise RuntimeError("this linker has finished already")
        self._finished = True
        if self.params.divisions:
            _undo_false_divisions(
                self._state, self._assigned, self._seen, self.params.min_daughter_frames
            )
        return _tracking(self._state, self._assigned, self._seen)


def link(
    frames: Iterable[Cells],
    params: LinkParams = LinkParams(),
    progress: Callable[[int, int], None] | None = None,
    division_scorer: DivisionScorer | None = None,
    total: int | None = None,
    linker: Linker | None = None,
) -> Tracking:
    """Link every frame's cells into tracks with divisions; `progress(done, total)` per frame.

    `frames` gives one `Cells` per frame of the movie, in order (the t-th has `.frame` t);
    an iterator is linked as it yields, so frames may still be read while earlier ones link
    (give `total` for the progress then). `division_scorer` (default: the feature score)
    decides which candidates divided. `linker`: one that linked the movie's first frames
    already (its params and scorer are used); `frames` then starts at its next frame.
    """
    if linker is None:
        linker = Linker(params, division_scorer)
    if total is None:
        total = linker.frames + len(frames) if isinstance(frames, Sized) else 0
    for cells in frames:
        linker.add(cells)
        if progress is not None:
            progress(linker.frames, max(total, linker.frames))
    return linker.finish()


def _assign(
    state: _State,
    open_keys: Sequence[int],
    cells: Cells,
    among: Sequence[int],
    params: LinkParams,
) -> dict[int, tuple[int, float]]:
    """Cell index -> (track key, link cost) for the cells (of `among`) that continue an open
    track: one linear assignment with birth and death blocks."""
    if not len(open_keys) or not len(among):
        return {}
    keys = np.asarray(open_keys)
    subset = np.asarray(among, np.int64)
    pos = np.asarray([state.pos[k] for k in open_keys])
    vel = np.asarray([state.vel[k] for k in open_keys])
    dt = cells.frame - np.asarray([state.last[k] for k in open_keys], np.float64)
    area = np.asarray([state.area[k] for k in open_keys])
    predicted = pos + params.velocity * vel * dt[:, None]
    centroids = cells.centroids[subset]
    dy = predicted[:, 0, None] - centroids[None, :, 0]
    dx = predicted[:, 1, None] - centroids[None, :, 1]
    d2 = dy * dy + dx * dx
    reach2 = params.max_distance**2 * dt
    feasible = d2 <= reach2[:, None]
    rows = np.flatnonzero(feasible.any(1))
    cols = np.flatnonzero(feasible.any(0))
    if rows.size == 0:
        return {}
    feasible = feasible[np.ix_(rows, cols)]
    ratio = np.log(cells.areas[subset[cols]][None, :] / area[rows][:, None])
    cost = (
        d2[np.ix_(rows, cols)] / reach2[rows][:, None]
        + params.area_weight * ratio**2
        + params.gap_penalty * (dt[rows] - 1)[:, None]
    )
    return {
        int(subset[cols[j]]): (int(keys[rows[i]]), float(cost[i, j]))
        for i, j in _link_pairs(cost, feasible)
    }


def _link_pairs(cost: FloatArray, feasible: NDArray[np.bool_]) -> list[tuple[int, int]]:
    """The (track, cell) pairs of the cheapest assignment in which a track may also end and
    a cell begin a track, the two together costing 1.

    That is the matching with the least sum of (cost - 1) over its pairs, so a pair costing 1
    or more never belongs to it and is dropped first. A track and a cell then left reaching
    only each other (most of them) are a pair; one linear assignment with birth and death
    blocks settles the rest."""
    feasible = feasible & (cost < 1.0)
    lone = feasible & (feasible.sum(1) == 1)[:, None] & (feasible.sum(0) == 1)[None, :]
    lone_rows, lone_cols = np.nonzero(lone)
    pairs = list(zip(lone_rows.tolist(), lone_cols.tolist(), strict=True))
    rows = np.flatnonzero(~lone.any(1) & feasible.any(1))
    cols = np.flatnonzero(~lone.any(0) & feasible.any(0))
    if rows.size == 0 or cols.size == 0:
        return pairs
    n_t, n_c = rows.size, cols.size
    big = np.full((n_t + n_c, n_t + n_c), _UNREACHABLE)
    big[:n_t, :n_c] = np.where(feasible[np.ix_(rows, cols)], cost[np.ix_(rows, cols)], _UNREACHABLE)
    big[np.arange(n_t), n_c + np.arange(n_t)] = 0.5  # death
    big[n_t + np.arange(n_c), np.arange(n_c)] = 0.5  # birth
    big[n_t:, n_c:] = 0.0
    # Imported here: segmentation consumers measure movie frames with this module but never
    # link, and scipy.optimize is 20 MiB of their resident memory.
    from scipy.optimize import linear_sum_assignment

    r, c = linear_sum_assignment(big)
    keep = (r < n_t) & (c < n_c)
    r, c = r[keep], c[keep]
    good = big[r, c] < _UNREACHABLE
    return pairs + list(zip(rows[r[good]].tolist(), cols[c[good]].tolist(), strict=True))


def _divisions(
    state: _State,
    open_keys: list[int],
    links: dict[int, tuple[int, float]],
    cells: Cells,
    params: LinkParams,
    scorer: DivisionScorer | None = None,
) -> list[tuple[int, tuple[int, int]]]:
    """(mother key, (daughter cell, daughter cell)) for the divisions found in this frame.

    A mother is a track seen in the previous frame whose continuation shrank (one daughter
    took its place), is cut by the frame's edge (sizes unknown), or which has none. Its
    daughters are its continuation and a nearby cell, or two nearby cells; a nearby cell may
    be unmatched or taken from another track's weak link (that track then gets a second
    chance). Pairs are taken best score first, each mother and cell once.
    """
    t = cells.frame
    own = {key: cell for cell, (key, _) in links.items()}
    mothers = [
        k
        for k in open_keys
        if state.last[k] == t - 1
        and (
            k not in own
            or cells.areas[own[k]] < _SHRUNK * state.area[k]
            or state.edge[k]
            or cells.edge[own[k]]
        )
    ]
    if not mothers:
        return []
    mpos = np.asarray([state.pos[k] for k in mothers])
    near = ((mpos[:, None, :] - cells.centroids[None, :, :]) ** 2).sum(-1)
    near = near <= params.division_distance**2
    taking = np.zeros(len(cells))  # what taking each cell from another track costs
    for cell, (_, cost) in links.items():
        taking[cell] = _TAKE_WEIGHT * max(0.0, 1.0 - cost)
    proposed: list[tuple[int, int, int, bool]] = []  # (mother key, larger, smaller, own)
    for m, key in enumerate(mothers):
        mine = own.get(key)
        nearby = [int(c) for c in np.flatnonzero(near[m]) if c != mine]
        if mine is not None:
            pairs = [(mine, b) for b in nearby]
        else:
            pairs = [(a, b) for i, a in enumerate(nearby) for b in nearby[i + 1 :]]
        for a, b in pairs:
            big, small = (a, b) if (cells.areas[a], -a) >= (cells.areas[b], -b) else (b, a)
            proposed.append((key, big, small, mine is not None))
    if not proposed:
        return []
    scores = np.empty(len(proposed))
    features = np.empty((len(proposed), len(DIVISION_FEATURES)), np.float32)
    for i, (key, a, b, has_own) in enumerate(proposed):
        mine = own.get(key)
        take_a = 0.0 if a == mine else float(taking[a])
        take_b = 0.0 if b == mine else float(taking[b])
        feature_score = _division_score(state, key, cells, a, b, params)
        scores[i] = feature_score - (take_a + take_b)
        if scorer is not None:
            features[i] = _division_features(
                state, key, cells, a, b, params, feature_score, (take_a, take_b), has_own
            )
    if scorer is not None:
        batch = _candidates(state, cells, proposed, features)
        p = np.asarray(scorer(batch), np.float64).reshape(-1)
        if p.shape != (len(proposed),) or not np.all((p >= 0) & (p <= 1)):
            raise ValueError(
                f"the division scorer must give one probability in [0, 1] per candidate "
                f"({len(proposed)}); got shape {p.shape}"
            )
        q = np.clip(p, 1e-6, 1 - 1e-6)
        scores = np.log(q / (1 - q))
    candidates = [
        (float(score), key, (min(a, b), max(a, b)))
        for score, (key, a, b, _) in zip(scores, proposed, strict=True)
        if score >= params.division_threshold
    ]
    found: list[tuple[int, tuple[int, int]]] = []
    used_mothers: set[int] = set()
    used_cells: set[int] = set()
    for _, key, pair in sorted(candidates, key=lambda c: -c[0]):
        if key in used_mothers or used_cells.intersection(pair):
            continue
        used_mothers.add(key)
        used_cells.update(pair)
        found.append((key, pair))
    return found


def _undo_false_divisions(
    state: _State, assigned: list[dict[int, int]], frames: Sequence[Cells], min_frames: int
) -> None:
    """Undo divisions that were a nucleus cut in two by the segmentation, not a mitosis.

    Two signs: a daughter gone again within `min_frames` frames (before the movie's end), or
    the next frame showing one daughter only, grown back to about the mother's size. The
    mother then continues with that daughter; the other piece becomes a track of its own.
    """
    total = len(frames)
    for mother in range(len(state.first)):
        while len(kids := state.daughters[mother]) == 2:
            heir = _remerged(state, assigned, frames, mother, kids)
            if heir is None:
                short = [
                    d
                    for d in kids
                    if not state.daughters[d]
                    and state.last[d] - state.first[d] + 1 < min_frames
                    and state.last[d] < total - 1
                    and not state.edge[d]  # gone out of view is not gone
                ]
                if not short:
                    break
                piece = short[0] if len(short) == 1 else min(kids, key=lambda d: state.last[d])
                heir = kids[0] if kids[1] == piece else kids[1]
            piece = kids[0] if kids[1] == heir else kids[1]
            for frame in assigned[state.first[heir] :]:
                for cell, key in frame.items():
                    if key == heir:
                        frame[cell] = mother
            state.parent[piece] = -1
            state.daughters[mother] = state.daughters[heir]
            for grandchild in state.daughters[heir]:
                state.parent[grandchild] = mother
            state.daughters[heir] = []
            state.last[mother] = state.last[heir]
            state.first[heir] = _MERGED


def _remerged(
    state: _State,
    assigned: list[dict[int, int]],
    frames: Sequence[Cells],
    mother: int,
    kids: list[int],
) -> int | None:
    """The daughter that alone, the frame after the division, is about the mother's size."""
    after = state.first[kids[0]] + 1
    if after >= len(frames):
        return None
    cells = {key: cell for cell, key in assigned[after].items() if key in kids}
    if len(cells) != 1:
        return None
    ((kid, cell),) = cells.items()
    return kid if frames[after].areas[cell] >= _REMERGED * state.area[mother] else None


def _division_score(
    state: _State, key: int, cells: Cells, a: int, b: int, params: LinkParams
) -> float:
    """How division-like it is that track `key` split into cells `a` and `b` (0 = borderline).

    Each cue is a penalty that is 0 for a textbook division and grows as the cue departs from
    it (the divisors are how far a cue may stray for a penalty of 1); the mother's brightening
    and rounding against her own recent past add a bonus; the rest is the allowance. Objects
    cut by the frame's edge show only part of their size: their size cues count a quarter,
    and the allowance drops to a quarter, so that the mother's cues must carry the decision.
    """
    m_area, a_area, b_area, cos, separation, offset, apart = _geometry(state, key, cells, a, b)
    opposite = (1 + cos) / 0.7  # on opposite sides of the mother
    centred = offset / max(separation / 2, 0.25 * params.division_distance)
    penalty = opposite**2 + centred**2
    cut = bool(state.edge[key] or cells.edge[a] or cells.edge[b])
    total = math.log((a_area + b_area) / m_area) / 0.35  # together about the mother
    balance = math.log(a_area / b_area) / 0.4  # alike
    larger = max(0.0, (max(a_area, b_area) / m_area - 0.75) / 0.15)  # each smaller
    # Apart, not two halves of one nucleus (those overlap as discs of their areas).
    overlap = max(0.0, (0.85 - apart) / 0.1)
    penalty += (total**2 + balance**2 + larger**2 + overlap**2) / (4.0 if cut else 1.0)
    bonus = 0.0
    if not math.isnan(state.intensity[key]) and state.intensity_mean[key] > 0:
        brighter = math.log(state.intensity[key] / state.intensity_mean[key])
        bonus += min(2.0, max(-1.0, brighter / 0.15))
    rounder = (state.roundness[key] - state.roundness_mean[key]) / 0.1
    bonus += min(1.0, max(-1.0, rounder))
    return (1.0 if cut else 4.0) + bonus - penalty


class _Geometry(NamedTuple):
    """Where and how big a candidate's mother and daughters are, for scoring and for the cues."""

    m_area: float
    a_area: float
    b_area: float
    cos: float  # of the angle daughter a - mother - daughter b (-1: opposite sides)
    separation: float  # between the daughters (px)
    offset: float  # of the daughters' midpoint from the mother (px)
    apart: float  # separation over the sum of the daughters' radii as discs


def _geometry(state: _State, key: int, cells: Cells, a: int, b: int) -> _Geometry:
    m_area = state.area[key]
    my, mx = state.pos[key]
    ay, ax = float(cells.centroids[a, 0]), float(cells.centroids[a, 1])
    by, bx = float(cells.centroids[b, 0]), float(cells.centroids[b, 1])
    a_area, b_area = float(cells.areas[a]), float(cells.areas[b])
    na, nb = math.hypot(ay - my, ax - mx), math.hypot(by - my, bx - mx)
    dot = (ay - my) * (by - my) + (ax - mx) * (bx - mx)
    cos = dot / (na * nb) if na > 0 and nb > 0 else 0.0
    separation = math.hypot(ay - by, ax - bx)
    offset = math.hypot((ay + by) / 2 - my, (ax + bx) / 2 - mx)
    apart = separation / (math.sqrt(a_area / math.pi) + math.sqrt(b_area / math.pi))
    return _Geometry(m_area, a_area, b_area, cos, separation, offset, apart)


def _division_features(
    state: _State,
    key: int,
    cells: Cells,
    a: int,
    b: int,
    params: LinkParams,
    score: float,
    taking: tuple[float, float],
    own: bool,
) -> list[float]:
    """The `DIVISION_FEATURES` of mother `key` dividing into `a` (the larger) and `b`."""
    m_area, a_area, b_area, cos, separation, offset, apart = _geometry(state, key, cells, a, b)
    m_int = state.intensity[key]

    def log_ratio(value: float, reference: float) -> float:
        ok = not (math.isnan(value) or math.isnan(reference)) and value > 0 and reference > 0
        return math.log(value / reference) if ok else 0.0

    cut = bool(state.edge[key] or cells.edge[a] or cells.edge[b])
    return [
        score,
        cos,
        offset / max(separation / 2, 0.25 * params.division_distance),
        math.log((a_area + b_area) / m_area),
        math.log(a_area / b_area),
        a_area / m_area,
        apart,
        separation / params.division_distance,
        log_ratio(m_int, state.intensity_mean[key]),
        state.roundness[key] - state.roundness_mean[key],
        state.roundness[key],
        float(cells.roundness[a]),
        float(cells.roundness[b]),
        log_ratio(float(cells.intensities[a]), m_int),
        log_ratio(float(cells.intensities[b]), m_int),
        float(cut),
        float(own),
        taking[0],
        taking[1],
    ]


def _candidates(
    state: _State,
    cells: Cells,
    proposed: Sequence[tuple[int, int, int, bool]],
    features: NDArray[np.float32],
) -> DivisionCandidates:
    """The proposed (mother key, larger, smaller, own) rows as a scorer's batch."""
    keys = [p[0] for p in proposed]
    pairs = np.asarray([(p[1], p[2]) for p in proposed], np.int64)
    patches = None
    if cells.patches is not None:
        mothers = [m for k in keys if (m := state.patch[k]) is not None]
        if len(mothers) != len(keys):
            raise ValueError(
                f"frame {cells.frame}: a mother was measured without patches; measure every "
                "frame with the same patch_size"
            )
        patches = np.stack(
            [np.stack(mothers), cells.patches[pairs[:, 0]], cells.patches[pairs[:, 1]]], axis=1
        ).astype(np.uint8)
    return DivisionCandidates(
        frame=cells.frame,
        mother_labels=np.asarray([state.label[k] for k in keys], np.int64),
        daughter_labels=cells.labels[pairs],
        features=features,
        patches=patches,
    )


def _tracking(state: _State, assigned: list[dict[int, int]], frames: Sequence[Cells]) -> Tracking:
    """Number tracks 1.. in order of first appearance and build the public records."""
    kept = [k for k in range(len(state.first)) if state.first[k] != _MERGED]
    order = sorted(kept, key=lambda k: (state.first[k], k))
    label = {key: i + 1 for i, key in enumerate(order)}
    tracks = {}
    for key in order:
        parent = state.parent[key]
        tracks[label[key]] = Track(
            label=label[key],
            first=state.first[key],
            last=state.last[key],
            parent=label[parent] if parent >= 0 else None,
            daughters=tuple(sorted(label[d] for d in state.daughters[key])),
        )
    assignments = [
        {int(cells.labels[i]): label[key] for i, key in sorted(links.items())}
        for cells, links in zip(frames, assigned, strict=True)
    ]
    return Tracking(tracks, assignments)


def lineage_json(tracking: Tracking) -> dict[str, dict[str, object]]:
    """The original's lineage.json: per track label (a string) its frames and family."""
    frames = _frames_by_label(tracking)
    out: dict[str, dict[str, object]] = {}
    for label, track in sorted(tracking.tracks.items()):
        daughters = list(track.daughters)
        out[str(label)] = {
            "label": label,
            "frames": frames[label],
            "daughters": daughters,
            "capped": bool(daughters),
            "frame_div": min(tracking.tracks[d].first for d in daughters) if daughters else None,
            "parent": track.parent,
        }
    return out


def ctc_tracking(tracking: Tracking) -> Tracking:
    """The same tracking in the Cell Tracking Challenge's form: no track has a gap.

    The CTC requires a label in every frame from its track's first to its last, so a track
    re-joined after a gap continues under a new label whose parent is the part before the gap
    (a single daughter, which the CTC reads as a gap, not a division). New labels follow the
    largest one, in order of first appearance; a tracking without gaps comes back unchanged.
    Write the `maskTTT.tif` frames with its `relabel` (and its `dtype`): `ctc_res_track`
    describes this form.
    """
    runs: list[tuple[int, int, int]] = []  # (first frame, track label, last frame) per piece
    for label, frames in _frames_by_label(tracking).items():
        if not frames:
            raise ValueError(f"track {label} has no object in any frame")
        start = frames[0]
        for before, after in pairwise(frames):
            if after != before + 1:
                runs.append((start, label, before))
                start = after
        runs.append((start, label, frames[-1]))
    pieces: dict[int, list[tuple[int, int, int]]] = {}  # label -> [(new label, first, last)]
    top = max(tracking.tracks, default=0)
    for first, label, last in sorted(runs):
        if label in pieces:
            top += 1
            pieces[label].append((top, first, last))
        else:
            pieces[label] = [(label, first, last)]
    if all(len(p) == 1 for p in pieces.values()):
        return tracking
    tracks: dict[int, Track] = {}
    for label, parts in pieces.items():
        old = tracking.tracks[label]
        for i, (new, first, last) in enumerate(parts):
            if i:
                parent: int | None = parts[i - 1][0]
            else:
                parent = None if old.parent is None else pieces[old.parent][-1][0]
            daughters = (parts[i + 1][0],) if i + 1 < len(parts) else old.daughters
            tracks[new] = Track(new, first, last, parent, daughters)
    whole = {label: parts[0][0] for label, parts in pieces.items() if len(parts) == 1}
    assignments = []
    for t, mapping in enumerate(tracking.assignments):
        assignments.append(
            {
                obj: whole[label]
                if label in whole
                else next(n for n, first, last in pieces[label] if first <= t <= last)
                for obj, label in mapping.items()
            }
        )
    return Tracking(dict(sorted(tracks.items())), assignments)


def _frames_by_label(tracking: Tracking) -> dict[int, list[int]]:
    frames: dict[int, list[int]] = {label: [] for label in sorted(tracking.tracks)}
    for t, mapping in enumerate(tracking.assignments):
        for label in mapping.values():
            frames[label].append(t)
    return frames


def ctc_res_track(tracking: Tracking) -> str:
    """Cell Tracking Challenge res_track.txt: one `L B E P` line per track (P = 0: no parent),
    of the tracking's CTC form (`ctc_tracking`), the one to write the `maskTTT.tif` frames of."""
    return "".join(
        f"{t.label} {t.first} {t.last} {t.parent or 0}\n"
        for _, t in sorted(ctc_tracking(tracking).tracks.items())
    )
