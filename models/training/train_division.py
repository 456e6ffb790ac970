"""Train, export and document the bundled division scorer (``models/DivisionScoring``).

Why: division F1 decides a tracker, and the feature score (``linking._division_score``) is a
hand-tuned sum of cues. This small network learns from what the linker itself weighs: every
division candidate of generated movies (``models.training.division_data``), each seen as three
cell windows (mother, larger and smaller daughter: image and mask) and the scalar cues
(``linking.DIVISION_FEATURES``, the feature score among them), labelled by the movies' true
lineage. Movies of every benchmark scenario (default, crowded, fast, faster, noisy masks) are
harvested from training seeds; a second, disjoint seed range scores the exported model. The
benchmark's movies (``benchmark.linking.SEED_BASE``) are a third range neither touches.

    {out}/1/                  the SavedModel (signature serving_default, DIVISION_MODEL's names)
    {out}/training.json       settings, versions, wall time, validation figures
    {out}/MODEL.md            the model card

Run from the repository root (a few minutes on 2 CPU cores):

    .venv/bin/python -m models.training.train_division --out models/DivisionScoring
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.linking import SCENARIOS, perturbed
from consumers.division_scorer import DIVISION_MODEL as CONTRACT
from models.training.division_data import Harvest, harvest

TRAIN_SEED_BASE = 900_000
VAL_SEED_BASE = 950_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("models/DivisionScoring"))
    p.add_argument("--train-movies", type=int, default=20, help="seeds, each in every scenario")
    p.add_argument("--val-movies", type=int, default=6)
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="TensorFlow threads; harvest processes")
    p.add_argument("--smoke", action="store_true", help="tiny run to check the pipeline")
    args = p.parse_args(argv)
    if args.smoke:
        args.train_movies, args.val_movies, args.epochs, args.frames = 1, 1, 1, 12
    return args


def build_model(features: np.ndarray) -> Any:
    """A small CNN over the three windows joined with an MLP over the standardised cues."""
    import keras
    from keras import layers

    size, channels = CONTRACT.patch_size, CONTRACT.patch_channels
    patches = keras.Input((size, size, channels), name=CONTRACT.patches_input)
    cues = keras.Input((len(CONTRACT.features),), name=CONTRACT.features_input)
    x = patches
    for width in (16, 32, 64):
        x = layers.Conv2D(width, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(width, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    norm = layers.Normalization()
    norm.adapt(features)
    f = layers.Dense(32, activation="relu")(norm(cues))
    h = layers.Concatenate()([x, f])
    h = layers.Dense(64, activation="relu")(h)
    h = layers.Dropout(0.2)(h)
    out = layers.Dense(1, activation="sigmoid", name=CONTRACT.output)(h)
    return keras.Model([patches, cues], out)


def augment(patches: Any, features: Any, label: Any) -> tuple[Any, Any, Any]:
    """A quarter turn and a flip of all three windows together: the cues do not change."""
    import tensorflow as tf

    k = tf.random.uniform((), 0, 4, dtype=tf.int32)
    patches = tf.image.rot90(patches, k)
    patches = tf.cond(
        tf.random.uniform(()) < 0.5, lambda: tf.reverse(patches, [2]), lambda: patches
    )
    return patches, features, label


def export(model: Any, path: Path) -> None:
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    size, channels, n = CONTRACT.patch_size, CONTRACT.patch_channels, len(CONTRACT.features)

    def serve(patches: tf.Tensor, features: tf.Tensor) -> dict[str, tf.Tensor]:
        out = model([patches, features], training=False)
        return {CONTRACT.output: tf.identity(out, name=CONTRACT.output)}

    archive.add_endpoint(
        name="serving_default",
        fn=serve,
        input_signature=[
            tf.TensorSpec((None, size, size, channels), tf.float32, name=CONTRACT.patches_input),
            tf.TensorSpec((None, n), tf.float32, name=CONTRACT.features_input),
        ],
    )
    archive.write_out(str(path), verbose=False)


def figures(p: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Candidate-level figures at p >= 0.5, and the ranking's AUC."""
    chosen = p >= 0.5
    tp = float((chosen & (labels == 1)).sum())
    precision = tp / max(1.0, float(chosen.sum()))
    recall = tp / max(1.0, float((labels == 1).sum()))
    order = np.argsort(p, kind="stable")
    ranks = np.empty(len(p))
    ranks[order] = np.arange(1, len(p) + 1)
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    auc = (ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / max(1, n_pos * n_neg)
    eps = 1e-7
    loss = -np.mean(labels * np.log(p + eps) + (1 - labels) * np.log(1 - p + eps))
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(2 * precision * recall / max(1e-9, precision + recall), 4),
        "auc": round(float(auc), 4),
        "log_loss": round(float(loss), 4),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    def log(msg: str) -> None:
        print(f"[{time.time() - started:7.1f}s] {msg}", flush=True)

    size = CONTRACT.patch_size
    train_seeds = [TRAIN_SEED_BASE + i for i in range(args.train_movies)]
    val_seeds = [VAL_SEED_BASE + i for i in range(args.val_movies)]
    train = harvest(train_seeds, SCENARIOS, args.frames, size, perturbed, args.threads)
    log(f"train: {len(train)} candidates, {int(train.labels.sum())} divisions")
    val = harvest(val_seeds, SCENARIOS, args.frames, size, perturbed, args.threads)
    log(f"validation: {len(val)} candidates, {int(val.labels.sum())} divisions")
    harvested = time.time() - started

    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(args.seed)

    def inputs(h: Harvest) -> dict[str, np.ndarray]:
        return CONTRACT.inputs(h.patches, h.features)

    x = inputs(train)
    model = build_model(x[CONTRACT.features_input])
    steps = max(1, len(train) // args.batch) * args.epochs
    model.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(args.lr, steps)),
        loss="binary_crossentropy",
    )
    data = (
        tf.data.Dataset.from_tensor_slices(
            (x[CONTRACT.patches_input], x[CONTRACT.features_input], train.labels)
        )
        .shuffle(len(train), seed=args.seed)
        .map(augment)
        .map(lambda p, f, y: ((p, f), y))
        .batch(args.batch)
        .prefetch(2)
    )
    fit_started = time.time()
    model.fit(data, epochs=args.epochs, verbose=2)
    fit_seconds = time.time() - fit_started
    log(f"trained in {fit_seconds:.0f}s ({model.count_params()} parameters)")

    version_dir = args.out / "1"
    if version_dir.exists():
        shutil.rmtree(version_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    export(model, version_dir)
    serve = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    xv = inputs(val)
    p = np.concatenate(
        [
            serve(**{k: tf.constant(v[i : i + 1024]) for k, v in xv.items()})[CONTRACT.output]
            .numpy()
            .reshape(-1)
            for i in range(0, len(val), 1024)
        ]
    )
    from models.training.division_data import _SCORE, _TAKE

    feature_score = val.features[:, _SCORE] - val.features[:, _TAKE].sum(1)
    feature_p = 1 / (1 + np.exp(-np.clip(feature_score.astype(np.float64), -30, 30)))
    validation = {
        "learned": figures(p, val.labels),
        "feature score": figures(feature_p, val.labels),
    }
    log(f"validation (exported model): {validation}")
    size_bytes = sum(f.stat().st_size for f in version_dir.rglob("*") if f.is_file())
    record = {
        "model": CONTRACT.name,
        "version": 1,
        "parameters": int(model.count_params()),
        "saved_model_bytes": int(size_bytes),
        "signature": {
            "inputs": {
                CONTRACT.patches_input: f"float32 [batch, {size}, {size}, 6]",
                CONTRACT.features_input: f"float32 [batch, {len(CONTRACT.features)}]",
            },
            "outputs": {CONTRACT.output: "float32 [batch, 1], probability of a division"},
        },
        "features": list(CONTRACT.features),
        "patch_size": size,
        "data": {
            "scenarios": {k: list(v) for k, v in SCENARIOS.items()},
            "frames": args.frames,
            "train_seeds": [train_seeds[0], train_seeds[-1]] if train_seeds else [],
            "validation_seeds": [val_seeds[0], val_seeds[-1]] if val_seeds else [],
            "train_candidates": len(train),
            "train_divisions": int(train.labels.sum()),
            "validation_candidates": len(val),
            "validation_divisions": int(val.labels.sum()),
        },
        "training": {
            "epochs": args.epochs,
            "batch": args.batch,
            "lr": args.lr,
            "seed": args.seed,
            "threads": args.threads,
            "harvest_seconds": round(harvested, 1),
            "fit_seconds": round(fit_seconds, 1),
            "total_seconds": round(time.time() - started, 1),
        },
        "validation": validation,
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
        },
        "command": " ".join(["python -m models.training.train_division", *sys.argv[1:]]),
    }
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "MODEL.md").write_text(model_card(record))
    log(f"wrote {args.out}")
    return 0


