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

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from consumers.processing.deep_watershed import deep_watershed
from consumers.processing.normalize import normalize
from consumers.segmentation import NUCLEAR_MODEL as CONTRACT
from evaluation.quality import DEFAULT_AP_THRESHOLDS, score_thresholds, summary
from evaluation.synthetic import generate
from models.training.targets import targets

HEADS = CONTRACT.heads

# Seed ranges kept apart so training, tuning and reported figures never share an image.
TRAIN_SEED_BASE = 1_000_000
TUNE_SEED_BASE = 10_000_000
TEST_SEED_BASE = 20_000_000


@dataclass
class Args:
    """Command-line settings (all of them land in training.json)."""

    out: Path
    steps: int
    batch: int
    tile: int
    pool: int
    pool_tile: int
    refresh: int
    lr: float
    seed: int
    clahe_fraction: float
    scale_jitter: float
    val_images: int
    val_size: int
    threads: int
    log_every: int
    smoke: bool


def parse_args(argv: list[str] | None = None) -> Args:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("models/NuclearSegmentation"))
    p.add_argument("--steps", type=int, default=5000, help="optimiser steps")
    p.add_argument("--batch", type=int, default=16, help="patches per step")
    p.add_argument("--tile", type=int, default=128, help="training patch size (px)")
    p.add_argument("--pool", type=int, default=1000, help="generated images held in memory")
    p.add_argument("--pool-tile", type=int, default=256, help="size of a pool image (px)")
    p.add_argument("--refresh", type=int, default=1, help="pool images replaced per step")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (cosine decay)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--clahe-fraction",
        type=float,
        default=0.2,
        help="share of training images normalised with 'clahe' instead of 'percentile'",
    )
    p.add_argument(
        "--scale-jitter",
        type=float,
        default=0.25,
        help="resample half the images by a factor in [1/(1+j), 1+j]",
    )
    p.add_argument("--val-images", type=int, default=16, help="images in each held-out set")
    p.add_argument("--val-size", type=int, default=512, help="held-out image size (px)")
    p.add_argument("--threads", type=int, default=2, help="TensorFlow intra-op threads")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--smoke", action="store_true", help="tiny run to check the pipeline")
    ns = p.parse_args(argv)
    args = Args(**{k: v for k, v in vars(ns).items()})
    if args.smoke:
        args.steps, args.pool, args.val_images, args.val_size = 30, 32, 3, 256
        args.log_every = 10
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
    zoom = 1.0
    if scale_jitter > 0 and rng.random() < 0.5:
        zoom = float(np.exp(rng.uniform(-np.log1p(scale_jitter), np.log1p(scale_jitter))))
    raw_size = int(np.ceil(size / zoom)) + 2
    image, labels = generate((raw_size, raw_size), seed=rng)
    if zoom != 1.0:
        image = ndi.zoom(image, zoom, order=1)
        labels = ndi.zoom(labels, zoom, order=0)
    image, labels = image[:size, :size], labels[:size, :size]
    method = "clahe" if rng.random() < clahe_fraction else "percentile"
    x = normalize(image, method)[..., None]
    return x.astype(np.float16), targets(labels).astype(np.float16)


