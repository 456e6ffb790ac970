"""Tracking accuracy the Cell Tracking Challenge way: TRA, DET, LNK and division scores.

Why: the tracking pipeline (segment every frame, link over time, find divisions) is judged on
movies with known lineages, with the measures the field reports, computed by the challenge's own
reference package (``py-ctcmetrics``, module ``ctc_metrics``), not re-implemented here.

- TRA, DET, LNK: the acyclic oriented graph matching (AOGM) measures. A predicted mask matches
  a true one when it covers more than half of it; TRA weighs both detection and linking errors,
  DET only detection errors, LNK only linking errors; 1 is perfect.
- Divisions: a predicted division matches a true one when the mothers match on the mother's
  last frame and each true daughter matches a predicted daughter on its first frame (both
  daughters, when there are two), with the mother's end and the daughters' starts at most
  ``frame_tolerance`` frames apart (the package's BC(i) tolerance; 0: same frames). Precision,
  recall and F1 follow from the matched, predicted and true division counts; BC(i) is the
  package's own F1 (None when the truth has no division).

Tracks are CTC ``L B E P`` records; labels are (T, Y, X) integer stacks where a track's label marks
its masks in frames B..E (see ``consumers.ctc``).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from consumers.ctc import (
    TrackLike,
    TrackTruth,
    as_track,
    check_tracks,
    write_ctc_result,
    write_ctc_truth_folder,
)

__all__ = ["TrackingScores", "score_tracking"]


@dataclass(frozen=True)
class TrackingScores:
    """CTC tracking measures of one movie (1 is perfect for the ratios)."""

    tra: float
    det: float
    lnk: float
    division_precision: float
    """Matched / predicted divisions (1.0 when none was predicted and none is true)."""
    division_recall: float
    """Matched / true divisions (1.0 when there is no true division)."""
    division_f1: float
    true_divisions: int
    found_divisions: int
    """Divisions in the prediction (tracks with two or more daughters)."""
    matched_divisions: int
    bc: float | None
    """The package's BC(frame_tolerance); None when the truth has no division."""
    frame_tolerance: int
    aogm: float
    """Weighted graph-correction cost behind TRA (0 is perfect)."""
    missed_cells: int
    """True masks no predicted mask matches (AOGM FN)."""
    extra_cells: int
    """Predicted masks that match no true one (AOGM FP)."""
    merged_cells: int
    """Predicted masks that cover several true ones (AOGM NS, splits needed)."""
    extra_links: int
    """Predicted links absent from the truth (AOGM ED)."""
    missing_links: int
    """True links absent from the prediction (AOGM EA)."""
    wrong_link_kinds: int
    """Links present in both but one is a division link and the other not (AOGM EC)."""


def score_tracking(
    true_labels: NDArray[np.integer],
    true_tracks: Mapping[int, TrackLike],
    pred_labels: NDArray[np.integer],
    pred_tracks: Mapping[int, TrackLike],
    *,
    frame_tolerance: int = 0,
) -> TrackingScores:
    """Score a predicted tracking against the truth (both CTC: label stacks + L B E P records).

    Raises ValueError when the stacks differ in shape or either pair is not valid CTC (a label
    missing from a frame inside its track, a parent that does not end before its daughter...).
    """
    true_stack, pred_stack = np.asarray(true_labels), np.asarray(pred_labels)
    if true_stack.shape != pred_stack.shape:
        raise ValueError(
            f"true and predicted labels must have the same (T, Y, X) shape, got "
            f"{true_stack.shape} and {pred_stack.shape}"
        )
    if frame_tolerance < 0:
        raise ValueError(f"frame_tolerance must be 0 or more, got {frame_tolerance}")
    for name, stack, tracks in (
        ("truth", true_stack, true_tracks),
        ("prediction", pred_stack, pred_tracks),
    ):
        problems = check_tracks(stack, tracks)
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise ValueError(
                f"the {name} is not valid CTC tracking: {'; '.join(problems[:3])}{more}"
            )
    if not pred_tracks:
        raise ValueError("the prediction has no tracks: the CTC measures need at least one")
    results = _evaluate(
        *_compact(true_stack, true_tracks), *_compact(pred_stack, pred_tracks), frame_tolerance
    )
    i = frame_tolerance
    matched = int(results[f"tp_div({i})"])
    extra = int(results[f"fp_div({i})"])
    missed = int(results[f"fn_div({i})"])
    precision = matched / (matched + extra) if matched + extra else 1.0
    recall = matched / (matched + missed) if matched + missed else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    bc = results.get(f"BC({i})")
    return TrackingScores(
        tra=float(results["TRA"]),
        det=float(results["DET"]),
        lnk=float(results["LNK"]),
        division_precision=precision,
        division_recall=recall,
        division_f1=f1,
        true_divisions=matched + missed,
        found_divisions=matched + extra,
        matched_divisions=matched,
        bc=None if bc is None else float(bc),
        frame_tolerance=i,
        aogm=float(results["AOGM"]),
        missed_cells=int(results["AOGM_FN"]),
        extra_cells=int(results["AOGM_FP"]),
        merged_cells=int(results["AOGM_NS"]),
        extra_links=int(results["AOGM_ED"]),
        missing_links=int(results["AOGM_EA"]),
        wrong_link_kinds=int(results["AOGM_EC"]),
    )


def _compact(
    stack: NDArray[np.integer], tracks: Mapping[int, TrackLike]
) -> tuple[NDArray[np.uint16], dict[int, TrackTruth]]:
    """Renumber tracks 1..N (same order): CTC masks are uint16, and the package adds the truth's
    largest label to the predicted ones, so both must stay small. Scores do not change."""
    records = sorted((as_track(t) for t in tracks.values()), key=lambda t: t.label)
    if len(records) > 32767:
        raise ValueError(f"{len(records)} tracks: the CTC tools handle at most 32767 per movie")
    old = np.array([0] + [t.label for t in records], dtype=np.int64)
    new_of = {t.label: n for n, t in enumerate(records, start=1)}
    relabelled = np.searchsorted(old, stack).astype(np.uint16)
    renumbered = {
        new_of[t.label]: TrackTruth(new_of[t.label], t.first, t.last, new_of.get(t.parent, 0))
        for t in records
    }
    return relabelled, renumbered


def _evaluate(
    true_stack: NDArray[np.uint16],
    true_tracks: dict[int, TrackTruth],
    pred_stack: NDArray[np.uint16],
    pred_tracks: dict[int, TrackTruth],
    frame_tolerance: int,
) -> dict[str, Any]:
    """Run the reference package on the pair, written out in the CTC layout it reads."""
    from ctc_metrics import evaluate_sequence  # heavy (pandas, scikit-learn): only when scoring

    with tempfile.TemporaryDirectory(prefix="ctc-") as tmp:
        gt, res = Path(tmp) / "GT", Path(tmp) / "RES"
        write_ctc_truth_folder(gt, true_stack, true_tracks)
        write_ctc_result(res, pred_stack, pred_tracks)
        # The package prints its progress and warns about frames without cells: keep it quiet.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results: dict[str, Any] = evaluate_sequence(
                str(res),
                str(gt),
                metrics=["DET", "TRA", "LNK", f"BC({frame_tolerance})"],
                threads=1,
            )
    if not results.get("Valid", 1) or results.get("TRA") is None:
        raise ValueError(f"the CTC measures refused the prediction as invalid: {results}")
    return results
