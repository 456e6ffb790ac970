"""The live-cell movie generator: deterministic, CTC-valid ground truth, realistic dynamics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.measure import label as connected_components

from consumers.ctc import check_tracks, parse_tracks
from evaluation.movies import Movie, MovieParams, generate_movie, write_ctc_truth


@pytest.fixture(scope="module")
def movie() -> Movie:
    return generate_movie(1)


def _centroid(labels: np.ndarray, label: int) -> np.ndarray:
    return np.argwhere(labels == label).mean(axis=0)


def test_same_seed_same_movie_other_seed_other_movie() -> None:
    a = generate_movie(3, frames=6, shape=(96, 128))
    b = generate_movie(3, frames=6, shape=(96, 128))
    c = generate_movie(4, frames=6, shape=(96, 128))
    assert np.array_equal(a.images, b.images)
    assert np.array_equal(a.labels, b.labels)
    assert a.tracks == b.tracks
    assert not np.array_equal(a.labels, c.labels)
    assert a.images.shape == a.labels.shape == (6, 96, 128)
    assert a.images.dtype == np.uint16 and a.labels.dtype == np.int32


def test_imaging_parameters_leave_the_cells_unchanged() -> None:
    plain = generate_movie(5, frames=5, shape=(96, 96))
    noisy = generate_movie(5, frames=5, shape=(96, 96), photons=30.0, read_noise=10.0)
    assert np.array_equal(plain.labels, noisy.labels)
    assert not np.array_equal(plain.images, noisy.images)


def test_ground_truth_is_a_valid_ctc_pair(movie: Movie) -> None:
    assert check_tracks(movie.labels, movie.tracks) == []
    for label, track in movie.tracks.items():
        present = [t for t in range(movie.labels.shape[0]) if np.any(movie.labels[t] == label)]
        assert present == list(range(track.first, track.last + 1))


def test_every_mask_is_one_connected_piece_of_at_least_min_area(movie: Movie) -> None:
    for frame in movie.labels:
        values, areas = np.unique(frame[frame > 0], return_counts=True)
        assert areas.min() >= movie.params.min_area
        pieces = connected_components(frame, background=0, connectivity=1)
        assert pieces.max() == values.size


def test_default_movie_has_divisions_with_ctc_semantics(movie: Movie) -> None:
    for seed, each in ((1, movie), (0, generate_movie(0))):
        pairs = {m: d for m, d in each.divisions.items() if len(d) == 2}
        assert len(pairs) >= 3, f"seed {seed}: only {len(pairs)} divisions"
        for mother, daughters in pairs.items():
            end = each.tracks[mother].last
            for d in daughters:
                assert each.tracks[d].first == end + 1
                assert each.tracks[d].parent == mother
            # Daughters appear where the mother was, side by side, and share its area.
            before = each.labels[end]
            after = each.labels[end + 1]
            mother_area = np.count_nonzero(before == mother)
            daughter_area = sum(np.count_nonzero(after == d) for d in daughters)
            assert 0.7 < daughter_area / mother_area < 1.4
            for d in daughters:
                assert np.hypot(*(_centroid(after, d) - _centroid(before, mother))) < 25


def test_mother_rounds_up_and_brightens_before_splitting(movie: Movie) -> None:
    rounder = brighter = 0
    pairs = {m: d for m, d in movie.divisions.items() if len(d) == 2}
    for mother in pairs:
        end = movie.tracks[mother].last
        start = end - movie.params.rounding_frames
        if start < movie.tracks[mother].first:
            continue
        image = movie.images.astype(float)
        early, late = movie.labels[start] == mother, movie.labels[end] == mother
        brighter += image[end][late].mean() > image[start][early].mean()
        rounder += _elongation(late) <= _elongation(early) + 0.05
    assert brighter >= 2 and rounder >= 2


def _elongation(mask: np.ndarray) -> float:
    coords = np.argwhere(mask).astype(float)
    eig = np.linalg.eigvalsh(np.cov(coords.T))
    return float(np.sqrt(eig[1] / max(eig[0], 1e-6)))


def test_cells_move_a_few_pixels_per_frame_and_enter_and_leave(movie: Movie) -> None:
    steps = []
    for label, track in movie.tracks.items():
        for t in range(track.first, track.last):
            a, b = _centroid(movie.labels[t], label), _centroid(movie.labels[t + 1], label)
            steps.append(np.hypot(*(b - a)))
    assert 1.0 < float(np.median(steps)) < 5.0
    last = movie.labels.shape[0] - 1
    ended = [t for t in movie.tracks.values() if t.last < last and t.label not in movie.divisions]
    started = [t for t in movie.tracks.values() if t.first > 0 and t.parent == 0]
    assert ended and started


def test_photobleaching_dims_the_cells_over_time() -> None:
    movie = generate_movie(2, frames=20, bleaching=0.05, division_rate=0.0, death_rate=0.0)
    first = movie.images[0][movie.labels[0] > 0].mean()
    last = movie.images[-1][movie.labels[-1] > 0].mean()
    assert last < 0.6 * first


def test_write_ctc_truth_is_readable_back(tmp_path: Path) -> None:
    movie = generate_movie(7, frames=5, shape=(96, 96))
    write_ctc_truth(movie, tmp_path)
    tra = tmp_path / "TRA"
    assert sorted(p.name for p in tra.glob("*.tif")) == [f"man_track{t:03d}.tif" for t in range(5)]
    for t in range(5):
        mask = tifffile.imread(tra / f"man_track{t:03d}.tif")
        assert mask.dtype == np.uint16
        assert np.array_equal(mask, movie.labels[t])
    assert parse_tracks((tra / "man_track.txt").read_text()) == movie.tracks


def test_unknown_or_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown movie parameter.*speeed"):
        generate_movie(0, speeed=2.0)
    with pytest.raises(ValueError, match="persistence"):
        generate_movie(0, persistence=1.5)
    with pytest.raises(ValueError, match="frames"):
        generate_movie(0, frames=0)
    assert MovieParams().rounding_frames >= 1
