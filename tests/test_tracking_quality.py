"""CTC tracking scores: perfect tracking scores 1, and each kind of error lowers its measure."""

from __future__ import annotations

import numpy as np
import pytest

from consumers.ctc import TrackTruth, check_tracks, format_tracks, parse_tracks, tracks_from_labels
from evaluation.movies import generate_movie
from evaluation.tracking_quality import score_tracking

FRAMES, SIZE = 4, 40
# Where each true object sits: (frame, top, left) of an 8x8 square, by true track.
# Track 1 divides into 2 and 3 after frame 1; track 4 moves right; track 5 stays put.
PLACES = {
    1: [(0, 4, 4), (1, 4, 6)],
    2: [(2, 2, 4), (3, 2, 2)],
    3: [(2, 12, 8), (3, 14, 8)],
    4: [(0, 26, 2), (1, 26, 6), (2, 26, 10), (3, 26, 14)],
    5: [(0, 26, 28), (1, 26, 28), (2, 26, 28), (3, 26, 28)],
}
TRUE_TRACKS = {
    1: (1, 0, 1, 0),
    2: (2, 2, 3, 1),
    3: (3, 2, 3, 1),
    4: (4, 0, 3, 0),
    5: (5, 0, 3, 0),
}


def _stack(places: dict[int, list[tuple[int, int, int]]]) -> np.ndarray:
    stack = np.zeros((FRAMES, SIZE, SIZE), dtype=np.int32)
    for label, spots in places.items():
        for t, y, x in spots:
            stack[t, y : y + 8, x : x + 8] = label
    return stack


TRUTH = _stack(PLACES)


def test_the_hand_made_truth_is_valid_ctc() -> None:
    assert check_tracks(TRUTH, TRUE_TRACKS) == []


def test_perfect_tracking_scores_one_whatever_the_label_numbers() -> None:
    renumber = {1: 7, 2: 9, 3: 8, 4: 20, 5: 3}
    lut = np.zeros(int(TRUTH.max()) + 1, dtype=np.int32)
    for old, new in renumber.items():
        lut[old] = new
    pred = lut[TRUTH]
    tracks = {int(lut[k]): (int(lut[k]), b, e, int(lut[p])) for k, b, e, p in TRUE_TRACKS.values()}
    scores = score_tracking(TRUTH, TRUE_TRACKS, pred, tracks)
    assert (scores.tra, scores.det, scores.lnk) == (1.0, 1.0, 1.0)
    assert scores.division_f1 == scores.division_precision == scores.division_recall == 1.0
    assert (scores.true_divisions, scores.found_divisions, scores.matched_divisions) == (1, 1, 1)
    assert scores.bc == 1.0
    assert scores.aogm == 0


def test_a_missed_division_lowers_linking_and_division_recall_not_detection() -> None:
    # The mother's track simply continues into one daughter; the other starts from nothing.
    pred = TRUTH.copy()
    pred[TRUTH == 2] = 1
    tracks = {1: (1, 0, 3, 0), 3: (3, 2, 3, 0), 4: (4, 0, 3, 0), 5: (5, 0, 3, 0)}
    scores = score_tracking(TRUTH, TRUE_TRACKS, pred, tracks)
    assert scores.det == 1.0
    assert scores.lnk < 1.0 and scores.tra < 1.0
    assert (scores.division_recall, scores.division_f1) == (0.0, 0.0)
    assert scores.found_divisions == 0 and scores.true_divisions == 1


def test_a_swapped_link_lowers_linking_only() -> None:
    # Tracks 4 and 5 exchange identities from frame 2 on: each jumps onto the other's cell.
    pred = TRUTH.copy()
    for t in (2, 3):
        pred[t][TRUTH[t] == 4] = 5
        pred[t][TRUTH[t] == 5] = 4
    scores = score_tracking(TRUTH, TRUE_TRACKS, pred, TRUE_TRACKS)
    assert scores.det == 1.0
    assert scores.lnk < 1.0 and scores.tra < 1.0
    assert scores.extra_links == 2 and scores.missing_links == 2
    assert scores.division_f1 == 1.0


