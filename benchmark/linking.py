"""Linking: division and link quality of each linker on generated movies, and its time per frame.

Division F1 decides a tracker: linking by distance alone scores well on links (almost every
cell just moves a little) while finding no divisions, since one daughter simply continues the
mother's track. Every linker here links the same measured frames of generated movies and is
scored against the movies' ground truth:

- ``kiosk``: ``consumers.processing.linking.link`` (assignment per frame, gap closing, scored
  divisions), its defaults;
- ``kiosk, distance only``: the same without division detection (the baseline to beat);
- ``laptrack``: the laptrack package (Jaqaman-style LAP with gap closing and splitting by
  distance; it brings pandas, scikit-learn, networkx, pydantic and pooch), with the same
  reach, gap window and division distance;
- ``laptrack, area-aware splits``: laptrack whose split cost also wants each daughter about
  half the mother's area (laptrack scores each mother-daughter pair alone);
- ``kiosk, learned divisions``: Kiosk's linker whose division candidates are scored by the
  bundled division model (``models/DivisionScoring``) on an embedded model server, over gRPC as
  the tracking job type calls it (``KIOSK_DIVISION_MODEL``);
- ``kiosk, learned + feature``: the mean of the model's logit and the feature score.

The division model was trained on movies of other seeds (``models.training.train_division``:
900000.. for training, 950000.. for validation); these movies are ``SEED_BASE`` + seed.

Scenarios: the generator's defaults, crowded, fast and faster cells (true masks), "noisy
masks": true masks with segmentation-like errors (3% of objects missed, 1% cut in two along a
line through their centroid, per object and frame), and "segmented": the masks Kiosk's bundled
nuclear model makes of the movie on the same model server (link P / R are then not given: the
objects are not the true ones).

Figures per scenario and linker: link precision/recall (every true frame-to-frame step over
the true masks, division steps included, against the linker's), division precision/recall/F1
and TRA from ``evaluation.tracking_quality`` (the CTC measures, on the linker's CTC form), and
milliseconds per frame on a 512 x 512 movie of about 150 nuclei per frame against measuring
those frames (the same run's baseline).

    python -m benchmark.linking [--seeds 0,1,2,3,4] [--scenarios default,...] [--frames 30]
        [--no-learned]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict
from itertools import pairwise

import numpy as np

from benchmark.report import save, table
from benchmark.support import timed
from consumers.division_scorer import DIVISION_MODEL, ServedDivisionScorer
from consumers.processing.linking import (
    DIVISION_FEATURES,
    Cells,
    DivisionCandidates,
    DivisionScorer,
    LinkParams,
    Track,
    Tracking,
    ctc_tracking,
    link,
    measure,
)
from consumers.segmentation import NUCLEAR_MODEL
from evaluation.movies import Movie, generate_movie
from evaluation.tracking_quality import score_tracking

SEED_BASE = 810_000
AREA_SCALE = 1e-3  # log area rides along laptrack's coordinates, too small to move its distances


Linker = Callable[[Sequence[Cells]], Tracking]


def laptrack_link(
    frames: Sequence[Cells], params: LinkParams | None = None, *, area_aware: bool = False
) -> Tracking:
    """laptrack on the frames' centroids, read back as a `Tracking` (splits become divisions).

    `area_aware`: a split also costs the departure of the daughter's area from half the
    mother's (laptrack scores each mother-daughter pair alone, so no pair cues).
    """
    from laptrack import LapTrack

    params = params or LinkParams()
    split_metric: object = "sqeuclidean"
    if area_aware:

        def split_metric(mother: np.ndarray, daughter: np.ndarray) -> float:
            d2 = float((mother[0] - daughter[0]) ** 2 + (mother[1] - daughter[1]) ** 2)
            shrink = abs(daughter[2] - mother[2]) / AREA_SCALE
            return d2 * (1 + 4 * (shrink - np.log(2)) ** 2)

    tracker = LapTrack(
        cutoff=params.max_distance**2,
        gap_closing_cutoff=params.max_distance**2 * (params.gap_frames + 1),
        gap_closing_max_frame_count=params.gap_frames + 1,
        splitting_metric=split_metric,
        splitting_cutoff=params.division_distance**2 if params.divisions else False,
    )
    coords = [np.column_stack([c.centroids, AREA_SCALE * np.log(c.areas)]) for c in frames]
    graph = tracker.predict(coords)
    key: dict[tuple[int, int], int] = {}
    first: list[int] = []
    last: list[int] = []
    parent: list[int | None] = []
    for node in sorted(graph.nodes):
        preds = list(graph.predecessors(node))
        before = preds[0] if preds else None
        if before is not None and graph.out_degree(before) == 1:
            key[node] = key[before]
            last[key[node]] = node[0]
            continue
        key[node] = len(first)
        first.append(node[0])
        last.append(node[0])
        parent.append(key[before] if before is not None else None)
    order = sorted(range(len(first)), key=lambda k: (first[k], k))
    label = {k: i + 1 for i, k in enumerate(order)}
    daughters: dict[int, list[int]] = {k: [] for k in order}
    for k in order:
        if parent[k] is not None:
            daughters[parent[k]].append(label[k])  # type: ignore[index]
    tracks = {
        label[k]: Track(
            label[k],
            first[k],
            last[k],
            label[parent[k]] if parent[k] is not None else None,  # type: ignore[index]
            tuple(sorted(daughters[k])),
        )
        for k in order
    }
    assignments: list[dict[int, int]] = [{} for _ in frames]
    for (t, i), k in key.items():
        assignments[t][int(frames[t].labels[i])] = label[k]
    return Tracking(tracks, assignments)


def edges(tracking: Tracking) -> set[tuple[int, int, int, int]]:
    """(t1, object, t2, object) for each step of a track and each mother-to-daughter step."""
    where: dict[int, list[tuple[int, int]]] = {}
    for t, mapping in enumerate(tracking.assignments):
        for obj, track in mapping.items():
            where.setdefault(track, []).append((t, obj))
    out = set()
    for steps in where.values():
        out.update((a[0], a[1], b[0], b[1]) for a, b in pairwise(steps))
    for label, track in tracking.tracks.items():
        if track.parent is not None and where.get(track.parent) and where.get(label):
            a, b = where[track.parent][-1], where[label][0]
            out.add((a[0], a[1], b[0], b[1]))
    return out


def truth_edges(movie: Movie) -> set[tuple[int, int, int, int]]:
    """The true steps over the true masks (object = true track label)."""
    tracks = {
        label: Track(label, t.first, t.last, t.parent or None, ())
        for label, t in movie.tracks.items()
    }
    assignments = [{int(v): int(v) for v in np.unique(f) if v} for f in movie.labels]
    return edges(Tracking(tracks, assignments))


def score(movie: Movie, labels: np.ndarray, tracking: Tracking) -> dict[str, float]:
    """Link precision/recall, and the CTC measures (TRA, DET, LNK, divisions); `labels` are
    the masks that were linked."""
    true, found = truth_edges(movie), edges(tracking)
    ctc = ctc_tracking(tracking)
    pred = np.stack([ctc.relabel(t, f) for t, f in enumerate(labels)])
    records = {t.label: (t.label, t.first, t.last, t.parent or 0) for t in ctc.tracks.values()}
    s = score_tracking(movie.labels, movie.tracks, pred, records)
    return {
        "link_precision": len(true & found) / max(1, len(found)),
        "link_recall": len(true & found) / max(1, len(true)),
        "tra": s.tra,
        "det": s.det,
        "lnk": s.lnk,
        "true_divisions": s.true_divisions,
        "found_divisions": s.found_divisions,
        "matched_divisions": s.matched_divisions,
    }


_SCORE = DIVISION_FEATURES.index("score")
_TAKE = [DIVISION_FEATURES.index("take_a"), DIVISION_FEATURES.index("take_b")]


class Combined:
    """The mean of a learned scorer's logit and the feature score (less taking cells)."""

    def __init__(self, learned: DivisionScorer) -> None:
        self.learned = learned

    def __call__(self, candidates: DivisionCandidates) -> np.ndarray:
        p = np.clip(self.learned(candidates), 1e-6, 1 - 1e-6)
        f = candidates.features.astype(np.float64)
        feature = f[:, _SCORE] - f[:, _TAKE].sum(1)
        mean = (np.log(p / (1 - p)) + feature) / 2
        return 1 / (1 + np.exp(-np.clip(mean, -30, 30)))


