"""Train, tune, export and document the bundled nuclear segmentation model.

Why a script in the repository: the committed SavedModel must be reproducible from a seed on a
laptop CPU. It trains on procedurally generated images (evaluation.synthetic, exact labels),
feeds the network exactly what serving feeds it (consumers.processing.normalize), tunes
deep_watershed on held-out images, then scores a second held-out set with the *exported*
SavedModel and writes:

    {out}/1/                  the SavedModel (TF Serving layout, signature serving_default)
    {out}/training.json       settings, library versions, wall time, validation figures
    {out}/MODEL.md            the model card

Run from the repository root:

    .venv/bin/python -m models.training.train_nuclear --out models/NuclearSegmentation
"""

from __future__ import annotations

import json
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from consumers.processing.normalize import normalize
from consumers.segmentation import NUCLEAR_MODEL as CONTRACT
from evaluation.quality import DEFAULT_AP_THRESHOLDS
from evaluation.synthetic import generate
from models.training.data import Pool, drawn_side, jitter_zoom, resampled
from models.training.lean_signature import CARD_LINE
from models.training.options import Smoke, TrainingArgs, training_parser
from models.training.targets import head_targets, targets
from models.training.tuning import figures, segment_all, tune

HEADS = CONTRACT.heads

# Seed ranges kept apart so training, tuning and reported figures never share an image.
TRAIN_SEED_BASE = 1_000_000
TUNE_SEED_BASE = 10_000_000
TEST_SEED_BASE = 20_000_000


Args = TrainingArgs


def parse_args(argv: list[str] | None = None) -> Args:
    parser = training_parser(
        __doc__,
        out=Path("models/NuclearSegmentation"),
        steps=5000,
        batch=16,
        pool=1000,
        val_images=16,
    )
    args = Args(**vars(parser.parse_args(argv)))
    Smoke(steps=30, pool=32, val_images=3).apply(args)
    return args


# --- data ------------------------------------------------------------------------------------


def make_example(
    seed: int, size: int, *, clahe_fraction: float, scale_jitter: float
) -> tuple[np.ndarray, np.ndarray]:
    """One generated image (normalised, float16) and its targets (inner, outer, fg; float16).

    Half the images are resampled by a random factor (scale jitter: the consumer resamples
    inputs to 0.65 um/px, so the model must tolerate interpolation and slightly off sizes).
    """
    rng = np.random.default_rng(seed)
    zoom = jitter_zoom(rng, scale_jitter)
    side = drawn_side(size, zoom)
    image, labels = resampled(size, zoom, *generate((side, side), seed=rng))
    method = "clahe" if rng.random() < clahe_fraction else "percentile"
    x = normalize(image, method)[..., None]
    return x.astype(np.float16), targets(labels).astype(np.float16)


def split_targets(ys: np.ndarray) -> dict[str, np.ndarray]:
    """(B, t, t, 3) targets -> the three heads."""
    return head_targets(ys, HEADS)


def make_pool(args: Args) -> Pool:
    """The training pool: seeds from TRAIN_SEED_BASE, one range per --seed."""
    return Pool.from_options(
        partial(
            make_example,
            size=args.pool_tile,
            clahe_fraction=args.clahe_fraction,
            scale_jitter=args.scale_jitter,
        ),
        split_targets,
        args,
        in_channels=1,
        target_channels=3,
        seed_base=TRAIN_SEED_BASE,
    )


def held_out(base: int, args: Args) -> list[tuple[np.ndarray, np.ndarray]]:
    """(raw image, labels) pairs from a reserved seed range, varied like the training data."""
    return [generate((args.val_size, args.val_size), seed=base + i) for i in range(args.val_images)]


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

    trained = fit.train_and_export(build_model(), pool, CONTRACT, args, log)
    model, serve, version_dir = trained.model, trained.serve, trained.version_dir

    def predict(image: np.ndarray, method: str = "percentile") -> dict[str, np.ndarray]:
        return fit.predict_planes(serve, CONTRACT, normalize(image, method)[None, ..., None])

    tune_maps = [predict(img) for img, _ in tune_set]
    sweep: list[dict[str, Any]] = []
    params, tune_fig = tune(tune_maps, [lab for _, lab in tune_set], log, HEADS, trials=sweep)
    test_maps = [predict(img) for img, _ in test_set]
    test_labels = [lab for _, lab in test_set]
    t0 = time.perf_counter()
    test_pred = segment_all(test_maps, params, HEADS)
    ws_seconds = time.perf_counter() - t0
    megapixels = sum(lab.size for lab in test_labels) / 1e6
    test_fig = figures(list(zip(test_labels, test_pred, strict=True)))
    clahe_pred = segment_all([predict(img, "clahe") for img, _ in test_set], params, HEADS)
    clahe_fig = figures(list(zip(test_labels, clahe_pred, strict=True)))
    log(f"test (percentile): {test_fig}")
    log(f"test (clahe): {clahe_fig}")

    timings = fit.inference_ms(serve, CONTRACT, args.threads, log)

    size_bytes = fit.saved_model_bytes(version_dir)
    report = {
        "model": "NuclearSegmentation",
        "version": 1,
        "architecture": "depthwise-separable U-Net, strided stem, 4 downsamplings, 3 heads",
        "parameters": int(model.count_params()),
        "saved_model_bytes": int(size_bytes),
        "signature": {"name": "serving_default", **trained.signature},
        "size_multiple": SIZE_MULTIPLE,
        "model_mpp": CONTRACT.mpp,
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
            args, trained, (TRAIN_SEED_BASE, TUNE_SEED_BASE, TEST_SEED_BASE)
        ),
        "validation": {
            "data": f"{args.val_images} generated {args.val_size}x{args.val_size} images per set "
            "(evaluation.synthetic, held-out seeds); thresholds tuned on 'tune', "
            "figures reported on 'test'",
            "iou_thresholds_for_mean_ap": [float(t) for t in DEFAULT_AP_THRESHOLDS],
            "tune": tune_fig,
            "sweep": sweep,
            "test": test_fig,
            "test_clahe_input": clahe_fig,
        },
        **fit.closing_record(
            args, timings, 1000 * ws_seconds / megapixels, "train_nuclear", started
        ),
    }
    (args.out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "MODEL.md").write_text(model_card(report))
    log(f"wrote {args.out / 'training.json'} and MODEL.md")
    return 0


