"""The TensorFlow half of every deep-watershed training: set-up, loss, schedule, the step loop,
export and reload, inference timing, and the environment recorded beside the model.

Why shared: the nuclear and whole-cell models differ in their data and contract, not in how
they are fitted or exported, so both are fitted by these functions. Import it after setting
``TF_CPP_MIN_LOG_LEVEL`` (it imports TensorFlow).
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from consumers.processing.contract import ModelContract
from models.training.data import Pool
from models.training.model import check_signature, export_saved_model
from models.training.options import TrainingArgs

__all__ = [
    "Serve",
    "compile_model",
    "environment",
    "export",
    "inference_ms",
    "predict_planes",
    "setup",
    "train",
]

Serve = Callable[..., dict[str, tf.Tensor]]
Log = Callable[[str], None]

OPTIMIZER = "Adam, linear warm-up (5%) then cosine decay to 1% of lr"


def setup(threads: int, seed: int) -> None:
    """Deterministic TensorFlow on ``threads`` intra-op threads, seeded. (Where TensorFlow has
    already run in this process, as in a test session, its thread pools stay as they are.)"""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def losses(contract: ModelContract, foreground_weight: float = 0.2) -> tuple[dict, dict]:
    """(losses, weights) per head: MSE on the distances, cross-entropy on fgbg."""
    loss: dict[str, str] = {}
    weights: dict[str, float] = {}
    for compartment in contract.compartments:
        h = compartment.heads
        loss.update({h.inner: "mse", h.outer: "mse", h.foreground: "categorical_crossentropy"})
        weights.update({h.inner: 1.0, h.outer: 1.0, h.foreground: foreground_weight})
    return loss, weights


def compile_model(
    model: keras.Model, contract: ModelContract, *, lr: float, steps: int
) -> tuple[dict[str, str], dict[str, float]]:
    """Adam with a 5% linear warm-up to ``lr`` then cosine decay; returns (losses, weights)."""
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr * 0.1,
        decay_steps=max(steps - steps // 20, 1),
        alpha=0.01,
        warmup_target=lr,
        warmup_steps=steps // 20,
    )
    loss, weights = losses(contract)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss, loss_weights=weights)
    return loss, weights


def train(
    model: keras.Model, pool: Pool, *, steps: int, log_every: int, log: Log
) -> tuple[list[dict[str, float]], float]:
    """``steps`` batches from ``pool`` (refreshed after each); (loss history, seconds)."""
    train_started = time.time()
    history: list[dict[str, float]] = []
    running: dict[str, float] = {}
    for step in range(1, steps + 1):
        x, y = pool.batch()
        out = model.train_on_batch(x, y, return_dict=True)
        for k, v in out.items():
            running[k] = running.get(k, 0.0) + float(v)
        pool.refresh()
        if step % log_every == 0 or step == steps:
            n = log_every if step % log_every == 0 else step % log_every
            mean = {k: round(v / n, 5) for k, v in running.items()}
            history.append({"step": step, **mean})
            rate = (time.time() - train_started) / step
            log(f"step {step}/{steps} {mean} ({rate:.2f} s/step)")
            running = {}
    return history, time.time() - train_started


def export(
    model: keras.Model, out: Path, contract: ModelContract, log: Log
) -> tuple[Path, dict[str, object], Serve]:
    """Write ``out/1`` (replacing it), check its signature, reload it: every figure reported
    beside a model comes from the reloaded SavedModel."""
    version_dir = out / "1"
    if version_dir.exists():
        shutil.rmtree(version_dir)
    out.mkdir(parents=True, exist_ok=True)
    export_saved_model(model, version_dir, contract)
    signature = check_signature(version_dir, contract)
    serve = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    log(f"exported {version_dir}: {signature}")
    return version_dir, signature, serve


def begin(args: TrainingArgs, started: float, size_multiple: int) -> Log:
    """Seed and thread TensorFlow, check the sizes, and return a log of seconds since
    ``started``, the settings its first line."""
    setup(args.threads, args.seed)
    if args.tile % size_multiple or args.val_size % size_multiple:
        raise SystemExit(f"--tile and --val-size must be multiples of {size_multiple}")

    def log(msg: str) -> None:
        print(f"[{time.time() - started:7.1f}s] {msg}", flush=True)

    log(f"settings: {vars(args)}")
    return log


@dataclass(frozen=True)
class Trained:
    """A trained model, exported and reloaded (every figure reported comes from ``serve``)."""

    model: keras.Model
    loss: dict
    loss_weights: dict
    history: list[dict[str, float]]
    train_seconds: float
    version_dir: Path
    signature: dict[str, object]
    serve: Serve


def train_and_export(
    model: keras.Model, pool: Pool, contract: ModelContract, args: TrainingArgs, log: Log
) -> Trained:
    """Compile, train for ``args.steps`` on ``pool``, export to ``args.out`` and reload."""
    loss, loss_weights = compile_model(model, contract, lr=args.lr, steps=args.steps)
    log(f"model: {model.count_params()} parameters")
    history, train_seconds = train(model, pool, steps=args.steps, log_every=args.log_every, log=log)
    version_dir, signature, serve = export(model, args.out, contract, log)
    return Trained(model, loss, loss_weights, history, train_seconds, version_dir, signature, serve)


def predict_planes(serve: Serve, contract: ModelContract, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every head of one normalised (1, H, W, C) input as a (H, W) plane (fgbg: foreground)."""
    out = serve(**{contract.input: tf.constant(x)})
    planes = {}
    for compartment in contract.compartments:
        h = compartment.heads
        planes[h.inner] = out[h.inner].numpy()[0, ..., 0]
        planes[h.outer] = out[h.outer].numpy()[0, ..., 0]
        planes[h.foreground] = out[h.foreground].numpy()[0, ..., h.foreground_channel]
    return planes