def linkers(scorer: DivisionScorer | None = None) -> dict[str, Linker]:
    chosen: dict[str, Linker] = {
        "kiosk": lambda frames: link(frames),
        "kiosk, distance only": lambda frames: link(frames, LinkParams(divisions=False)),
        "laptrack": lambda frames: laptrack_link(frames),
        "laptrack, area-aware splits": lambda frames: laptrack_link(frames, area_aware=True),
    }
    if scorer is not None:
        combined = Combined(scorer)
        chosen["kiosk, learned divisions"] = lambda frames: link(frames, division_scorer=scorer)
        chosen["kiosk, learned + feature"] = lambda frames: link(frames, division_scorer=combined)
    return chosen


def perturbed(labels: np.ndarray, seed: int, missed: float, split: float) -> np.ndarray:
    """Segmentation-like errors on true masks: objects missed, or cut in two along a line
    through their centroid (the piece gets a label no true track has), independently per
    object and frame."""
    rng = np.random.default_rng(seed)
    out = labels.copy()
    spare = int(labels.max()) + 1
    for frame in out:
        for obj in np.unique(frame)[1:]:
            u = rng.random()
            if u < missed:
                frame[frame == obj] = 0
            elif u < missed + split:
                ys, xs = np.nonzero(frame == obj)
                angle = rng.uniform(0, np.pi)
                side = (ys - ys.mean()) * np.cos(angle) + (xs - xs.mean()) * np.sin(angle) > 0
                frame[ys[side], xs[side]] = spare
                spare += 1
    return out