def _row(name: str, fig: dict[str, Any]) -> str:
    keys = ("precision", "recall", "f1", "mean_ap", "ap_at_0.75")
    return "| " + " | ".join([name, *(str(fig[k]) for k in keys)]) + " |"


def model_card(r: dict[str, Any]) -> str:
    """The human-readable summary of training.json."""
    t, v, inf = r["training"], r["validation"], r["inference_ms"]
    ws = ", ".join(f"{k}={val!r}" for k, val in r["postprocessing"].items() if k != "function")
    mb = r["saved_model_bytes"] / 1e6
    return f"""# NuclearSegmentation (version 1)

Nuclear instance segmentation for 2-D fluorescence images (DAPI/Hoechst-like): a deep-watershed
model in the style of DeepCell's nuclear model, trained from scratch on procedurally generated
images (`evaluation/synthetic.py`). Every figure and setting is in `training.json`.

## Contract
{CARD_LINE}
- Input `image`: float32 `[batch, H, W, 1]`; H and W multiples of {r["size_multiple"]}
  (`size_multiple`; pad first), otherwise any size (fully convolutional).
- Pixel size {r["model_mpp"]} um/px (`model_mpp`): resample inputs by image_mpp / model_mpp.
- Normalise each image with `consumers.processing.normalize.normalize(image, "percentile")`
  (1st..99.8th percentile to [0, 1]). `"clahe"` works too: {t["clahe_fraction"]:.0%} of the
  training images were normalised that way.
- Outputs: `inner_distance` `[b,H,W,1]`, `outer_distance` `[b,H,W,1]`, `fgbg` `[b,H,W,2]`
  (softmax, channel 1 = foreground).
- Post-processing: `consumers.processing.deep_watershed.deep_watershed(inner, outer, fg)`;
  the contract (`consumers.segmentation.NUCLEAR_MODEL`) declares the values tuned for this
  model on the generated 'tune' set ({len(r["validation"]["sweep"])} settings tried, every one
  in `training.json`, "validation", "sweep"):
  {ws}.

## Model
- {r["architecture"]}.
- {r["parameters"]:,} parameters, {mb:.2f} MB on disk.
- Inference, exported SavedModel, one image after warm-up, {inf["threads"]} CPU threads:
  {inf["512x512"]} ms for 512x512, {inf["1024x1024"]} ms for 1024x1024.
- deep_watershed: {r["deep_watershed_ms_per_megapixel"]} ms per megapixel.

## Training
- {t["steps"]} Adam steps (peak learning rate {t["lr"]}, warm-up then cosine decay), batches of
  {t["batch"]} patches of {t["tile"]}x{t["tile"]} px.
- Data: a pool of {t["pool"]} generated {t["pool_tile"]}x{t["pool_tile"]} images,
  {t["refresh"]} replaced by a fresh one every step.
- Losses: MSE on both distances, cross-entropy on fgbg; weights {t["loss_weights"]}.
- Augmentation: {t["augmentation"]}.
- Seed {t["seed"]}; {t["train_seconds"] / 60:.1f} min of training, {r["wall_seconds"] / 60:.1f} min
  in all, on {r["environment"]["cpu_count"]} CPU cores.

Reproduce from the repository root:

    {r["command"].replace("python", ".venv/bin/python", 1)}

## Validation (generated images, held-out seeds)
{v["data"]}.

| input | precision@0.5 | recall@0.5 | F1@0.5 | mAP 0.5:0.95 | AP@0.75 |
|---|---|---|---|---|---|
{_row("percentile", v["test"])}
{_row("clahe", v["test_clahe_input"])}

AP = TP / (TP + FP + FN), counts pooled over the set (the Cellpose / DSB 2018 convention).

## Limits
Trained only on synthetic nuclei at 0.65 um/px: expect lower figures on real images, most of
all on tissue sections, very dense or overlapping nuclei, unusual textures, and images far from
0.65 um/px that were not resampled. Not for cytoplasm or whole-cell segmentation.
"""


if __name__ == "__main__":
    raise SystemExit(main())
