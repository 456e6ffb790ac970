"""Train, tune, export and document the bundled whole-cell model (Mesmer's task).

Two input channels, nuclear + (membrane or fluorescent cytoplasm, chosen per training image, so
one model serves both stains), two compartments (whole cell, nucleus) with three deep-watershed
heads each (``consumers.processing.contract.WHOLE_CELL_MODEL``). Trained from scratch on the
cell generator (evaluation.cells, exact labels) with the framework the nuclear model uses
(models.training.data / fit / tuning); each compartment's deep_watershed settings are tuned on
held-out images and the exported SavedModel is scored on a second held-out set, beside the
classical baseline (evaluation.baseline.classical_whole_cell). Writes:

    {out}/1/                  the SavedModel (TF Serving layout, signature serving_default)
    {out}/training.json       settings, library versions, wall time, validation figures
    {out}/MODEL.md            the model card

Run from the repository root:

    .venv/bin/python -m models.training.train_wholecell --out models/WholeCellSegmentation
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

from consumers.processing.contract import WHOLE_CELL_MODEL as CONTRACT
from consumers.processing.normalize import normalize
from evaluation.baseline import STAINS, classical_whole_cell
from evaluation.cells import CellImage, generate_cells
from evaluation.quality import DEFAULT_AP_THRESHOLDS
from models.training.data import Pool, drawn_side, jitter_zoom, resampled
from models.training.lean_signature import CARD_LINE
from models.training.options import Smoke, TrainingArgs, training_parser
from models.training.targets import head_targets, targets
from models.training.tuning import figures, segment_all, tune

CELL, NUCLEUS = CONTRACT.compartments

# Seed ranges kept apart from each other (and from the nuclear model's).
TRAIN_SEED_BASE = 3_000_000
TUNE_SEED_BASE = 30_000_000
TEST_SEED_BASE = 40_000_000


@dataclass
class Args(TrainingArgs):
    """The shared settings and the whole-cell model's own."""

    membrane_fraction: float = 0.5


