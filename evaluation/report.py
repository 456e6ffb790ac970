"""``python -m evaluation``: how well the served model segments nuclei, against a baseline.

Why a command of its own: a figure only means something if it comes from what users get. So the
model is reached exactly as the segmentation consumer reaches it: ``pipeline.segment`` with the
consumer's settings (tile size, batch size, normalisation, model_mpp from ``KIOSK_*``) and a
``ServingClient`` against a real model server (``--model-server HOST:PORT``, or the embedded
one started here as a subprocess on free ports, serving ``--models-dir``). The classical
baseline (Otsu + distance watershed) runs on the same images in the same run, so the margin is
measured, not remembered.

The data sets are in :mod:`evaluation.datasets`. Figures are pooled over a data set's images
(counts summed, rates from the sums): precision, recall and F1 at IoU 0.5, mean AP over IoU
0.5..0.95 (AP = TP / (TP + FP + FN)), mean IoU of matched pairs, splits, merges, objects, seconds
per image. Then tracking (:mod:`evaluation.tracking_report`, ``--tracking on|off|only``): held-out
generated movies tracked from true masks and end to end, and the HeLa frames when ``ctc-hela``
is chosen. Output: a table on stdout and JSON (default ``benchmark/results/evaluation.json``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from consumers.division_scorer import DIVISION_MODEL
from consumers.processing.contract import CYTOPLASM_MODEL, WHOLE_CELL_MODEL, ModelContract
from consumers.processing.deep_watershed import deep_watershed
from consumers.processing.pipeline import Postprocess, Predict, segment_frames
from consumers.segmentation import NUCLEAR_MODEL, PipelineSettings, SegmentationSettings
from evaluation import REPO, EvaluationError, tracking_report, wholecell_report
from evaluation.baseline import classical_segment
from evaluation.datasets import (
    CACHE,
    DATASETS,
    DEFAULT_DATASETS,
    WHOLE_CELL_DATASETS,
    Dataset,
    load_datasets,
)
from evaluation.quality import (
    DEFAULT_AP_THRESHOLDS,
    Scores,
    median_area,
    overlap,
    score_thresholds,
    summary,
)
from evaluation.served import BUNDLED_MODELS, ServedModel, embedded_model_server

DEFAULT_OUT = REPO / "benchmark" / "results" / "evaluation.json"
TARGET_F1 = 0.85
"""The bar for real images: F1 at IoU 0.5."""

# ------------------------------------------------------------------------------------------
# Methods and scores

Segmenter = Callable[[np.ndarray, float], np.ndarray]
"""(image, image_mpp) -> labels on the image's grid."""


@dataclass
class PipelineConfig:
    """The segmentation consumer's model contract and processing settings (read from KIOSK_*
    like the consumer does)."""

    contract: ModelContract
    settings: PipelineSettings

    @property
    def model_mpp(self) -> float:
        return self.contract.mpp

    @property
    def options(self) -> dict[str, Any]:
        """``pipeline.segment``'s keywords, as the consumer passes them."""
        return self.settings.pipeline_options(self.contract)

    @classmethod
    def from_settings(
        cls, settings: PipelineSettings | None = None, contract: ModelContract = NUCLEAR_MODEL
    ) -> PipelineConfig:
        return cls(contract, settings or SegmentationSettings())


def model_segmenter(
    predict: Predict, config: PipelineConfig, postprocess: Postprocess | None = None
) -> Segmenter:
    """The segmentation consumer's maths: ``pipeline.segment_frames`` with the consumer's
    contract and settings, on one image or a stack."""
    contract = config.contract

    def run(image: np.ndarray, image_mpp: float) -> np.ndarray:
        labels = segment_frames(
            image if image.ndim >= 3 else image[None],
            lambda batch: contract.foreground_only(predict(batch)),
            image_mpp=image_mpp,
            postprocess=postprocess or config.contract.postprocess,
            **config.options,
        )
        return labels if image.ndim >= 3 else labels[0]

    return run


def compartments_segmenter(predict: Predict, config: PipelineConfig) -> wholecell_report.Segment:
    """The consumers' maths for a model of one or more compartments, on one (Y, X, C) image:
    labels per compartment, each from its own heads and post-processing settings."""
    contract = config.contract
    run = model_segmenter(predict, config, contract.postprocess_stacked)

    def segment(image: np.ndarray, image_mpp: float) -> dict[str, np.ndarray]:
        labels = run(image[None], image_mpp)[0]  # one (Y, X, C) image as a stack of one
        return {c.name: labels[..., k] for k, c in enumerate(contract.compartments)}

    return segment


