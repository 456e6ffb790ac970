"""Division candidates harvested from generated movies, labelled by the movies' lineage.

The candidates are exactly those the linker weighs: the movie's frames are measured with
patches and linked with a scorer that records every candidate and answers with the feature
score's own decision, so the linking (and so the candidates of later frames) is the default
linker's. A candidate is a true division when both daughters are true tracks that begin in
this frame and whose parent is the mother's true track. Pure numpy: no TensorFlow here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
from numpy.typing import NDArray

from consumers.processing.linking import (
    DIVISION_FEATURES,
    DivisionCandidates,
    LinkParams,
    link,
    measure,
)
from evaluation.movies import TrackTruth, generate_movie

_SCORE = DIVISION_FEATURES.index("score")
_TAKE = [DIVISION_FEATURES.index("take_a"), DIVISION_FEATURES.index("take_b")]


@dataclass
class Harvest:
    """Candidates of many movies: patches (n, 3, P, P, 2) uint8, features (n, F), labels (n,)
    (1 = a true division), and the movies' true divisions (some never become candidates)."""

    patches: NDArray[np.uint8]
    features: NDArray[np.float32]
    labels: NDArray[np.float32]
    true_divisions: int

    def __len__(self) -> int:
        return len(self.labels)


def feature_probability(candidates: DivisionCandidates) -> NDArray[np.float64]:
    """The feature score's decision as a probability (its logit is the score less the cost of
    taking cells), so that linking with it links as the default does."""
    f = candidates.features.astype(np.float64)
    score = f[:, _SCORE] - f[:, _TAKE].sum(1)
    return 1.0 / (1.0 + np.exp(-np.clip(score, -30, 30)))


class Recorder:
    """A scorer that keeps every batch it is given and answers with the feature score."""

    def __init__(self) -> None:
        self.batches: list[DivisionCandidates] = []

    def __call__(self, candidates: DivisionCandidates) -> NDArray[np.float64]:
        self.batches.append(candidates)
        return feature_probability(candidates)


def true_division(
    tracks: Mapping[int, TrackTruth], frame: int, mother: int, daughters: tuple[int, int]
) -> bool:
    for d in daughters:
        truth = tracks.get(d)
        if truth is None or truth.parent != mother or truth.first != frame:
            return False
    return True


def harvest_movie(
    images: np.ndarray,
    labels: np.ndarray,
    tracks: Mapping[int, TrackTruth],
    patch_size: int,
    params: LinkParams | None = None,
) -> Harvest:
    """The labelled candidates of one movie's (possibly perturbed) masks."""
    frames = [measure(labels[t], images[t], t, patch_size) for t in range(len(labels))]
    recorder = Recorder()
    link(frames, params or LinkParams(), division_scorer=recorder)
    size = patch_size
    patches = [np.zeros((0, 3, size, size, 2), np.uint8)]
    features = [np.zeros((0, len(DIVISION_FEATURES)), np.float32)]
    truth: list[float] = []
    for batch in recorder.batches:
        assert batch.patches is not None
        patches.append(batch.patches)
        features.append(batch.features)
        for mother, pair in zip(batch.mother_labels, batch.daughter_labels, strict=True):
            truth.append(float(true_division(tracks, batch.frame, int(mother), tuple(pair))))
    true = len({t.parent for t in tracks.values() if t.parent})
    return Harvest(
        np.concatenate(patches), np.concatenate(features), np.asarray(truth, np.float32), true
    )


def concatenate(parts: list[Harvest]) -> Harvest:
    return Harvest(
        np.concatenate([p.patches for p in parts]),
        np.concatenate([p.features for p in parts]),
        np.concatenate([p.labels for p in parts]),
        sum(p.true_divisions for p in parts),
    )


def harvest_seed(
    seed: int,
    scenarios: Mapping[str, tuple[Mapping[str, float], float, float]],
    frames: int,
    patch_size: int,
    perturb: Callable[[np.ndarray, int, float, float], np.ndarray],
) -> Harvest:
    """Candidates of one seed's movie under every scenario (overrides, missed, split)."""
    parts = []
    for overrides, missed, split in scenarios.values():
        movie = generate_movie(seed, frames=frames, **overrides)  # type: ignore[arg-type]
        labels = movie.labels
        if missed or split:
            labels = perturb(labels, seed, missed, split)
        parts.append(harvest_movie(movie.images, labels, movie.tracks, patch_size))
    return concatenate(parts)


def harvest(
    seeds: list[int],
    scenarios: Mapping[str, tuple[Mapping[str, float], float, float]],
    frames: int,
    patch_size: int,
    perturb: Callable[[np.ndarray, int, float, float], np.ndarray],
    jobs: int = 1,
) -> Harvest:
    """Candidates of every seed under every scenario, on ``jobs`` processes."""
    work = partial(
        harvest_seed, scenarios=scenarios, frames=frames, patch_size=patch_size, perturb=perturb
    )
    if jobs <= 1:
        return concatenate([work(seed) for seed in seeds])
    with ProcessPoolExecutor(jobs) as pool:
        return concatenate(list(pool.map(work, seeds)))
