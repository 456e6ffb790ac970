"""Object-level segmentation quality, scored the way Cellpose and StarDist papers report it.

Objects are matched one-to-one by intersection over union (IoU): a pair counts as a true
positive only when its IoU reaches the threshold, and the matching maximises first the number
of matched pairs and then their summed IoU (the optimal assignment both tools use). Counts add
up over images, so a data set is scored by `aggregate` over per-image `Scores`.

The overlap between two label images is a sparse contingency table built with one bincount (or
one sort when there are very many objects), never a dense objects-by-objects matrix, so
thousands of objects score in milliseconds. Label images of any dimensionality are accepted;
0 is background, other integer values are objects (they need not be consecutive).

Conventions for empty cases: a ratio with nothing to count is 1.0 (no predictions means no
false positives, so precision 1.0; no true objects means nothing missed, so recall 1.0), and
F1/AP follow from the counts, so an empty prediction for a non-empty truth scores F1 0 and an
empty prediction for an empty truth scores 1. `mean_iou` is 0.0 when nothing matched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

__all__ = [
    "DEFAULT_AP_THRESHOLDS",
    "Overlap",
    "Scores",
    "aggregate",
    "average_precision",
    "figures",
    "overlap",
    "score",
    "score_thresholds",
]

DEFAULT_AP_THRESHOLDS: np.ndarray = np.round(np.arange(0.5, 1.0, 0.05), 2)

# Dense bincount of (true, pred) pair codes while it stays this small; a sort beyond it.
_MAX_DENSE_PAIRS = 1 << 24
# Part of a predicted (true) object that must lie inside a true (predicted) one to count
# towards a split (merge).
_COVER_FRACTION = 0.5


def _safe_ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 1.0


@dataclass(frozen=True)
class Scores:
    """Counts and rates of one comparison (one image, or a data set after `aggregate`)."""

    iou_threshold: float
    n_true: int
    n_pred: int
    tp: int
    fp: int
    fn: int
    splits: int
    merges: int
    matched_iou_sum: float
    precision: float
    recall: float
    f1: float
    ap: float
    mean_iou: float

    @classmethod
    def from_counts(
        cls,
        *,
        iou_threshold: float,
        n_true: int,
        n_pred: int,
        tp: int,
        splits: int = 0,
        merges: int = 0,
        matched_iou_sum: float = 0.0,
    ) -> Scores:
        """Derive every rate from the counts, so per-image and summed scores agree by design."""
        fp = n_pred - tp
        fn = n_true - tp
        precision = _safe_ratio(tp, tp + fp)
        recall = _safe_ratio(tp, tp + fn)
        f1 = _safe_ratio(2 * tp, 2 * tp + fp + fn)
        ap = _safe_ratio(tp, tp + fp + fn)
        mean_iou = float(matched_iou_sum) / tp if tp else 0.0
        return cls(
            iou_threshold=float(iou_threshold),
            n_true=int(n_true),
            n_pred=int(n_pred),
            tp=int(tp),
            fp=int(fp),
            fn=int(fn),
            splits=int(splits),
            merges=int(merges),
            matched_iou_sum=float(matched_iou_sum),
            precision=precision,
            recall=recall,
            f1=f1,
            ap=ap,
            mean_iou=mean_iou,
        )

    def as_dict(self) -> dict[str, float | int]:
        """Plain numbers for JSON reports and job records."""
        return asdict(self)


@dataclass(frozen=True)
class Overlap:
    """The sparse contingency table of two label images: what every score is computed from.

    `true_ids`/`pred_ids` are the original label values (index i of an area array is object
    `ids[i]`); `pair_true`/`pair_pred` index into them, one entry per overlapping pair.
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    true_area: np.ndarray
    pred_area: np.ndarray
    pair_true: np.ndarray
    pair_pred: np.ndarray
    intersection: np.ndarray

    @property
    def iou(self) -> np.ndarray:
        union = self.true_area[self.pair_true] + self.pred_area[self.pair_pred] - self.intersection
        return self.intersection / union


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map labels to 0..n (0 stays background): (compact image, original ids, areas)."""
    flat = np.asarray(labels).ravel()
    if flat.size == 0:
        return flat.astype(np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    if not np.issubdtype(flat.dtype, np.integer):
        if not np.all(np.mod(flat, 1) == 0):
            raise ValueError("label images must hold integer object ids")
        flat = flat.astype(np.int64)
    low, high = int(flat.min()), int(flat.max())
    if low < 0:
        raise ValueError(f"label images must not hold negative ids (found {low})")
    if high <= max(4 * flat.size, 1 << 16):
        counts = np.bincount(flat, minlength=high + 1)
        ids = np.flatnonzero(counts[1:]) + 1
        lut = np.zeros(high + 1, dtype=np.int64)
        lut[ids] = np.arange(1, ids.size + 1)
        return lut[flat], ids.astype(np.int64), counts[ids].astype(np.int64)
    ids, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    if ids[0] == 0:
        return inverse.astype(np.int64), ids[1:].astype(np.int64), counts[1:].astype(np.int64)
    return inverse.astype(np.int64) + 1, ids.astype(np.int64), counts.astype(np.int64)


def overlap(true_labels: np.ndarray, pred_labels: np.ndarray) -> Overlap:
    """Sparse pairwise intersections of two label images of the same shape."""
    true_labels = np.asarray(true_labels)
    pred_labels = np.asarray(pred_labels)
    if true_labels.shape != pred_labels.shape:
        raise ValueError(
            f"label images differ in shape: true {true_labels.shape}, pred {pred_labels.shape}"
        )
    t, true_ids, true_area = _compact(true_labels)
    p, pred_ids, pred_area = _compact(pred_labels)
    both = (t > 0) & (p > 0)
    tt = t[both] - 1
    pp = p[both] - 1
    n_pred = pred_ids.size
    codes = tt * n_pred + pp
    if true_ids.size * n_pred <= _MAX_DENSE_PAIRS:
        counts = np.bincount(codes, minlength=true_ids.size * n_pred)
        pair_codes = np.flatnonzero(counts)
        inter = counts[pair_codes]
    else:
        pair_codes, inter = np.unique(codes, return_counts=True)
    return Overlap(
        true_ids=true_ids,
        pred_ids=pred_ids,
        true_area=true_area,
        pred_area=pred_area,
        pair_true=(pair_codes // max(n_pred, 1)).astype(np.int64),
        pair_pred=(pair_codes % max(n_pred, 1)).astype(np.int64),
        intersection=inter.astype(np.int64),
    )


def _match(ov: Overlap, iou: np.ndarray, threshold: float) -> tuple[int, float]:
    """Optimal one-to-one matching among pairs with IoU >= threshold: (matches, summed IoU).

    Each connected group of candidate pairs is solved on its own, so the assignment problem
    stays tiny; at thresholds above 0.5 every object has at most one candidate and no
    assignment is solved at all.
    """
    ok = iou >= threshold
    rows, cols, vals = ov.pair_true[ok], ov.pair_pred[ok], iou[ok]
    if rows.size == 0:
        return 0, 0.0
    row_deg = np.bincount(rows, minlength=ov.true_ids.size)
    col_deg = np.bincount(cols, minlength=ov.pred_ids.size)
    simple = (row_deg[rows] == 1) & (col_deg[cols] == 1)
    tp = int(simple.sum())
    iou_sum = float(vals[simple].sum())
    if simple.all():
        return tp, iou_sum
    rows, cols, vals = rows[~simple], cols[~simple], vals[~simple]
    n_t = ov.true_ids.size
    graph = sparse.coo_matrix(
        (np.ones(rows.size), (rows, cols + n_t)), shape=(n_t + ov.pred_ids.size,) * 2
    )
    _, component = connected_components(graph, directed=False)
    group = component[rows]
    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    for idx in np.split(order, bounds):
        r_ids, r = np.unique(rows[idx], return_inverse=True)
        c_ids, c = np.unique(cols[idx], return_inverse=True)
        ious = np.zeros((r_ids.size, c_ids.size))
        ious[r, c] = vals[idx]
        # One point per match outweighs any IoU sum (each IoU <= 1, divided by twice the
        # possible number of matches), so the count of matches is maximised first, then IoU.
        weight = np.where(ious > 0, 1.0 + ious / (2.0 * min(ious.shape)), 0.0)
        ri, ci = linear_sum_assignment(weight, maximize=True)
        hit = ious[ri, ci] > 0
        tp += int(hit.sum())
        iou_sum += float(ious[ri, ci][hit].sum())
    return tp, iou_sum


def _splits_merges(ov: Overlap) -> tuple[int, int]:
    """Splits: true objects with >= 2 predictions lying mostly inside them; merges: the reverse."""
    inside_true = ov.intersection > _COVER_FRACTION * ov.pred_area[ov.pair_pred]
    per_true = np.bincount(ov.pair_true[inside_true], minlength=ov.true_ids.size)
    inside_pred = ov.intersection > _COVER_FRACTION * ov.true_area[ov.pair_true]
    per_pred = np.bincount(ov.pair_pred[inside_pred], minlength=ov.pred_ids.size)
    return int((per_true >= 2).sum()), int((per_pred >= 2).sum())


def _scores_from_overlap(ov: Overlap, iou: np.ndarray, threshold: float) -> Scores:
    tp, iou_sum = _match(ov, iou, threshold)
    splits, merges = _splits_merges(ov)
    return Scores.from_counts(
        iou_threshold=threshold,
        n_true=ov.true_ids.size,
        n_pred=ov.pred_ids.size,
        tp=tp,
        splits=splits,
        merges=merges,
        matched_iou_sum=iou_sum,
    )


def score(true_labels: np.ndarray, pred_labels: np.ndarray, iou_threshold: float = 0.5) -> Scores:
    """Match predicted objects to true ones at `iou_threshold` and count what agrees."""
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    ov = overlap(true_labels, pred_labels)
    return _scores_from_overlap(ov, ov.iou, iou_threshold)


def score_thresholds(
    true_labels: np.ndarray,
    pred_labels: np.ndarray,
    thresholds: Iterable[float] = DEFAULT_AP_THRESHOLDS,
) -> list[Scores]:
    """`score` at several IoU thresholds from one overlap computation."""
    ov = overlap(true_labels, pred_labels)
    iou = ov.iou
    return [_scores_from_overlap(ov, iou, float(t)) for t in thresholds]


def average_precision(
    true_labels: np.ndarray,
    pred_labels: np.ndarray,
    thresholds: Iterable[float] = DEFAULT_AP_THRESHOLDS,
) -> float:
    """Mean of Cellpose's AP = TP / (TP + FP + FN) over IoU thresholds (0.5..0.95 by default)."""
    return float(np.mean([s.ap for s in score_thresholds(true_labels, pred_labels, thresholds)]))