def parse_args(argv: list[str] | None = None) -> Args:
    parser = training_parser(
        __doc__,
        out=Path("models/WholeCellSegmentation"),
        steps=2500,
        batch=12,
        pool=250,
        val_images=12,
        refresh_every=2,
    )
    parser.add_argument(
        "--membrane-fraction",
        type=float,
        default=0.5,
        help="share of training images whose second channel is membrane (else cytoplasm)",
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
    membrane_fraction: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One generated (nuclear, membrane-or-cytoplasm) image, normalised, and its six targets
    (whole cell: inner, outer, fg; nucleus: inner, outer, fg); float16."""
    rng = np.random.default_rng(seed)
    zoom = jitter_zoom(rng, scale_jitter)
    side = drawn_side(size, zoom)
    drawn = generate_cells((side, side), seed=rng)
    stain = "membrane" if rng.random() < membrane_fraction else "cytoplasm"
    image = drawn.stack(("nuclear", stain))
    image, cells, nuclei = resampled(size, zoom, image, drawn.cells, drawn.nuclei)
    method = "clahe" if rng.random() < clahe_fraction else "percentile"
    x = normalize(image, method)
    y = np.concatenate([targets(cells), targets(nuclei)], axis=-1)
    return x.astype(np.float16), y.astype(np.float16)


def split_targets(ys: np.ndarray) -> dict[str, np.ndarray]:
    """(B, t, t, 6) targets -> the six heads: the whole cell's from channels 0-2, the
    nucleus' from 3-5."""
    return {**head_targets(ys, CELL.heads, 0), **head_targets(ys, NUCLEUS.heads, 3)}


def make_pool(args: Args) -> Pool:
    return Pool.from_options(
        partial(
            make_example,
            size=args.pool_tile,
            clahe_fraction=args.clahe_fraction,
            scale_jitter=args.scale_jitter,
            membrane_fraction=args.membrane_fraction,
        ),
        split_targets,
        args,
        in_channels=CONTRACT.input_channels,
        target_channels=6,
        seed_base=TRAIN_SEED_BASE,
    )


def held_out(base: int, args: Args) -> list[tuple[CellImage, str]]:
    """Generated images from a reserved seed range, half shown with membrane, half cytoplasm."""
    size = (args.val_size, args.val_size)
    return [(generate_cells(size, seed=base + i), STAINS[i % 2]) for i in range(args.val_images)]


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

    model = build_model(contract=CONTRACT, name="whole_cell_deep_watershed")
    trained = fit.train_and_export(model, pool, CONTRACT, args, log)
    model, serve, version_dir = trained.model, trained.serve, trained.version_dir

    def predict(drawn: CellImage, stain: str) -> dict[str, np.ndarray]:
        x = normalize(drawn.stack(("nuclear", stain)))[None]
        return fit.predict_planes(serve, CONTRACT, x)

    truth = {CELL.name: lambda d: d.cells, NUCLEUS.name: lambda d: d.nuclei}
    tune_maps = [predict(d, s) for d, s in tune_set]
    test_maps = [predict(d, s) for d, s in test_set]
    params: dict[str, dict[str, Any]] = {}
    tune_fig: dict[str, Any] = {}
    test_fig: dict[str, Any] = {}
    baseline_fig: dict[str, Any] = {}
    baseline = [
        dict(
            zip(
                (CELL.name, NUCLEUS.name),
                classical_whole_cell(d.nuclear, getattr(d, s), stain_kind=s, mpp=d.mpp),
                strict=True,
            )
        )
        for d, s in test_set
    ]
    ws_seconds = 0.0
    for compartment in CONTRACT.compartments:
        name, heads, true_of = compartment.name, compartment.heads, truth[compartment.name]
        log(f"tuning {name}")
        params[name], tune_fig[name] = tune(
            tune_maps, [true_of(d) for d, _ in tune_set], log, heads
        )
        t0 = time.perf_counter()
        pred = segment_all(test_maps, params[name], heads)
        ws_seconds += time.perf_counter() - t0
        test_fig[name], baseline_fig[name] = {}, {}
        for stain in (*STAINS, "all"):
            idx = [i for i, (_, s) in enumerate(test_set) if stain in (s, "all")]
            test_fig[name][stain] = figures([(true_of(test_set[i][0]), pred[i]) for i in idx])
            baseline_fig[name][stain] = figures(
                [(true_of(test_set[i][0]), baseline[i][name]) for i in idx]
            )
        log(f"test {name}: {test_fig[name]}")
        log(f"baseline {name}: {baseline_fig[name]}")
    megapixels = sum(d.cells.size for d, _ in test_set) / 1e6

    timings = fit.inference_ms(serve, CONTRACT, args.threads, log)
    report = {
        "model": CONTRACT.name,
        "version": 1,
        "architecture": "depthwise-separable U-Net, strided stem, 4 downsamplings, "
        "2 compartments x 3 heads",
        "parameters": int(model.count_params()),
        "saved_model_bytes": int(fit.saved_model_bytes(version_dir)),
        "signature": {"name": "serving_default", **trained.signature},
        "size_multiple": SIZE_MULTIPLE,
        "model_mpp": CONTRACT.mpp,
        "input_channels": ["nuclear", "membrane or cytoplasm"],
        "normalization": {
            "function": "consumers.processing.normalize.normalize",
            "method": "percentile",
            "per": "channel",
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
            "second channel membrane or cytoplasm per image",
        ),
        "validation": {
            "data": f"{args.val_images} generated {args.val_size}x{args.val_size} images per set "
            "(evaluation.cells, held-out seeds), half with a membrane and half with a cytoplasm "
            "second channel; settings tuned on 'tune', figures reported on 'test'",
            "iou_thresholds_for_mean_ap": [float(t) for t in DEFAULT_AP_THRESHOLDS],
            "tune": tune_fig,
            "test": test_fig,
            "baseline": {
                "function": "evaluation.baseline.classical_whole_cell",
                **baseline_fig,
            },
        },
        **fit.closing_record(
            args, timings, 1000 * ws_seconds / megapixels, "train_wholecell", started
        ),
    }
    (args.out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "MODEL.md").write_text(model_card(report))
    log(f"wrote {args.out / 'training.json'} and MODEL.md")
    return 0


def _rows(v: dict[str, Any], compartment: str) -> str:
    keys = ("precision", "recall", "f1", "mean_ap", "ap_at_0.75")
    lines = []
    for method, figs in (("model", v["test"]), ("baseline", v["baseline"])):
        for stain, fig in figs[compartment].items():
            cells = [compartment, stain, method, *(str(fig[k]) for k in keys)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def model_card(r: dict[str, Any]) -> str:
    """The human-readable summary of training.json."""
    t, v, inf = r["training"], r["validation"], r["inference_ms"]
    pp = r["postprocessing"]
    ws = "\n".join(
        f"  - {name}: " + ", ".join(f"{k}={val!r}" for k, val in pp[name].items())
        for name in (CELL.name, NUCLEUS.name)
    )
    mb = r["saved_model_bytes"] / 1e6
    return f"""# WholeCellSegmentation (version 1)

Whole-cell and nuclear instance segmentation from two fluorescence channels, a nuclear stain and
a membrane or cytoplasm stain (the task of DeepCell's Mesmer): a deep-watershed model with two
compartments, trained from scratch on procedurally generated cells (`evaluation/cells.py`).
Every figure and setting is in `training.json`.

## Contract (`consumers.processing.contract.WHOLE_CELL_MODEL`)
{CARD_LINE}
- Input `image`: float32 `[batch, H, W, 2]`, channel 0 nuclear, channel 1 membrane or
  cytoplasm; H and W multiples of {r["size_multiple"]} (pad first).
- Pixel size {r["model_mpp"]} um/px: resample inputs by image_mpp / model_mpp.
- Normalise each channel with `consumers.processing.normalize.normalize(image, "percentile")`.
- Outputs per compartment: `whole_cell_inner_distance`, `whole_cell_outer_distance`,
  `whole_cell_fgbg` and `nuclear_inner_distance`, `nuclear_outer_distance`, `nuclear_fgbg`
  (`[b,H,W,1]`, `[b,H,W,1]`, `[b,H,W,2]` softmax with channel 1 the foreground).
- Post-processing: `WHOLE_CELL_MODEL.postprocess_compartments(maps)` runs `deep_watershed` per
  compartment with these settings (tuned on held-out generated images):
{ws}

## Model
- {r["architecture"]}.
- {r["parameters"]:,} parameters, {mb:.2f} MB on disk.
- Inference, one image after warm-up, {inf["threads"]} CPU threads: {inf["512x512"]} ms for
  512x512, {inf["1024x1024"]} ms for 1024x1024.
- deep_watershed, both compartments: {r["deep_watershed_ms_per_megapixel"]} ms per megapixel.

## Training
- {t["steps"]} Adam steps (peak learning rate {t["lr"]}), batches of {t["batch"]} patches of
  {t["tile"]}x{t["tile"]} px; a pool of {t["pool"]} generated {t["pool_tile"]}px images,
  {t["refresh"]} replaced every {t["refresh_every"]} steps; second channel membrane in
  {t["membrane_fraction"]:.0%} of them, cytoplasm otherwise.
- Losses: MSE on the distances, cross-entropy on fgbg, for both compartments; weights
  {t["loss_weights"]}.
- Augmentation: {t["augmentation"]}.
- Seed {t["seed"]}; {t["train_seconds"] / 60:.1f} min of training, {r["wall_seconds"] / 60:.1f} min
  in all, on {r["environment"]["cpu_count"]} CPU cores.

Reproduce from the repository root:

    {r["command"].replace("python", ".venv/bin/python", 1)}

## Validation (generated images, held-out seeds)
{v["data"]}. Baseline: `{v["baseline"]["function"]}` (nuclei by Otsu + distance watershed, cells
by a watershed seeded with them on the second channel).

| compartment | 2nd channel | method | P@0.5 | R@0.5 | F1@0.5 | mAP 0.5:0.95 | AP@0.75 |
|---|---|---|---|---|---|---|---|
{_rows(v, CELL.name)}
{_rows(v, NUCLEUS.name)}

AP = TP / (TP + FP + FN), counts pooled over the set.

## Limits
Trained only on synthetic cells at 0.65 um/px: expect lower figures on real images. Not for
brightfield or a single cytoplasm channel, nor for more than one membrane/cytoplasm channel.
"""


if __name__ == "__main__":
    raise SystemExit(main())
