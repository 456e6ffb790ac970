"""Object-level segmentation metrics on hand-made label images whose answers are known."""

from __future__ import annotations

import time

import numpy as np
import pytest

from evaluation.quality import (
    Scores,
    aggregate,
    average_precision,
    overlap,
    score,
    score_thresholds,
)


def squares(shape=(64, 64), boxes=((5, 5, 15, 15), (30, 30, 45, 45), (5, 40, 20, 60))):
    """A label image with one rectangle per (y0, x0, y1, x1) box, labelled 1, 2, 3..."""
    labels = np.zeros(shape, np.int32)
    for i, (y0, x0, y1, x1) in enumerate(boxes, start=1):
        labels[y0:y1, x0:x1] = i
    return labels


def grid_of_objects(n_side: int, cell: int = 10, seed: int = 0) -> np.ndarray:
    """n_side**2 square objects on a grid with shuffled, non-consecutive ids."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n_side * cell, n_side * cell), np.int32)
    ids = rng.permutation(n_side * n_side) * 3 + 7
    k = 0
    for i in range(n_side):
        for j in range(n_side):
            labels[i * cell + 1 : (i + 1) * cell - 1, j * cell + 1 : (j + 1) * cell - 1] = ids[k]
            k += 1
    return labels


def test_identical_label_images_score_perfectly():
    labels = squares()
    s = score(labels, labels)
    assert (s.tp, s.fp, s.fn, s.splits, s.merges) == (3, 0, 0, 0, 0)
    assert s.precision == s.recall == s.f1 == s.ap == 1.0
    assert s.mean_iou == pytest.approx(1.0)


def test_relabelled_prediction_scores_the_same_because_ids_do_not_matter():
    labels = squares()
    shuffled = np.zeros_like(labels)
    for old, new in ((1, 900), (2, 5), (3, 70000)):
        shuffled[labels == old] = new
    assert score(labels, shuffled).f1 == 1.0


def test_small_shift_keeps_matches_and_lowers_mean_iou():
    labels = squares()
    shifted = np.roll(labels, 1, axis=1)
    s = score(labels, shifted)
    assert s.tp == 3 and s.f1 == 1.0
    # 10x10 box shifted by one column: 90 / 110.
    first = overlap(labels, shifted)
    assert first.iou.min() == pytest.approx(90 / 110)
    assert 0.8 < s.mean_iou < 1.0


def test_large_shift_falls_below_threshold_and_counts_fp_and_fn():
    labels = squares(boxes=((10, 10, 20, 20),))
    shifted = np.roll(labels, 5, axis=1)  # IoU 50 / 150 = 1/3
    s = score(labels, shifted)
    assert (s.tp, s.fp, s.fn) == (0, 1, 1)
    assert s.f1 == 0.0 and s.ap == 0.0
    assert score(labels, shifted, iou_threshold=0.3).tp == 1


def test_one_true_object_split_in_two_counts_one_split():
    truth = squares(boxes=((10, 10, 30, 30),))
    pred = np.zeros_like(truth)
    pred[10:30, 10:22] = 1  # 60 % of the object: still matches at IoU 0.6
    pred[10:30, 22:30] = 2
    s = score(truth, pred)
    assert s.splits == 1 and s.merges == 0
    assert (s.tp, s.fp, s.fn) == (1, 1, 0)


def test_two_true_objects_merged_into_one_counts_one_merge():
    truth = squares(boxes=((10, 10, 30, 20), (10, 20, 30, 30)))
    pred = np.zeros_like(truth)
    pred[10:30, 10:30] = 4
    s = score(truth, pred)
    assert s.merges == 1 and s.splits == 0
    # Each true half has IoU exactly 0.5 with the merged object; only one can match it.
    assert (s.tp, s.fp, s.fn) == (1, 0, 1)


def test_matching_is_one_to_one_and_maximises_the_number_of_matches():
    # True 1 = [0, 10), true 2 = [10, 14); pred A = [3, 14), pred B = [0, 3).
    # IoU(A, 1) = 7/14 = 0.5, IoU(A, 2) = 4/11, IoU(B, 1) = 3/10. Greedy by IoU pairs A with 1
    # and leaves two objects unmatched; the optimum pairs A with 2 and B with 1.
    truth = np.zeros((1, 20), np.int32)
    truth[0, 0:10] = 1
    truth[0, 10:14] = 2
    pred = np.zeros_like(truth)
    pred[0, 3:14] = 5
    pred[0, 0:3] = 6
    s = score(truth, pred, iou_threshold=0.29)
    assert (s.tp, s.fp, s.fn) == (2, 0, 0)
    assert s.mean_iou == pytest.approx((4 / 11 + 3 / 10) / 2)
    # At 0.5 only A-1 qualifies.
    assert score(truth, pred).tp == 1


def test_ties_at_exactly_the_threshold_count_as_matches():
    truth = np.zeros((1, 20), np.int32)
    truth[0, 0:10] = 1
    truth[0, 10:20] = 2
    pred = np.zeros_like(truth)
    pred[0, 0:5] = 8  # IoU with 1: 5 / 10 = 0.5
    pred[0, 5:15] = 9  # IoU 1/3 with each
    pred[0, 15:20] = 7  # IoU with 2: 0.5
    s = score(truth, pred, iou_threshold=0.5)
    assert (s.tp, s.fp, s.fn) == (2, 1, 0)
    assert s.mean_iou == pytest.approx(0.5)


def test_both_empty_is_perfect_agreement():
    empty = np.zeros((32, 32), np.uint16)
    s = score(empty, empty)
    assert (s.tp, s.fp, s.fn) == (0, 0, 0)
    assert s.precision == s.recall == s.f1 == s.ap == 1.0
    assert s.mean_iou == 0.0


def test_empty_prediction_misses_every_true_object():
    s = score(squares(), np.zeros((64, 64), np.int32))
    assert (s.tp, s.fp, s.fn) == (0, 0, 3)
    assert s.recall == 0.0 and s.f1 == 0.0 and s.ap == 0.0
    assert s.precision == 1.0  # nothing predicted, nothing wrongly predicted


def test_prediction_on_empty_truth_is_all_false_positives():
    s = score(np.zeros((64, 64), np.int32), squares())
    assert (s.tp, s.fp, s.fn) == (0, 3, 0)
    assert s.precision == 0.0 and s.f1 == 0.0 and s.recall == 1.0


def test_mismatched_shapes_and_negative_ids_are_refused():
    with pytest.raises(ValueError, match="shape"):
        score(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(ValueError, match="negative"):
        score(np.full((4, 4), -1), np.zeros((4, 4), int))


def test_ap_equals_tp_over_tp_fp_fn():
    truth = squares()
    pred = truth.copy()
    pred[pred == 3] = 0  # one missed
    pred[50:60, 0:10] = 11  # one spurious
    s = score(truth, pred)
    assert (s.tp, s.fp, s.fn) == (2, 1, 1)
    assert s.ap == pytest.approx(2 / 4)
    assert s.f1 == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))


def test_average_precision_over_thresholds_drops_with_imperfect_overlap():
    truth = squares(boxes=((10, 10, 30, 30),))
    pred = np.roll(truth, 2, axis=0)  # IoU 360 / 440 = 0.818
    assert average_precision(truth, truth) == 1.0
    ap = average_precision(truth, pred)
    # Matched at 0.50..0.80 (7 of 10 thresholds), unmatched above.
    assert ap == pytest.approx(0.7)
    curve = score_thresholds(truth, pred, [0.5, 0.9])
    assert [s.tp for s in curve] == [1, 0]


def test_aggregate_sums_counts_over_images():
    truth = squares()
    per_image = [score(truth, truth), score(truth, np.zeros_like(truth))]
    total = aggregate(per_image)
    assert (total.tp, total.fp, total.fn, total.n_true) == (3, 0, 3, 6)
    assert total.recall == 0.5 and total.precision == 1.0
    assert total.f1 == pytest.approx(2 / 3)
    assert total.mean_iou == pytest.approx(1.0)
    with pytest.raises(ValueError, match="different IoU"):
        aggregate([score(truth, truth, 0.5), score(truth, truth, 0.7)])
    with pytest.raises(ValueError):
        aggregate([])


def test_scores_serialise_to_plain_numbers():
    d = score(squares(), squares()).as_dict()
    assert d["f1"] == 1.0 and d["tp"] == 3 and isinstance(d["splits"], int)
    assert isinstance(score(squares(), squares()), Scores)


def test_thousands_of_objects_score_quickly_and_exactly():
    truth = grid_of_objects(70)  # 4900 objects, 700x700: the sorted (not dense) pair count
    pred = np.roll(truth, 1, axis=0)
    pred[:20, :20] = 0
    start = time.perf_counter()
    s = score(truth, pred)
    elapsed = time.perf_counter() - start
    assert s.n_true == 4900 and s.n_pred == 4900 - 4
    assert s.tp == 4900 - 4
    assert elapsed < 1.0, f"scoring 4900 objects took {elapsed:.2f} s"


def test_float_label_images_with_integer_values_are_accepted():
    labels = squares()
    assert score(labels.astype(np.float32), labels).f1 == 1.0


def test_dense_and_sorted_pair_counting_agree(monkeypatch):
    import evaluation.quality as quality

    truth = grid_of_objects(20, seed=1)
    pred = np.roll(truth, 3, axis=1)
    pred[pred % 5 == 0] = 0
    dense = score(truth, pred, 0.3)
    monkeypatch.setattr(quality, "_MAX_DENSE_PAIRS", 0)
    assert score(truth, pred, 0.3) == dense