def baseline_segmenter(image: np.ndarray, image_mpp: float) -> np.ndarray:
    """What a lab would do without a model; told the same pixel size as the model."""
    return classical_segment(image, mpp=image_mpp)


def served_postprocessing(contract: ModelContract = NUCLEAR_MODEL) -> dict[str, Any]:
    """The post-processing the consumer serves: deep_watershed's defaults under the settings
    the model's contract declares."""
    defaults = {
        name: p.default
        for name, p in inspect.signature(deep_watershed).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    return defaults | dict(contract.postprocessing)


def trained_postprocessing(models_dir: Path, model: str) -> dict[str, Any] | None:
    """deep_watershed settings tuned for the model (its training.json), if it has them."""
    path = models_dir / model / "training.json"
    try:
        params = json.loads(path.read_text()).get("postprocessing") or {}
    except (OSError, ValueError):
        return None
    params = {k: v for k, v in params.items() if k != "function"}
    return params or None


def tuned_postprocess(
    params: Mapping[str, Any], contract: ModelContract = NUCLEAR_MODEL
) -> Postprocess:
    """The model's post-processing with the given deep_watershed settings instead."""

    def run(maps: Mapping[str, np.ndarray]) -> np.ndarray:
        return contract.heads.postprocess(maps, **params)

    return run


def _undetected(truth: np.ndarray, pred: np.ndarray) -> int:
    """True objects no predicted pixel touches at all (misses, as opposed to bad shapes)."""
    ov = overlap(truth, pred)
    touched = np.zeros(ov.true_ids.size, bool)
    touched[ov.pair_true] = True
    return int((~touched).sum())


def run_method(segmenter: Segmenter, dataset: Dataset, image_mpp: float) -> dict[str, Any]:
    """Segment every image, pool the scores: figures plus a short per-image list."""
    per_threshold: dict[float, list[Scores]] = {float(t): [] for t in DEFAULT_AP_THRESHOLDS}
    seconds: list[float] = []
    undetected = 0
    true_areas: list[float] = []
    pred_areas: list[float] = []
    images = []
    for sample in dataset.samples:
        start = time.perf_counter()
        pred = segmenter(sample.image, image_mpp)
        seconds.append(time.perf_counter() - start)
        scores = score_thresholds(sample.truth, pred)
        for s in scores:
            per_threshold[s.iou_threshold].append(s)
        undetected += _undetected(sample.truth, pred)
        true_areas.append(median_area(sample.truth))
        pred_areas.append(median_area(pred))
        at50 = scores[0]
        images.append(
            {
                "name": sample.name,
                "n_true": at50.n_true,
                "n_pred": at50.n_pred,
                "f1": round(at50.f1, 4),
                "ap": round(float(np.mean([s.ap for s in scores])), 4),
                "seconds": round(seconds[-1], 4),
            }
        )
    return {
        **summary(per_threshold),
        "undetected": undetected,
        "median_area_true_px": round(float(np.median(true_areas)), 1),
        "median_area_pred_px": round(float(np.median(pred_areas)), 1),
        "seconds_per_image": round(float(np.mean(seconds)), 4),
        "images": images,
    }


def evaluate_dataset(
    dataset: Dataset, methods: Mapping[str, Segmenter], model_mpp: float
) -> dict[str, Any]:
    """Every method at the headline scale, then at each other scale of the sweep."""
    headline_mpp = dataset.image_mpp if dataset.image_mpp is not None else model_mpp
    headline = {name: run_method(fn, dataset, headline_mpp) for name, fn in methods.items()}
    sweep = []
    for mpp in dataset.sweep:
        if abs(mpp - headline_mpp) < 1e-9:
            results = headline
        else:
            results = {name: run_method(fn, dataset, mpp) for name, fn in methods.items()}
        sweep.append({"image_mpp": mpp, **results})
    return {
        "images": len(dataset.samples),
        "image_size": list(dataset.samples[0].image.shape) if dataset.samples else [],
        "image_mpp": headline_mpp,
        "pixel_size_known": dataset.image_mpp is not None,
        "ground_truth": dataset.ground_truth,
        "source": dataset.source,
        "licence": dataset.licence,
        "notes": dataset.notes,
        "headline": headline,
        "scale_sweep": sweep,
    }


# ------------------------------------------------------------------------------------------
# Report

_COLUMNS = (
    ("precision", "P"),
    ("recall", "R"),
    ("f1", "F1@.5"),
    ("mean_ap", "mAP"),
    ("mean_matched_iou", "mIoU"),
    ("splits", "splits"),
    ("merges", "merges"),
    ("undetected", "missed"),
    ("n_true", "true"),
    ("n_pred", "pred"),
    ("seconds_per_image", "s/img"),
)


def _cell(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def format_table(report: Mapping[str, Any]) -> str:
    """One row per data set, pixel size and method; the headline rows are marked with *."""
    rows = [["dataset", "um/px", "method", *(label for _, label in _COLUMNS)]]
    for name, result in report["datasets"].items():
        blocks = [(f"{result['image_mpp']:g}*", result["headline"])]
        blocks += [
            (f"{entry['image_mpp']:g}", {k: v for k, v in entry.items() if k != "image_mpp"})
            for entry in result["scale_sweep"]
            if abs(entry["image_mpp"] - result["image_mpp"]) > 1e-9
        ]
        for mpp, methods in blocks:
            for method, figures in methods.items():
                rows.append([name, mpp, method, *(_cell(figures[key]) for key, _ in _COLUMNS)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdicts(report: Mapping[str, Any]) -> list[str]:
    """Plain sentences: model vs baseline, and the F1 target on real images."""
    lines = []
    for name, result in report["datasets"].items():
        model, base = result["headline"]["model"], result["headline"]["baseline"]
        line = (
            f"{name}: model F1@0.5 {model['f1']:.3f} vs baseline {base['f1']:.3f} "
            f"({model['f1'] - base['f1']:+.3f}); mAP {model['mean_ap']:.3f} vs "
            f"{base['mean_ap']:.3f}"
        )
        if name != "synthetic":
            met = (
                "met"
                if model["f1"] >= TARGET_F1
                else f"NOT met (short by {TARGET_F1 - model['f1']:.3f})"
            )
            line += f"; target F1 >= {TARGET_F1}: {met}"
            if model["f1"] < TARGET_F1:
                line += (
                    f"; model errors: {model['fn']} missed at IoU 0.5 ({model['undetected']} "
                    f"not touched at all), {model['fp']} false positives, {model['splits']} "
                    f"splits, {model['merges']} merges; median object "
                    f"{model['median_area_pred_px']:g} px predicted vs "
                    f"{model['median_area_true_px']:g} px true"
                )
        lines.append(line)
        lines += [f"  note: {note}" for note in result["notes"]]
    return lines


# ------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evaluation",
        description="Evaluate the served nuclear model and the classical baseline on data sets "
        "with ground truth.",
    )
    p.add_argument(
        "--datasets",
        default=",".join(DEFAULT_DATASETS),
        help=f"comma-separated: {', '.join(DATASETS)}, or 'all' (default: %(default)s)",
    )
    p.add_argument(
        "--model-server",
        help="HOST:PORT of a running model server (default: start the embedded one)",
    )
    p.add_argument(
        "--models-dir",
        type=Path,
        default=BUNDLED_MODELS,
        help="models the embedded server serves, as NAME/VERSION/saved_model.pb "
        "(default: the bundled models/)",
    )
    p.add_argument("--model", default=None, help="model name (default: KIOSK_SEGMENTATION_MODEL)")
    p.add_argument("--version", type=int, default=None, help="model version (default: newest)")
    p.add_argument("--limit", type=int, default=None, help="at most this many images per set")
    p.add_argument("--synthetic-count", type=int, default=24, help="generated images")
    p.add_argument("--synthetic-size", type=int, default=512, help="side of a generated image")
    p.add_argument("--cache-dir", type=Path, default=CACHE, help="where downloads are kept")
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="JSON report (default: %(default)s)"
    )
    tracking_report.add_arguments(p)
    wholecell_report.add_arguments(p)
    return p


def evaluate(args: argparse.Namespace, target: str, server: str) -> dict[str, Any]:
    """The report for parsed arguments, against the model server at ``target``."""
    settings = SegmentationSettings()
    model = args.model or settings.segmentation_model
    version = args.version
    config = PipelineConfig.from_settings(settings)
    names = list(DATASETS) if args.datasets == "all" else args.datasets.split(",")
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise EvaluationError(f"unknown data set {unknown[0]!r}; choose from {', '.join(DATASETS)}")
    nuclear_sets = [n for n in names if n not in WHOLE_CELL_DATASETS]
    datasets = load_datasets(
        nuclear_sets if "only" not in (args.tracking, args.wholecell) else [],
        limit=args.limit,
        cache=args.cache_dir,
        synthetic=(args.synthetic_count, args.synthetic_size),
    )
    predict = ServedModel(target, model, version)
    predict(np.zeros((1, 64, 64, 1), np.float32))  # connect (and warm up) before timing
    methods: dict[str, Segmenter] = {
        "model": model_segmenter(predict, config),
        "baseline": baseline_segmenter,
    }
    served = served_postprocessing(config.contract)
    tuned = trained_postprocessing(args.models_dir, model)
    differs = tuned is not None and any(served.get(k) != v for k, v in tuned.items())
    if tuned is not None and differs:
        # What the consumer serves (deep_watershed's defaults) is the headline; the settings
        # tuned for this model are shown beside it until the defaults are updated to match.
        methods["model+tuned-postprocess"] = model_segmenter(
            predict, config, tuned_postprocess(tuned)
        )
    results = {d.name: evaluate_dataset(d, methods, config.model_mpp) for d in datasets}
    report: dict[str, Any] = {
        "evaluation": "nuclear segmentation quality",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "model": {
            "name": model,
            "version": version,
            "version_answered": predict.answered,
            "server": server,
            "models_dir": str(args.models_dir),
        },
        "pipeline": {
            **{k: v for k, v in config.options.items() if k != "size_multiple"},
            "postprocess": {
                k: v for k, v in served.items() if isinstance(v, int | float | str | bool)
            },
            "tuned_postprocess": tuned,
            "tuned_differs_from_served": differs,
        },
        "baseline": "evaluation.baseline.classical_segment (Otsu + distance watershed)",
        "scoring": "pooled over images; F1/precision/recall at IoU 0.5; mAP = mean over IoU "
        "0.5..0.95 of TP/(TP+FP+FN); 'missed' = true objects no prediction touches",
        "target_f1_real": TARGET_F1,
        "datasets": results,
    }
    if args.wholecell != "off" and args.tracking != "only":
        segmenters = {}
        for name in wholecell_report.served_models(args.models_dir):
            contract = WHOLE_CELL_MODEL if name == WHOLE_CELL_MODEL.name else CYTOPLASM_MODEL
            served_model = ServedModel(target, name, None, contract)
            segmenters[name] = compartments_segmenter(
                served_model, PipelineConfig.from_settings(settings, contract)
            )
        report["wholecell"] = wholecell_report.evaluate_wholecell(
            args, segmenters, args.cache_dir, bacteria="bacteria" in names
        )
    if args.tracking != "off" and args.wholecell != "only":
        report["tracking"] = tracking_report.evaluate_tracking(
            args,
            methods["model"],
            hela="ctc-hela" in names,
            linkers=tracking_report.served_linkers(target),
        )
    return report


def served_models(args: argparse.Namespace, model: str) -> tuple[str, ...]:
    """The segmentation model; the division model when tracking is scored and the models
    folder has it (its linker then gets a row of its own); the whole-cell models when they
    are scored."""
    models = [model]
    if args.tracking != "off" and (args.models_dir / DIVISION_MODEL.name).is_dir():
        models.append(DIVISION_MODEL.name)
    if args.wholecell != "off":
        models += [m for m in wholecell_report.served_models(args.models_dir) if m not in models]
    return tuple(models)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model = args.model or SegmentationSettings().segmentation_model
    from kiosk.serving.client import PredictError, close_channels

    try:
        if args.tracking != "off":
            tracking_report.check_arguments(args)  # refused before the server starts
        if args.model_server:
            report = evaluate(args, args.model_server, args.model_server)
        else:
            with embedded_model_server(args.models_dir, served_models(args, model)) as server:
                report = evaluate(args, server.target, "embedded (python -m model_server)")
    except (EvaluationError, PredictError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        close_channels()
    answered = report["model"]["version_answered"]
    print(f"model {model} version {answered} via {report['model']['server']}")
    if report["datasets"]:
        print(format_table(report))
        print()
        for line in verdicts(report):
            print(line)
    if "wholecell" in report:
        print()
        print(wholecell_report.format_wholecell(report["wholecell"]))
        print()
        for line in report["wholecell"]["verdicts"]:
            print(line)
    if "tracking" in report:
        print()
        print(tracking_report.format_tracking(report["tracking"]))
        print()
        for line in report["tracking"]["verdicts"]:
            print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0