def test_a_false_positive_lowers_detection() -> None:
    pred = TRUTH.copy()
    pred[1, 14:22, 28:36] = 6  # something that is not a cell, in one frame
    tracks = {**TRUE_TRACKS, 6: (6, 1, 1, 0)}
    scores = score_tracking(TRUTH, TRUE_TRACKS, pred, tracks)
    assert scores.det < 1.0 and scores.tra < 1.0
    assert scores.lnk == 1.0
    assert scores.extra_cells == 1
    assert scores.division_f1 == 1.0


def test_a_false_division_lowers_division_precision() -> None:
    # Track 5 is said to divide into itself and a spurious neighbour after frame 1.
    pred = TRUTH.copy()
    pred[2:][TRUTH[2:] == 5] = 6
    pred[2, 14:22, 28:36] = 7
    tracks = {**TRUE_TRACKS, 5: (5, 0, 1, 0), 6: (6, 2, 3, 5), 7: (7, 2, 2, 5)}
    scores = score_tracking(TRUTH, TRUE_TRACKS, pred, tracks)
    assert scores.found_divisions == 2 and scores.matched_divisions == 1
    assert scores.division_precision == 0.5 and scores.division_recall == 1.0
    assert scores.det < 1.0 and scores.lnk < 1.0


def test_a_division_found_one_frame_late_matches_only_with_a_tolerance() -> None:
    # The mother is followed onto the first daughter for one frame; the split comes a frame late.
    pred = TRUTH.copy()
    pred[2][TRUTH[2] == 2] = 1
    pred[2][TRUTH[2] == 3] = 6
    tracks = {1: (1, 0, 2, 0), 2: (2, 3, 3, 1), 3: (3, 3, 3, 1), 4: (4, 0, 3, 0), 5: (5, 0, 3, 0)}
    tracks[6] = (6, 2, 2, 0)
    strict = score_tracking(TRUTH, TRUE_TRACKS, pred, tracks)
    lenient = score_tracking(TRUTH, TRUE_TRACKS, pred, tracks, frame_tolerance=1)
    assert strict.division_f1 == 0.0
    assert lenient.division_f1 == 1.0 and lenient.frame_tolerance == 1
    assert strict.tra == lenient.tra < 1.0


def test_a_generated_movie_scored_against_itself_is_perfect_and_lost_cells_are_not() -> None:
    movie = generate_movie(2, frames=8, shape=(128, 128))
    perfect = score_tracking(movie.labels, movie.tracks, movie.labels, movie.tracks)
    assert (perfect.tra, perfect.det, perfect.lnk, perfect.division_f1) == (1.0, 1.0, 1.0, 1.0)
    # Lose the last frame's cells of one track: its record ends a frame early.
    victim = next(t for t in movie.tracks.values() if t.last == 7 and t.first < 6)
    pred = movie.labels.copy()
    pred[7][pred[7] == victim.label] = 0
    tracks = {
        **movie.tracks,
        victim.label: TrackTruth(victim.label, victim.first, 6, victim.parent),
    }
    worse = score_tracking(movie.labels, movie.tracks, pred, tracks)
    assert worse.missed_cells == 1 and worse.det < 1.0 and worse.tra < 1.0


def test_invalid_input_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="same"):
        score_tracking(TRUTH, TRUE_TRACKS, TRUTH[:2], TRUE_TRACKS)
    broken = {**TRUE_TRACKS, 2: (2, 1, 3, 1)}  # daughter begins before the mother ends
    with pytest.raises(ValueError, match=r"prediction.*parent 1 ends on frame 1"):
        score_tracking(TRUTH, TRUE_TRACKS, TRUTH, broken)


def test_track_text_round_trips_and_labels_give_the_spans() -> None:
    text = format_tracks(TRUE_TRACKS.values())
    assert text.splitlines()[1] == "2 2 3 1"
    assert parse_tracks(text) == {k: TrackTruth(*v) for k, v in TRUE_TRACKS.items()}
    assert tracks_from_labels(TRUTH, {2: 1, 3: 1}) == parse_tracks(text)
    with pytest.raises(ValueError, match="line 1"):
        parse_tracks("1 0 x 0\n")
