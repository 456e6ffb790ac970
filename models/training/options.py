"""The command-line settings every deep-watershed training takes, with per-model defaults.

Why one place: the nuclear and whole-cell trainings share the data pool, the fit loop and the
held-out sets, so they take the same options; each script only says its own defaults (and
adds what is its own). All of them land in the model's training.json.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Smoke", "TrainingArgs", "training_parser"]


@dataclass
class TrainingArgs:
    """Command-line settings shared by every training."""

    out: Path
    steps: int
    batch: int
    tile: int
    pool: int
    pool_tile: int
    refresh: int
    refresh_every: int
    lr: float
    seed: int
    clahe_fraction: float
    scale_jitter: float
    val_images: int
    val_size: int
    threads: int
    log_every: int
    smoke: bool


@dataclass(frozen=True)
class Smoke:
    """What --smoke shrinks a training to: enough to check the pipeline end to end."""

    steps: int
    pool: int
    val_images: int
    val_size: int = 256
    log_every: int = 10

    def apply(self, args: TrainingArgs) -> None:
        if args.smoke:
            args.steps, args.pool = self.steps, self.pool
            args.val_images, args.val_size = self.val_images, self.val_size
            args.log_every = self.log_every


def training_parser(
    description: str | None,
    *,
    out: Path,
    steps: int,
    batch: int,
    pool: int,
    val_images: int,
    refresh_every: int = 1,
) -> argparse.ArgumentParser:
    """The shared options with this model's defaults; a script may add its own."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--out", type=Path, default=out)
    p.add_argument("--steps", type=int, default=steps, help="optimiser steps")
    p.add_argument("--batch", type=int, default=batch, help="patches per step")
    p.add_argument("--tile", type=int, default=128, help="training patch size (px)")
    p.add_argument("--pool", type=int, default=pool, help="generated images held in memory")
    p.add_argument("--pool-tile", type=int, default=256, help="size of a pool image (px)")
    p.add_argument("--refresh", type=int, default=1, help="pool images replaced per refresh")
    p.add_argument(
        "--refresh-every", type=int, default=refresh_every, help="steps between refreshes"
    )
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
    p.add_argument("--val-images", type=int, default=val_images, help="images in each held-out set")
    p.add_argument("--val-size", type=int, default=512, help="held-out image size (px)")
    p.add_argument("--threads", type=int, default=2, help="TensorFlow intra-op threads")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--smoke", action="store_true", help="tiny run to check the pipeline")
    return p