def inference_ms(serve: Serve, contract: ModelContract, threads: int, log: Log) -> dict[str, float]:
    """Median of 7 timed runs (after 3 warm-up runs) of one 512x512 and one 1024x1024 image."""
    timings = {}
    fg = contract.heads.foreground
    for size in (512, 1024):
        shape = (1, size, size, contract.input_channels)
        x = tf.constant(np.random.default_rng(0).random(shape, dtype=np.float32))
        for _ in range(3):
            serve(**{contract.input: x})[fg].numpy()
        runs = []
        for _ in range(7):
            t = time.perf_counter()
            serve(**{contract.input: x})[fg].numpy()
            runs.append(time.perf_counter() - t)
        timings[f"{size}x{size}"] = round(1000 * float(np.median(runs)), 1)
    log(f"inference ms (median of 7, {threads} threads): {timings}")
    return timings


def environment() -> dict[str, Any]:
    """Library versions and machine, recorded in training.json."""
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "scipy": __import__("scipy").__version__,
        "scikit-image": __import__("skimage").__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def saved_model_bytes(version_dir: Path) -> int:
    return sum(f.stat().st_size for f in version_dir.rglob("*") if f.is_file())


AUGMENTATION = (
    "random crops, rot90/flips, gamma 0.6-1.6, contrast x0.85-1.15, offset +-0.05, scale jitter"
)


def training_record(
    args: TrainingArgs,
    trained: Trained,
    seed_bases: tuple[int, int, int],
    augmentation_note: str = "",
) -> dict[str, Any]:
    """training.json's ``training`` section: the settings, losses, schedule, augmentation,
    the (train, tune, test) seed ranges, time and loss history; one shape for every model."""
    train, tune, test = seed_bases
    return {
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "loss": trained.loss,
        "loss_weights": trained.loss_weights,
        "optimizer": OPTIMIZER,
        "augmentation": AUGMENTATION + (f"; {augmentation_note}" if augmentation_note else ""),
        "seed_ranges": {"train": train + args.seed * 100_000_000, "tune": tune, "test": test},
        "train_seconds": round(trained.train_seconds, 1),
        "history": trained.history,
    }


def closing_record(
    args: TrainingArgs,
    timings: dict[str, float],
    watershed_ms_per_megapixel: float,
    script: str,
    started: float,
) -> dict[str, Any]:
    """training.json's last fields: inference times, post-processing speed, the environment,
    the command that reproduces the model and the wall time."""
    return {
        "inference_ms": {
            **timings,
            "threads": args.threads,
            "note": "exported SavedModel, one image, after warm-up, median of 7",
        },
        "deep_watershed_ms_per_megapixel": round(watershed_ms_per_megapixel, 1),
        "environment": environment(),
        "command": f"python -m models.training.{script} " + " ".join(sys.argv[1:]),
        "wall_seconds": round(time.time() - started, 1),
    }