def model_card(r: dict[str, Any]) -> str:
    d, t, v = r["data"], r["training"], r["validation"]
    side = f"{r['patch_size']}x{r['patch_size']}"
    held_out = f"{d['validation_seeds'][0]}..{d['validation_seeds'][-1]}"
    rows = "\n".join(
        f"| {name} | {f['precision']} | {f['recall']} | {f['f1']} | {f['auc']} | {f['log_loss']} |"
        for name, f in v.items()
    )
    return f"""# {r["model"]} (version {r["version"]})

Scores division candidates for the tracking job type: the probability that a mother seen in
one frame divided into two cells of the next. A small CNN over three {side}
windows (mother, larger and smaller daughter; image and mask each) joined with an MLP over the
linker's scalar cues, trained on the candidates the linker itself weighs in generated movies.
Every figure and setting is in `training.json`.

## Contract (`consumers.division_scorer.DIVISION_MODEL`)
- TF Serving SavedModel in `1/`, signature `serving_default`.
- Input `patches`: float32 `[batch, {r["patch_size"]}, {r["patch_size"]}, 6]`, the candidates'
  `linking.Cells.patches` (frames measured with `patch_size={r["patch_size"]}`) side by side, / 255.
- Input `features`: float32 `[batch, {len(r["features"])}]`, `linking.DIVISION_FEATURES` in order.
- Output `division`: float32 `[batch, 1]`, the probability of a true division; the linker
  takes its logit as the candidate's score (accepted from 0, even odds).
- Build the request with `DIVISION_MODEL.inputs(patches, features)`.

## Model
- {r["parameters"]:,} parameters, {r["saved_model_bytes"] / 1e6:.2f} MB on disk.

## Training
- Candidates of generated movies (`evaluation.movies`), {d["frames"]} frames of 256x256 each, in
  every scenario of `benchmark.linking` (default, crowded, fast, faster, noisy masks);
  training seeds {d["train_seeds"][0]}..{d["train_seeds"][-1]}: {d["train_candidates"]} candidates,
  {d["train_divisions"]} true divisions.
- {t["epochs"]} epochs, batches of {t["batch"]}, Adam (learning rate {t["lr"]}, cosine decay),
  binary cross-entropy; quarter turns and flips of the windows.
- Seed {t["seed"]}; {t["fit_seconds"]:.0f} s of training, {t["total_seconds"]:.0f} s in all, on
  {t["threads"]} CPU threads.

Reproduce from the repository root (`make model-division`):

    .venv/bin/python -m models.training.train_division --out models/DivisionScoring

## Validation (exported model, held-out seeds {held_out})
{d["validation_candidates"]} candidates, {d["validation_divisions"]} true divisions; a candidate is
accepted at p >= 0.5 (the feature score: its score less the cost of taking cells >= 0). Before
the linker's choice of one pair per mother: `benchmark.linking` has the tracking figures.

| scorer | precision | recall | F1 | AUC | log loss |
|---|---|---|---|---|---|
{rows}
"""


if __name__ == "__main__":
    raise SystemExit(main())
