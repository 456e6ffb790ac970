"""Train, tune, export and document the bundled cytoplasm model: whole cells from one channel.

One input channel, a fluorescent cytoplasm stain or a brightfield (phase-like) image, chosen per
training image so one model serves both (DeepCell's ``CytoplasmSegmentation`` served both);
one compartment, whole cells, with three deep-watershed heads
(``consumers.processing.contract.CYTOPLASM_MODEL``). Trained from scratch on the cell generator
(evaluation.cells) with the framework the other models use (models.training.data / fit /
tuning); deep_watershed settings are tuned on held-out images and the exported SavedModel is
scored on a second held-out set, per stain, beside the classical baseline
(evaluation.baseline.classical_cytoplasm). Writes:

    {out}/1/                  the SavedModel (TF Serving layout, signature serving_default)
    {out}/training.json       settings, library versions, wall time, validation figures
    {out}/MODEL.md            the model card

Run from the repository root:

    .venv/bin/python -m models.training.train_cytoplasm --out models/CytoplasmSegmentation
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from consumers.processing.contract import CYTOPLASM_MODEL as CONTRACT
from consumers.processing.normalize import normalize
from evaluation.baseline import SINGLE_STAINS, classical_cytoplasm
from evaluation.cells import CellImage, generate_cells
from evaluation.quality import DEFAULT_AP_THRESHOLDS
from models.training.data import Pool, drawn_side, jitter_zoom, resampled
from models.training.lean_signature import CARD_LINE
from models.training.options import Smoke, TrainingArgs, training_parser
from models.training.targets import head_targets, targets
from models.training.tuning import figures, segment_all, tune

# Seed ranges kept apart from each other and from the other models'.
TRAIN_SEED_BASE = 5_000_000
TUNE_SEED_BASE = 50_000_000
TEST_SEED_BASE = 60_000_000


@dataclass
class Args(TrainingArgs):
    """The shared settings and the cytoplasm model's own."""

    brightfield_fraction: float = 0.7


def parse_args(argv: list[str] | None = None) -> Args:
    parser = training_parser(
        __doc__,
        out=Path("models/CytoplasmSegmentation"),
        steps=6000,
        batch=12,
        pool=250,
        val_images=12,
        refresh_every=2,
    )
    parser.add_argument(
        "--brightfield-fraction",
        type=float,
        default=0.7,
        help="share of training images that are brightfield (else fluorescent cytoplasm): "
        "the harder of the two gets more of the training",
    )
    args = Args(**vars(parser.parse_args(argv)))
    Smoke(steps=20, pool=16, val_images=2).apply(args)
    return args


# --- data ------------------------------------------------------------------------------------