class Pool:
    """Generated examples held in memory, a few replaced every step for fresh variety."""

    def __init__(self, args: Args) -> None:
        self.args = args
        self.next_seed = TRAIN_SEED_BASE + args.seed * 100_000_000
        n, s = args.pool, args.pool_tile
        self.x = np.zeros((n, s, s, 1), np.float16)
        self.y = np.zeros((n, s, s, 3), np.float16)
        self.rng = np.random.default_rng(args.seed)
        for i in range(n):
            self._fill(i)

    def _fill(self, i: int) -> None:
        self.x[i], self.y[i] = make_example(
            self.next_seed,
            self.args.pool_tile,
            clahe_fraction=self.args.clahe_fraction,
            scale_jitter=self.args.scale_jitter,
        )
        self.next_seed += 1

    def refresh(self) -> None:
        for i in self.rng.integers(0, len(self.x), self.args.refresh):
            self._fill(int(i))

    def batch(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Random crops with dihedral flips and intensity gamma/contrast jitter."""
        a, rng, t = self.args, self.rng, self.args.tile
        xs = np.empty((a.batch, t, t, 1), np.float32)
        ys = np.empty((a.batch, t, t, 3), np.float32)
        for b in range(a.batch):
            i = rng.integers(len(self.x))
            r, c = rng.integers(0, a.pool_tile - t + 1, 2)
            x = self.x[i, r : r + t, c : c + t].astype(np.float32)
            y = self.y[i, r : r + t, c : c + t].astype(np.float32)
            k = int(rng.integers(4))
            x, y = np.rot90(x, k), np.rot90(y, k)
            if rng.random() < 0.5:
                x, y = x[:, ::-1], y[:, ::-1]
            gamma = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
            x = np.power(np.clip(x, 0.0, 1.0), gamma)
            x = x * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05)
            xs[b], ys[b] = x, y
        fg = ys[..., 2:3]
        return xs, {
            HEADS.inner: ys[..., 0:1],
            HEADS.outer: ys[..., 1:2],
            HEADS.foreground: np.concatenate([1.0 - fg, fg], axis=-1),
        }


def held_out(base: int, args: Args) -> list[tuple[np.ndarray, np.ndarray]]:
    """(raw image, labels) pairs from a reserved seed range, varied like the training data."""
    return [generate((args.val_size, args.val_size), seed=base + i) for i in range(args.val_images)]


# --- evaluation ------------------------------------------------------------------------------


def figures(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float | int]:
    """Data-set scores, counts pooled over images; mAP: mean over IoU 0.5..0.95 of TP/(TP+FP+FN)."""
    per_threshold: dict[float, list[Any]] = {}
    for true, pred in pairs:
        for s in score_thresholds(true, pred):
            per_threshold.setdefault(s.iou_threshold, []).append(s)
    return summary(per_threshold)


def segment_all(maps: list[dict[str, np.ndarray]], params: dict[str, Any]) -> list[np.ndarray]:
    return [
        deep_watershed(m[HEADS.inner], m[HEADS.outer], m[HEADS.foreground], **params) for m in maps
    ]


def tune(
    maps: list[dict[str, np.ndarray]], truth: list[np.ndarray], log: Any
) -> tuple[dict[str, Any], dict[str, float | int]]:
    """Coordinate search over deep_watershed's settings; objective F1@0.5 + mean AP."""
    grid: dict[str, list[Any]] = {
        "radius": [2, 3, 4, 5, 6, 8, 10],
        "maxima_threshold": [0.05, 0.1, 0.15, 0.2, 0.3, 0.4],
        "interior_threshold": [0.01, 0.05, 0.1, 0.2, 0.3],
        "fgbg_threshold": [0.3, 0.4, 0.5, 0.6, 0.7],
        "interior_smooth": [0.0, 0.5, 1.0, 2.0],
        "maxima_smooth": [0.0, 0.5, 1.0, 2.0],
        "small_objects_threshold": [0, 10, 20, 30],
    }
    params: dict[str, Any] = {
        "radius": 4,
        "maxima_threshold": 0.1,
        "interior_threshold": 0.01,
        "fgbg_threshold": 0.5,
        "interior_smooth": 1.0,
        "maxima_smooth": 0.0,
        "small_objects_threshold": 0,
    }

    def objective(p: dict[str, Any]) -> tuple[float, dict[str, float | int]]:
        f = figures(list(zip(truth, segment_all(maps, p), strict=True)))
        return f["f1"] + f["mean_ap"], f

    best, best_fig = objective(params)
    for _ in range(2):
        for name, values in grid.items():
            for v in values:
                if v == params[name]:
                    continue
                trial = {**params, name: v}
                value, fig = objective(trial)
                if value > best + 1e-6:
                    best, best_fig, params = value, fig, trial
        log(f"tune: {params} -> F1 {best_fig['f1']} mAP {best_fig['mean_ap']}")
    return params, best_fig


# --- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    from models.training.model import (
        SIZE_MULTIPLE,
        build_model,
        check_signature,
        export_saved_model,
    )

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()
    if args.tile % SIZE_MULTIPLE or args.val_size % SIZE_MULTIPLE:
        raise SystemExit(f"--tile and --val-size must be multiples of {SIZE_MULTIPLE}")

    def log(msg: str) -> None:
        print(f"[{time.time() - started:7.1f}s] {msg}", flush=True)

    log(f"settings: {vars(args)}")
    pool = Pool(args)
    log(f"pool: {args.pool} images of {args.pool_tile}px generated")
    tune_set = held_out(TUNE_SEED_BASE, args)
    test_set = held_out(TEST_SEED_BASE, args)

    model = build_model()
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=args.lr * 0.1,
        decay_steps=max(args.steps - args.steps // 20, 1),
        alpha=0.01,
        warmup_target=args.lr,
        warmup_steps=args.steps // 20,
    )
    loss_weights = {HEADS.inner: 1.0, HEADS.outer: 1.0, HEADS.foreground: 0.2}
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss={HEADS.inner: "mse", HEADS.outer: "mse", HEADS.foreground: "categorical_crossentropy"},
        loss_weights=loss_weights,
    )
    log(f"model: {model.count_params()} parameters")

    train_started = time.time()
    history: list[dict[str, float]] = []
    running: dict[str, float] = {}
    for step in range(1, args.steps + 1):
        x, y = pool.batch()
        out = model.train_on_batch(x, y, return_dict=True)
        for k, v in out.items():
            running[k] = running.get(k, 0.0) + float(v)
        pool.refresh()
        if step % args.log_every == 0 or step == args.steps:
            n = args.log_every if step % args.log_every == 0 else step % args.log_every
            mean = {k: round(v / n, 5) for k, v in running.items()}
            history.append({"step": step, **mean})
            rate = (time.time() - train_started) / step
            log(f"step {step}/{args.steps} {mean} ({rate:.2f} s/step)")
            running = {}
    train_seconds = time.time() - train_started

    # Export, reload and check the serving contract; all figures below use the reloaded model.
    version_dir = args.out / "1"
    if version_dir.exists():
        shutil.rmtree(version_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    export_saved_model(model, version_dir)
    signature = check_signature(version_dir)
    serve = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    log(f"exported {version_dir}: {signature}")

    def predict(image: np.ndarray) -> dict[str, np.ndarray]:
        x = normalize(image)[None, ..., None]
        out = serve(image=tf.constant(x))
        return {
            HEADS.inner: out[HEADS.inner].numpy()[0, ..., 0],
            HEADS.outer: out[HEADS.outer].numpy()[0, ..., 0],
            HEADS.foreground: out[HEADS.foreground].numpy()[0, ..., HEADS.foreground_channel],
        }

    tune_maps = [predict(img) for img, _ in tune_set]
    params, tune_fig = tune(tune_maps, [lab for _, lab in tune_set], log)
    test_maps = [predict(img) for img, _ in test_set]
    test_labels = [lab for _, lab in test_set]
    t0 = time.perf_counter()
    test_pred = segment_all(test_maps, params)
    ws_seconds = time.perf_counter() - t0
    megapixels = sum(lab.size for lab in test_labels) / 1e6
    test_fig = figures(list(zip(test_labels, test_pred, strict=True)))
    clahe_pred = []
    for img, _ in test_set:
        out = serve(image=tf.constant(normalize(img, "clahe")[None, ..., None]))
        clahe_pred.append(
            deep_watershed(
                out[HEADS.inner].numpy()[0, ..., 0],
                out[HEADS.outer].numpy()[0, ..., 0],
                out[HEADS.foreground].numpy()[0, ..., HEADS.foreground_channel],
                **params,
            )
        )
    clahe_fig = figures(list(zip(test_labels, clahe_pred, strict=True)))
    log(f"test (percentile): {test_fig}")
    log(f"test (clahe): {clahe_fig}")

    timings = {}
    for size in (512, 1024):
        x = tf.constant(np.random.default_rng(0).random((1, size, size, 1), dtype=np.float32))
        for _ in range(3):
            serve(**{CONTRACT.input: x})[HEADS.foreground].numpy()
        runs = []
        for _ in range(7):
            t = time.perf_counter()
            serve(**{CONTRACT.input: x})[HEADS.foreground].numpy()
            runs.append(time.perf_counter() - t)
        timings[f"{size}x{size}"] = round(1000 * float(np.median(runs)), 1)
    log(f"inference ms (median of 7, {args.threads} threads): {timings}")

    size_bytes = sum(f.stat().st_size for f in version_dir.rglob("*") if f.is_file())
    report = {
        "model": "NuclearSegmentation",
        "version": 1,
        "architecture": "depthwise-separable U-Net, strided stem, 4 downsamplings, 3 heads",
        "parameters": int(model.count_params()),
        "saved_model_bytes": int(size_bytes),
        "signature": {"name": "serving_default", **signature},
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
        "training": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "loss": {
                HEADS.inner: "mse",
                HEADS.outer: "mse",
                HEADS.foreground: "categorical_crossentropy",
            },
            "loss_weights": loss_weights,
            "optimizer": "Adam, linear warm-up (5%) then cosine decay to 1% of lr",
            "augmentation": "random crops, rot90/flips, gamma 0.6-1.6, contrast x0.85-1.15, "
            "offset +-0.05, scale jitter",
            "seed_ranges": {
                "train": TRAIN_SEED_BASE + args.seed * 100_000_000,
                "tune": TUNE_SEED_BASE,
                "test": TEST_SEED_BASE,
            },
            "train_seconds": round(train_seconds, 1),
            "history": history,
        },
        "validation": {
            "data": f"{args.val_images} generated {args.val_size}x{args.val_size} images per set "
            "(evaluation.synthetic, held-out seeds); thresholds tuned on 'tune', "
            "figures reported on 'test'",
            "iou_thresholds_for_mean_ap": [float(t) for t in DEFAULT_AP_THRESHOLDS],
            "tune": tune_fig,
            "test": test_fig,
            "test_clahe_input": clahe_fig,
        },
        "inference_ms": {
            **timings,
            "threads": args.threads,
            "note": "exported SavedModel, one image, after warm-up, median of 7",
        },
        "deep_watershed_ms_per_megapixel": round(1000 * ws_seconds / megapixels, 1),
        "environment": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
            "scipy": __import__("scipy").__version__,
            "scikit-image": __import__("skimage").__version__,
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
        },
        "command": "python -m models.training.train_nuclear " + " ".join(sys.argv[1:]),
        "wall_seconds": round(time.time() - started, 1),
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
- TF Serving SavedModel in `1/`, signature `serving_default`.
- Input `image`: float32 `[batch, H, W, 1]`; H and W multiples of {r["size_multiple"]}
  (`size_multiple`; pad first), otherwise any size (fully convolutional).
- Pixel size {r["model_mpp"]} um/px (`model_mpp`): resample inputs by image_mpp / model_mpp.
- Normalise each image with `consumers.processing.normalize.normalize(image, "percentile")`
  (1st..99.8th percentile to [0, 1]). `"clahe"` works too: {t["clahe_fraction"]:.0%} of the
  training images were normalised that way.
- Outputs: `inner_distance` `[b,H,W,1]`, `outer_distance` `[b,H,W,1]`, `fgbg` `[b,H,W,2]`
  (softmax, channel 1 = foreground).
- Post-processing: `consumers.processing.deep_watershed.deep_watershed(inner, outer, fg)`;
  its defaults are the values tuned for this model:
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