def aggregate(scores: Sequence[Scores]) -> Scores:
    """Data-set scores: counts summed over images, rates recomputed from the sums.

    This weights every object equally (unlike averaging per-image F1, which lets an image with
    three cells count as much as one with three thousand).
    """
    if not scores:
        raise ValueError("aggregate needs at least one Scores")
    thresholds = {s.iou_threshold for s in scores}
    if len(thresholds) != 1:
        raise ValueError(f"cannot aggregate scores taken at different IoU thresholds {thresholds}")
    return Scores.from_counts(
        iou_threshold=thresholds.pop(),
        n_true=sum(s.n_true for s in scores),
        n_pred=sum(s.n_pred for s in scores),
        tp=sum(s.tp for s in scores),
        splits=sum(s.splits for s in scores),
        merges=sum(s.merges for s in scores),
        matched_iou_sum=sum(s.matched_iou_sum for s in scores),
    )


def summary(per_threshold: Mapping[float, Sequence[Scores]]) -> dict[str, float | int]:
    """A data set's figures, counts pooled over its images: precision, recall and F1 at IoU
    0.5, mean AP over the thresholds, AP at 0.75, splits and merges. One definition for the
    evaluation command and for model training's validation."""
    pooled = {t: aggregate(v) for t, v in per_threshold.items()}
    at50 = pooled[0.5]
    return {
        "precision": round(at50.precision, 4),
        "recall": round(at50.recall, 4),
        "f1": round(at50.f1, 4),
        "mean_ap": round(float(np.mean([s.ap for s in pooled.values()])), 4),
        "ap_at_0.75": round(pooled[0.75].ap, 4),
        "mean_matched_iou": round(at50.mean_iou, 4),
        "n_true": at50.n_true,
        "n_pred": at50.n_pred,
        "tp": at50.tp,
        "fp": at50.fp,
        "fn": at50.fn,
        "splits": at50.splits,
        "merges": at50.merges,
    }


def figures(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float | int]:
    """:func:`summary` of (truth, prediction) pairs: counts pooled over the images."""
    per_threshold: dict[float, list[Scores]] = {}
    for true, pred in pairs:
        for s in score_thresholds(true, pred):
            per_threshold.setdefault(s.iou_threshold, []).append(s)
    return summary(per_threshold)


def median_area(labels: np.ndarray) -> float:
    """Median object area in pixels (0 without objects)."""
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return float(np.median(areas)) if areas.size else 0.0