def make_example(
    seed: int,
    size: int,
    *,
    clahe_fraction: float,
    scale_jitter: float,
    brightfield_fraction: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One generated cytoplasm-or-brightfield image, normalised, and its three whole-cell
    targets (inner, outer, fg); float16."""
    rng = np.random.default_rng(seed)
    zoom = jitter_zoom(rng, scale_jitter)
    side = drawn_side(size, zoom)
    drawn = generate_cells((side, side), seed=rng)
    stain = "brightfield" if rng.random() < brightfield_fraction else "cytoplasm"
    image, cells = resampled(size, zoom, drawn.stack((stain,)), drawn.cells)
    method = "clahe" if rng.random() < clahe_fraction else "percentile"
    return normalize(image, method).astype(np.float16), targets(cells).astype(np.float16)


def split_targets(ys: np.ndarray) -> dict[str, np.ndarray]:
    """(B, t, t, 3) targets -> the three heads."""
    return head_targets(ys, CONTRACT.heads)


def make_pool(args: Args) -> Pool:
    return Pool.from_options(
        partial(
            make_example,
            size=args.pool_tile,
            clahe_fraction=args.clahe_fraction,
            scale_jitter=args.scale_jitter,
            brightfield_fraction=args.brightfield_fraction,
        ),
        split_targets,
        args,
        in_channels=CONTRACT.input_channels,
        target_channels=3,
        seed_base=TRAIN_SEED_BASE,
    )


def held_out(base: int, args: Args) -> list[tuple[CellImage, str]]:
    """Generated images from a reserved seed range, half cytoplasm, half brightfield."""
    size = (args.val_size, args.val_size)
    return [
        (generate_cells(size, seed=base + i), SINGLE_STAINS[i % 2]) for i in range(args.val_images)
    ]


# --- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from models.training import fit
    from models.training.model import SIZE_MULTIPLE, build_model

    log = fit.begin(args, started, SIZE_MULTIPLE)
    pool = make_pool(args)
    log(f"pool: {args.pool} images of {args.pool_tile}px generated")
    tune_set = held_out(TUNE_SEED_BASE, args)
    test_set = held_out(TEST_SEED_BASE, args)

    model = build_model(contract=CONTRACT, name="cytoplasm_deep_watershed")
    trained = fit.train_and_export(model, pool, CONTRACT, args, log)
    model, serve, version_dir = trained.model, trained.serve, trained.version_dir

    def predict(drawn: CellImage, stain: str) -> dict[str, np.ndarray]:
        return fit.predict_planes(serve, CONTRACT, normalize(drawn.stack((stain,)))[None])

    heads = CONTRACT.heads
    log("tuning whole-cell")
    params, tune_fig = tune(
        [predict(d, s) for d, s in tune_set], [d.cells for d, _ in tune_set], log, heads
    )
    test_maps = [predict(d, s) for d, s in test_set]
    t0 = time.perf_counter()
    pred = segment_all(test_maps, params, heads)
    ws_seconds = time.perf_counter() - t0
    baseline = [classical_cytoplasm(getattr(d, s), stain_kind=s, mpp=d.mpp) for d, s in test_set]
    test_fig: dict[str, Any] = {}
    baseline_fig: dict[str, Any] = {}
    for stain in (*SINGLE_STAINS, "all"):
        idx = [i for i, (_, s) in enumerate(test_set) if stain in (s, "all")]
        test_fig[stain] = figures([(test_set[i][0].cells, pred[i]) for i in idx])
        baseline_fig[stain] = figures([(test_set[i][0].cells, baseline[i]) for i in idx])
    log(f"test: {test_fig}")
    log(f"baseline: {baseline_fig}")
    megapixels = sum(d.cells.size for d, _ in test_set) / 1e6

    timings = fit.inference_ms(serve, CONTRACT, args.threads, log)
    report = {
        "model": CONTRACT.name,
        "version": 1,
        "architecture": "depthwise-separable U-Net, strided stem, 4 downsamplings, 3 heads",
        "parameters": int(model.count_params()),
        "saved_model_bytes": int(fit.saved_model_bytes(version_dir)),
        "signature": {"name": "serving_default", **trained.signature},
        "size_multiple": SIZE_MULTIPLE,
        "model_mpp": CONTRACT.mpp,
        "input_channels": ["fluorescent cytoplasm or brightfield"],
        "normalization": {
            "function": "consumers.processing.normalize.normalize",
            "method": "percentile",
            "also_trained_with": "clahe",
            "clahe_fraction": args.clahe_fraction,
        },
        "postprocessing": {
            "function": "consumers.processing.deep_watershed.deep_watershed",
            "maxima_algorithm": "peak_local_max",
            **params,
        },
        "training": fit.training_record(
            args,
            trained,
            (TRAIN_SEED_BASE, TUNE_SEED_BASE, TEST_SEED_BASE),
            "brightfield or fluorescent cytoplasm per image",
        ),
        "validation": {
            "data": f"{args.val_images} generated {args.val_size}x{args.val_size} images per set "
            "(evaluation.cells, held-out seeds), half fluorescent cytoplasm and half "
            "brightfield; settings tuned on 'tune', figures reported on 'test'",
            "iou_thresholds_for_mean_ap": [float(t) for t in DEFAULT_AP_THRESHOLDS],
            "tune": tune_fig,
            "test": test_fig,
            "baseline": {"function": "evaluation.baseline.classical_cytoplasm", **baseline_fig},
        },
        **fit.closing_record(
            args, timings, 1000 * ws_seconds / megapixels, "train_cytoplasm", started
        ),
    }
    (args.out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "MODEL.md").write_text(model_card(report))
    log(f"wrote {args.out / 'training.json'} and MODEL.md")
    return 0


def model_card(r: dict[str, Any]) -> str:
    """The human-readable summary of training.json."""
    t, v, inf = r["training"], r["validation"], r["inference_ms"]
    pp = ", ".join(
        f"{k}={val!r}" for k, val in r["postprocessing"].items() if k not in ("function",)
    )
    keys = ("precision", "recall", "f1", "mean_ap", "ap_at_0.75")
    rows = "\n".join(
        "| " + " | ".join([stain, method, *(str(fig[k]) for k in keys)]) + " |"
        for method, figs in (("model", v["test"]), ("baseline", v["baseline"]))
        for stain, fig in figs.items()
        if stain != "function"
    )
    return f"""# CytoplasmSegmentation (version 1)

Whole-cell instance segmentation from one channel, a fluorescent cytoplasm stain or a
brightfield (phase-like) image (the task of DeepCell's CytoplasmSegmentation): a deep-watershed
model trained from scratch on procedurally generated cells (`evaluation/cells.py`). Every
figure and setting is in `training.json`.

## Contract (`consumers.processing.contract.CYTOPLASM_MODEL`)
{CARD_LINE}
- Input `image`: float32 `[batch, H, W, 1]`; H and W multiples of {r["size_multiple"]}.
- Pixel size {r["model_mpp"]} um/px: resample inputs by image_mpp / model_mpp.
- Normalise with `consumers.processing.normalize.normalize(image, "percentile")`.
- Outputs `inner_distance`, `outer_distance`, `fgbg` (softmax, channel 1 the foreground).
- Post-processing: `deep_watershed` with {pp}.

## Model
- {r["architecture"]}; {r["parameters"]:,} parameters, {r["saved_model_bytes"] / 1e6:.2f} MB.
- Inference, one image after warm-up, {inf["threads"]} CPU threads: {inf["512x512"]} ms for
  512x512, {inf["1024x1024"]} ms for 1024x1024; deep_watershed
  {r["deep_watershed_ms_per_megapixel"]} ms per megapixel.

## Training
- {t["steps"]} Adam steps (peak learning rate {t["lr"]}), batches of {t["batch"]} patches of
  {t["tile"]}x{t["tile"]} px from a pool of {t["pool"]} generated {t["pool_tile"]}px images;
  brightfield in {t["brightfield_fraction"]:.0%} of them, fluorescent cytoplasm otherwise.
- Losses: MSE on the distances, cross-entropy on fgbg; weights {t["loss_weights"]}.
- Augmentation: {t["augmentation"]}.
- Seed {t["seed"]}; {t["train_seconds"] / 60:.1f} min of training, {r["wall_seconds"] / 60:.1f} min
  in all, on {r["environment"]["cpu_count"]} CPU cores.

Reproduce from the repository root:

    {r["command"].replace("python", ".venv/bin/python", 1)}

## Validation (generated images, held-out seeds)
{v["data"]}. Baseline: `{v["baseline"]["function"]}` (Otsu on the log intensity, or on the
brightfield image's departure from its smoothed background, then a distance-peak watershed).

| channel | method | P@0.5 | R@0.5 | F1@0.5 | mAP 0.5:0.95 | AP@0.75 |
|---|---|---|---|---|---|---|
{rows}

AP = TP / (TP + FP + FN), counts pooled over the set.

## Limits
Trained only on synthetic cells at 0.65 um/px: expect lower figures on real images, most of all
on real brightfield and phase contrast, whose look varies with the optics far more than the
generator's does. One channel only: with a nuclear channel too, the mesmer job type's
WholeCellSegmentation does better.
"""


if __name__ == "__main__":
    raise SystemExit(main())