SCENARIOS: dict[str, tuple[dict[str, float], float, float]] = {
    # name: (generate_movie overrides, missed fraction, split fraction)
    "default": ({}, 0.0, 0.0),
    "crowded": ({"coverage": 0.35}, 0.0, 0.0),
    "fast": ({"speed": 5.0}, 0.0, 0.0),
    "faster": ({"speed": 8.0}, 0.0, 0.0),
    "noisy masks": ({}, 0.03, 0.01),
}
SEGMENTED = "segmented"  # the movie's masks made by the served nuclear model


def measured(images: np.ndarray, labels: np.ndarray, patch_size: int = 0) -> list[Cells]:
    return [measure(labels[t], images[t], t, patch_size) for t in range(len(labels))]


def segmented(movie: Movie, target: str) -> np.ndarray:
    """The movie's masks from Kiosk's nuclear model on the model server at ``target``."""
    from consumers.processing.pipeline import segment_frames
    from evaluation.served import ServedModel

    return segment_frames(
        movie.images,
        ServedModel(target, NUCLEAR_MODEL.name),
        image_mpp=movie.mpp,
        model_mpp=NUCLEAR_MODEL.mpp,
        size_multiple=NUCLEAR_MODEL.size_multiple,
        postprocess=NUCLEAR_MODEL.postprocess,
    )


def summary(runs: list[dict[str, float]]) -> dict[str, float]:
    """Mean link and CTC figures over movies; division figures from the summed counts."""
    out = {
        k: round(float(np.mean([r[k] for r in runs])), 4)
        for k in ("link_precision", "link_recall", "tra", "det", "lnk")
    }
    true = sum(r["true_divisions"] for r in runs)
    found = sum(r["found_divisions"] for r in runs)
    hit = sum(r["matched_divisions"] for r in runs)
    p = hit / found if found else 1.0
    r_ = hit / true if true else 1.0
    out.update(
        true_divisions=true,
        found_divisions=found,
        division_precision=round(p, 4),
        division_recall=round(r_, 4),
        division_f1=round(2 * p * r_ / (p + r_) if p + r_ else 0.0, 4),
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3,4", help="generated movies per scenario")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="of: " + ", ".join(SCENARIOS)
    )
    parser.add_argument("--timing-frames", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--no-learned",
        dest="learned",
        action="store_false",
        help="leave out the learned division scorer (and the segmented scenario's model server)",
    )
    args = parser.parse_args()
    with ExitStack() as stack:
        target = None
        if args.learned:
            from evaluation.served import BUNDLED_MODELS, embedded_model_server

            models = (DIVISION_MODEL.name, NUCLEAR_MODEL.name)
            target = stack.enter_context(embedded_model_server(BUNDLED_MODELS, models)).target
        run(args, target)


