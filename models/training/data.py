"""The training data pool shared by every deep-watershed training: generated examples held in
memory, a few replaced each step, served as augmented random crops.

Why a pool: generating an image costs far more than a training step, so each image is seen in
many crops and orientations, while a slow trickle of fresh images keeps the model from
memorising the pool.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage as ndi

from models.training.options import TrainingArgs

__all__ = ["Example", "Pool", "Split", "drawn_side", "jitter_zoom", "resampled"]

Example = Callable[[int], tuple[np.ndarray, np.ndarray]]
"""seed -> (normalised input (S, S, C), targets (S, S, T)), both float16-able."""
Split = Callable[[np.ndarray], dict[str, np.ndarray]]
"""A batch's targets (B, t, t, T) -> the model's heads {name: (B, t, t, K)}."""


class Pool:
    """Generated examples held in memory, a few replaced every step for fresh variety."""

    def __init__(
        self,
        make: Example,
        split: Split,
        *,
        size: int,
        images: int,
        in_channels: int,
        target_channels: int,
        first_seed: int,
        seed: int,
        batch: int,
        tile: int,
        refresh: int,
        refresh_every: int = 1,
    ) -> None:
        self.make, self.split = make, split
        self.size, self.batch_size, self.tile, self.refresh_count = size, batch, tile, refresh
        self.next_seed = first_seed
        self.refresh_every, self.steps = max(1, refresh_every), 0
        self.x = np.zeros((images, size, size, in_channels), np.float16)
        self.y = np.zeros((images, size, size, target_channels), np.float16)
        self.rng = np.random.default_rng(seed)
        for i in range(images):
            self._fill(i)

    @classmethod
    def from_options(
        cls,
        make: Example,
        split: Split,
        args: TrainingArgs,
        *,
        in_channels: int,
        target_channels: int,
        seed_base: int,
    ) -> Pool:
        """The pool a training's options describe: seeds from ``seed_base``, one range of 1e8
        per ``--seed``, so runs with different seeds never share an image."""
        return cls(
            make,
            split,
            size=args.pool_tile,
            images=args.pool,
            in_channels=in_channels,
            target_channels=target_channels,
            first_seed=seed_base + args.seed * 100_000_000,
            seed=args.seed,
            batch=args.batch,
            tile=args.tile,
            refresh=args.refresh,
            refresh_every=args.refresh_every,
        )

    def _fill(self, i: int) -> None:
        self.x[i], self.y[i] = self.make(self.next_seed)
        self.next_seed += 1

    def refresh(self) -> None:
        """Replace ``refresh`` random images with fresh ones, every ``refresh_every`` calls
        (slow generators refresh less often)."""
        self.steps += 1
        if self.steps % self.refresh_every:
            return
        for i in self.rng.integers(0, len(self.x), self.refresh_count):
            self._fill(int(i))

    def batch(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Random crops with dihedral flips and intensity gamma/contrast jitter (the same for
        every input channel of a crop)."""
        rng, t, n = self.rng, self.tile, self.batch_size
        xs = np.empty((n, t, t, self.x.shape[-1]), np.float32)
        ys = np.empty((n, t, t, self.y.shape[-1]), np.float32)
        for b in range(n):
            i = rng.integers(len(self.x))
            r, c = rng.integers(0, self.size - t + 1, 2)
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
        return xs, self.split(ys)


def jitter_zoom(rng: np.random.Generator, scale_jitter: float) -> float:
    """Scale jitter: half the examples at their own size, the rest resampled by a factor
    log-uniform in 1/(1 + j)..1 + j (the consumer resamples inputs to the model's pixel size,
    so the model must tolerate interpolation and slightly off sizes)."""
    if scale_jitter > 0 and rng.random() < 0.5:
        return float(np.exp(rng.uniform(-np.log1p(scale_jitter), np.log1p(scale_jitter))))
    return 1.0


def drawn_side(size: int, zoom: float) -> int:
    """The side to draw at so that, resampled by ``zoom``, the image still covers ``size``."""
    return int(np.ceil(size / zoom)) + 2


def resampled(
    size: int, zoom: float, image: np.ndarray, *labels: np.ndarray
) -> tuple[np.ndarray, ...]:
    """The image (linear; channels last, if any) and label images (nearest) resampled by
    ``zoom`` and cropped to ``size`` x ``size``."""
    if zoom != 1.0:
        image = ndi.zoom(image, (zoom, zoom) + (1,) * (image.ndim - 2), order=1)
        labels = tuple(ndi.zoom(label, zoom, order=0) for label in labels)
    return (image[:size, :size], *(label[:size, :size] for label in labels))