def run(args: argparse.Namespace, target: str | None) -> None:
    seeds = [SEED_BASE + int(s) for s in args.seeds.split(",")]
    scorer = None
    if target is not None:
        from kiosk.serving.client import ServingClient

        scorer = ServedDivisionScorer(ServingClient(target))
    chosen = linkers(scorer)
    patch = DIVISION_MODEL.patch_size if scorer is not None else 0
    scenarios = args.scenarios.split(",")
    if target is not None and SEGMENTED not in scenarios and args.scenarios == ",".join(SCENARIOS):
        scenarios.append(SEGMENTED)

    results: list[dict[str, object]] = []
    for scenario in scenarios:
        overrides, missed, split = SCENARIOS.get(scenario, ({}, 0.0, 0.0))
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in chosen}
        for seed in seeds:
            movie = generate_movie(seed, frames=args.frames, **overrides)
            labels = movie.labels
            if scenario == SEGMENTED:
                if target is None:
                    raise SystemExit(
                        "the segmented scenario needs the model server: drop --no-learned"
                    )
                labels = segmented(movie, target)
            elif missed or split:
                labels = perturbed(labels, seed, missed, split)
            frames = measured(movie.images, labels, patch)
            for name, fn in chosen.items():
                scored = score(movie, labels, fn(frames))
                if scenario == SEGMENTED:  # objects are not the true ones: no link P / R
                    scored["link_precision"] = scored["link_recall"] = float("nan")
                runs[name].append(scored)
        for name, scored_runs in runs.items():
            row = {"scenario": scenario, "linker": name, **summary(scored_runs)}
            results.append({k: None if v != v else v for k, v in row.items()})  # NaN: none
        print(f"{scenario}: {len(seeds)} movies scored", flush=True)

    # ~150 nuclei per frame: the size the linking target is stated for.
    big = generate_movie(
        SEED_BASE + 999, frames=args.timing_frames, shape=(512, 512), coverage=0.15
    )
    cells = float(np.mean([len(np.unique(f)) - 1 for f in big.labels]))
    n = len(big.labels)
    measure_ms = timed(lambda: measured(big.images, big.labels), args.repeat) / n * 1e3
    windows_ms = timed(lambda: measured(big.images, big.labels, patch), args.repeat) / n * 1e3
    big_frames = measured(big.images, big.labels, patch)
    ms = {
        name: timed(lambda fn=fn: fn(big_frames), args.repeat) / n * 1e3
        for name, fn in chosen.items()
    }
    for row in results:
        row["ms_per_frame"] = round(ms[str(row["linker"])], 2)

    rows = [
        [
            "scenario",
            "linker",
            "link P / R",
            "divisions found/true",
            "division P / R / F1",
            "TRA",
            f"ms/frame ({cells:.0f} cells)",
        ]
    ]
    for r in results:
        rows.append(
            [
                str(r["scenario"]),
                str(r["linker"]),
                "n/a"
                if r["link_precision"] is None
                else f"{r['link_precision']:.4f} / {r['link_recall']:.4f}",
                f"{r['found_divisions']}/{r['true_divisions']}",
                f"{r['division_precision']:.3f} / {r['division_recall']:.3f} / "
                f"{r['division_f1']:.3f}",
                f"{r['tra']:.4f}",
                f"{r['ms_per_frame']:.1f}",
            ]
        )
    print(table(rows))
    print(f"baseline, measuring one frame ({cells:.0f} cells, 512x512): {measure_ms:.1f} ms")
    if patch:
        print(f"measuring it with {patch}x{patch} cell windows: {windows_ms:.1f} ms")
    path = save(
        "linking",
        {
            "seeds": seeds,
            "frames": args.frames,
            "scenarios": {k: SCENARIOS.get(k, "served nuclear model's masks") for k in scenarios},
            "timing": {
                "frames": n,
                "shape": [512, 512],
                "cells_per_frame": round(cells, 1),
                "measure_ms_per_frame": round(measure_ms, 2),
                "measure_with_windows_ms_per_frame": round(windows_ms, 2) if patch else None,
            },
            "division_model": DIVISION_MODEL.name if scorer is not None else None,
            "params": asdict(LinkParams()),
            "results": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
