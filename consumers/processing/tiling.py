"""Cut any image into overlapping model-sized tiles and blend the predictions back seamlessly.

Why: a model server takes fixed-size batches, GPUs have finite memory, and models see objects
near a tile's edge without their context, so predictions there are worse. Tiles overlap (by
default each step is 0.75 of a tile, the original Kiosk's stride) and are blended with weights
that fall smoothly to zero towards every tile edge that has a neighbour, and stay zero for a
margin (a quarter of the overlap by default) next to it, so a model whose receptive field
reaches less than that margin gives the same values tiled as on the whole image, and a wider
one only slightly different values (the errors are where its weight is small). Edges on the
image border keep full weight (no other tile covers them).

The layout:

- along an axis at least one tile long, tiles are spread evenly from the first pixel to the
  last, so no padding is needed and neighbours overlap by at least the requested amount;
- an axis shorter than a tile is padded (mirror-reflected, centred) up to the model's size
  multiple, and the tile shrinks to that size: small images cost one small tile, not a large
  mostly-padding one;
- along each axis, neighbouring tiles share raised-cosine ramps (cos^2 falling where sin^2
  rises, so the pair sums to one) between the margins, and 2D weights are the product of the
  two 1D ramps (so four tiles meeting at a corner also sum to one). The
  output is the weighted sum divided by the summed weights, so a constant prediction untiles to
  that constant (to float32 rounding) wherever tiles meet.

Use: `plan = plan_tiles(image.shape[:2], 512)`, then for each `idx` of `iter_batches(plan, 32)`
predict `extract_tiles(image, plan, idx)` and `Untiler.add` the result; `Untiler.result()` gives
the blended (Y, X, K) map. `untile` does the same for all tiles at once. Accumulators are float32.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "TilePlan",
    "Untiler",
    "extract_tiles",
    "iter_batches",
    "plan_for_model",
    "plan_tiles",
    "untile",
]


@dataclass(frozen=True)
class TilePlan:
    """Where each tile lies: in the padded image, tile i starts at `origins[i]` (y, x)."""

    image_shape: tuple[int, int]
    padded_shape: tuple[int, int]
    pad_before: tuple[int, int]
    tile_shape: tuple[int, int]
    y_starts: tuple[int, ...]
    x_starts: tuple[int, ...]
    margin_fraction: float = 0.25
    margin: int | None = None
    """Pixels next to an inner tile edge with no weight (None: `margin_fraction` of the overlap)."""

    @property
    def n_tiles(self) -> int:
        return len(self.y_starts) * len(self.x_starts)

    @property
    def grid(self) -> tuple[int, int]:
        return len(self.y_starts), len(self.x_starts)

    @property
    def origins(self) -> list[tuple[int, int]]:
        """(y, x) start of every tile, row-major (the order of `extract_tiles`)."""
        return [(y, x) for y in self.y_starts for x in self.x_starts]

    @property
    def needs_padding(self) -> bool:
        return self.padded_shape != self.image_shape

    @cached_property
    def _ramps(self) -> tuple[list[NDArray[np.float32]], list[NDArray[np.float32]]]:
        return (
            _axis_weights(self.y_starts, self.tile_shape[0], self.margin_fraction, self.margin),
            _axis_weights(self.x_starts, self.tile_shape[1], self.margin_fraction, self.margin),
        )

    def weights(self, index: int) -> NDArray[np.float32]:
        """The (ty, tx) blending weights of tile `index`."""
        row, col = divmod(int(index), len(self.x_starts))
        wy, wx = self._ramps
        return np.outer(wy[row], wx[col]).astype(np.float32, copy=False)

    @cached_property
    def weight_sum(self) -> NDArray[np.float32]:
        """Summed weights over the padded image: what the blended sums are divided by."""
        wy, wx = self._ramps
        sy = np.zeros(self.padded_shape[0], np.float32)
        sx = np.zeros(self.padded_shape[1], np.float32)
        ty, tx = self.tile_shape
        for y0, w in zip(self.y_starts, wy, strict=True):
            sy[y0 : y0 + ty] += w
        for x0, w in zip(self.x_starts, wx, strict=True):
            sx[x0 : x0 + tx] += w
        if sy.min() <= 0 or sx.min() <= 0:
            raise ValueError(
                "tiles overlap so much that blending margins leave pixels without weight; "
                "use a stride_ratio of at least 0.25 or a smaller margin_fraction"
            )
        # The weights are separable products, so their sum is too.
        return np.outer(sy, sx)


def _starts(length: int, tile: int, stride: int, grid: int = 1) -> tuple[int, ...]:
    """Evenly spread tile starts covering [0, length) with steps of at most `stride`, each a
    multiple of `grid` (`length - tile` must be one)."""
    if length <= tile:
        return (0,)
    units, step = (length - tile) // grid, max(1, stride // grid)
    n = math.ceil(units / step) + 1
    return tuple((np.rint(np.linspace(0, units, n)).astype(int) * grid).tolist())


def _axis_weights(
    starts: Sequence[int], tile: int, margin_fraction: float, margin: int | None = None
) -> list[NDArray[np.float32]]:
    """1D weights per tile: flat, with a complementary pair of ramps over each overlap.

    Where tile i and i+1 overlap by `o` pixels, the first and last `m = o * margin_fraction`
    of the overlap belong wholly to one tile (the one whose edge is not there), and over the
    `o - 2m` in between tile i falls as cos^2 while tile i+1 rises as sin^2 (sampled at pixel
    centres). The pair sums to 1 everywhere, and no pixel within `m` of a tile edge that has a
    neighbour contributes at all.
    """
    out = []
    for i, start in enumerate(starts):
        w = np.ones(tile, np.float64)
        if i > 0:
            ramp = _ramp(min(starts[i - 1] + tile - start, tile), margin_fraction, margin)
            w[: ramp.size] *= ramp
        if i + 1 < len(starts):
            ramp = _ramp(min(start + tile - starts[i + 1], tile), margin_fraction, margin)
            w[tile - ramp.size :] *= ramp[::-1]
        out.append(w.astype(np.float32))
    return out


def _ramp(overlap: int, margin_fraction: float, margin: int | None = None) -> NDArray[np.float64]:
    """Rising weights over an overlap: `m` zeros, a sin^2 ramp, `m` ones (m = margin)."""
    if overlap <= 0:
        return np.ones(0)
    wanted = int(overlap * margin_fraction) if margin is None else margin
    margin = min(wanted, (overlap - 1) // 2)
    length = overlap - 2 * margin
    rise = np.sin(0.5 * np.pi * (np.arange(length) + 0.5) / length) ** 2
    return np.concatenate([np.zeros(margin), rise, np.ones(margin)])


def plan_tiles(
    shape: Sequence[int],
    tile_size: int | Sequence[int] = 512,
    *,
    overlap: int | None = None,
    stride_ratio: float = 0.75,
    size_multiple: int = 32,
    margin_fraction: float = 0.25,
    margin: int | None = None,
    aligned: bool = False,
) -> TilePlan:
    """Lay out tiles over an image of `shape` (Y, X[, ...]).

    `tile_size` is the model's input size (a multiple of `size_multiple`); `overlap` (pixels)
    or `stride_ratio` (step / tile) sets how much neighbours share, the overlap winning when
    both are given. Axes shorter than a tile are padded to a multiple of `size_multiple`.
    `margin_fraction` of each overlap, next to a tile's edge, gets no weight (see the module
    docstring): predictions whose receptive field reaches past the tile edge are not used;
    `margin` gives it in pixels instead. `aligned` pads every axis to a multiple of
    `size_multiple` and starts every tile on that grid: a strided network is not
    shift-equivariant, and only tiles on its grid give the whole image's values (see
    :func:`plan_for_model`).
    """
    if len(shape) < 2 or min(shape[:2]) < 1:
        raise ValueError(f"cannot tile an image of shape {tuple(shape)}")
    tiles = (tile_size, tile_size) if isinstance(tile_size, int) else tuple(tile_size)
    if len(tiles) != 2 or min(tiles) < 1:
        raise ValueError(f"tile_size must be a positive int or (ty, tx), got {tile_size!r}")
    if not 0.0 <= margin_fraction < 0.5:
        raise ValueError(f"margin_fraction must be in [0, 0.5), got {margin_fraction}")
    if margin is not None and margin < 0:
        raise ValueError(f"margin must be >= 0 pixels, got {margin}")
    if size_multiple < 1:
        raise ValueError(f"size_multiple must be >= 1, got {size_multiple}")
    if any(t % size_multiple for t in tiles):
        raise ValueError(f"tile_size {tiles} must be a multiple of size_multiple {size_multiple}")
    if overlap is None and not 0.0 < stride_ratio <= 1.0:
        raise ValueError(f"stride_ratio must be in (0, 1], got {stride_ratio}")
    if overlap is not None and not 0 <= overlap < min(tiles):
        raise ValueError(f"overlap must be in [0, {min(tiles)}) pixels, got {overlap}")
    image_shape = (int(shape[0]), int(shape[1]))
    padded, before, tile_shape, starts = [], [], [], []
    for length, tile in zip(image_shape, tiles, strict=True):
        on_grid = math.ceil(length / size_multiple) * size_multiple
        tile = min(tile, on_grid)
        if overlap is not None:
            stride = max(1, tile - overlap)
        else:
            stride = max(1, round(tile * stride_ratio))
        padded_length = on_grid if aligned else max(length, tile)
        padded.append(padded_length)
        before.append((padded_length - length) // 2)
        tile_shape.append(tile)
        starts.append(_starts(padded_length, tile, stride, size_multiple if aligned else 1))
    return TilePlan(
        image_shape=image_shape,
        padded_shape=(padded[0], padded[1]),
        pad_before=(before[0], before[1]),
        tile_shape=(tile_shape[0], tile_shape[1]),
        y_starts=starts[0],
        x_starts=starts[1],
        margin_fraction=margin_fraction,
        margin=margin,
    )


def plan_for_model(
    shape: Sequence[int],
    *,
    size_multiple: int,
    reach: int,
    tile_size: int = 1024,
    whole_pixels: int = 0,
) -> TilePlan:
    """The layout a network with a `size_multiple` grid and a receptive field of `reach`
    pixels (each side) gets: tiles that cost what they must and give the whole image's values.

    - An image whose grid-padded area is at most `whole_pixels` is one tile: no pixel twice.
    - A larger one is cut into `tile_size` tiles on the network's grid, overlapping by
      ``2 * reach`` plus a ramp of one grid step. The `reach` pixels next to an inner tile edge
      carry no weight, so every weighted prediction saw all the context it would have seen in
      the whole image: tiled maps equal whole-image maps to float rounding.
    """
    if reach < 0:
        raise ValueError(f"reach must be >= 0 pixels, got {reach}")
    padded = [math.ceil(int(n) / size_multiple) * size_multiple for n in shape[:2]]
    if whole_pixels and padded[0] * padded[1] <= whole_pixels:
        return plan_tiles(shape, tuple(padded), size_multiple=size_multiple, aligned=True)
    ramp = size_multiple
    overlap = 2 * reach + ramp
    if tile_size - overlap < size_multiple:
        raise ValueError(
            f"tiles of {tile_size} px cannot overlap by {overlap} px (a reach of {reach} px on "
            f"each side and a {ramp} px ramp) and still advance: use tiles of at least "
            f"{overlap + size_multiple} px"
        )
    return plan_tiles(
        shape,
        tile_size,
        overlap=overlap,
        size_multiple=size_multiple,
        margin=reach,
        aligned=True,
    )


def iter_batches(plan: TilePlan, batch_size: int) -> Iterator[range]:
    """Tile indices in consecutive batches of at most `batch_size`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for first in range(0, plan.n_tiles, batch_size):
        yield range(first, min(first + batch_size, plan.n_tiles))


def _pad(image: np.ndarray, plan: TilePlan) -> np.ndarray:
    if not plan.needs_padding:
        return image
    widths = [
        (b, p - n - b)
        for n, p, b in zip(plan.image_shape, plan.padded_shape, plan.pad_before, strict=True)
    ]
    widths += [(0, 0)] * (image.ndim - 2)
    # Mirror padding keeps texture statistics at the border (numpy repeats the mirroring when
    # the padding is wider than the image, and a 1-pixel axis simply repeats).
    return np.pad(image, widths, mode="reflect")


def extract_tiles(
    image: np.ndarray, plan: TilePlan, indices: Sequence[int] | range | None = None
) -> np.ndarray:
    """Tiles (n, ty, tx, C) of a (Y, X, C) image (a (Y, X) image gives C = 1).

    `indices` picks tiles (e.g. one batch of `iter_batches`); all tiles by default. The result
    is a new array in the image's dtype.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise ValueError(f"expected a (Y, X) or (Y, X, C) image, got shape {image.shape}")
    if image.shape[:2] != plan.image_shape:
        raise ValueError(f"image shape {image.shape[:2]} does not match plan {plan.image_shape}")
    padded = _pad(image, plan)
    indices = range(plan.n_tiles) if indices is None else indices
    ty, tx = plan.tile_shape
    out = np.empty((len(indices), ty, tx, image.shape[2]), dtype=image.dtype)
    n_x = len(plan.x_starts)
    for k, i in enumerate(indices):
        row, col = divmod(int(i), n_x)
        y0, x0 = plan.y_starts[row], plan.x_starts[col]
        out[k] = padded[y0 : y0 + ty, x0 : x0 + tx]
    return out


class Untiler:
    """Accumulates weighted tile predictions; `result()` gives the blended (Y, X, K) map.

    Memory: one float32 (padded Y, padded X, K) accumulator; the weight sum is computed once
    from the plan, not accumulated.
    """

    def __init__(self, plan: TilePlan, channels: int | None = None) -> None:
        self.plan = plan
        self._acc: NDArray[np.float32] | None = None
        self._seen = np.zeros(plan.n_tiles, dtype=bool)
        self._result: NDArray[np.float32] | None = None
        if channels is not None:
            self._acc = np.zeros((*plan.padded_shape, int(channels)), np.float32)

    def add(self, tiles: np.ndarray, indices: Sequence[int] | range | None = None) -> None:
        """Add predictions (n, ty, tx, K) (or (n, ty, tx)) for tiles `indices`."""
        tiles = np.asarray(tiles)
        if tiles.ndim == 3:
            tiles = tiles[..., None]
        indices = range(len(tiles)) if indices is None else indices
        ty, tx = self.plan.tile_shape
        if tiles.ndim != 4 or tiles.shape[1:3] != (ty, tx) or len(tiles) != len(indices):
            raise ValueError(
                f"expected {len(indices)} tiles of {ty}x{tx} (n, ty, tx, K), got {tiles.shape}"
            )
        if self._result is not None:
            raise ValueError("result() was already taken; make a new Untiler")
        if self._acc is None:
            self._acc = np.zeros((*self.plan.padded_shape, tiles.shape[3]), np.float32)
        elif tiles.shape[3] != self._acc.shape[2]:
            raise ValueError(f"tiles have {tiles.shape[3]} channels, expected {self._acc.shape[2]}")
        n_x = len(self.plan.x_starts)
        for tile, i in zip(tiles, indices, strict=True):
            row, col = divmod(int(i), n_x)
            y0, x0 = self.plan.y_starts[row], self.plan.x_starts[col]
            self._acc[y0 : y0 + ty, x0 : x0 + tx] += tile * self.plan.weights(i)[..., None]
            self._seen[i] = True

    def result(self) -> NDArray[np.float32]:
        """The blended map cropped to the image, (Y, X, K) float32. Every tile must be added."""
        if self._result is not None:
            return self._result
        if self._acc is None or not self._seen.all():
            missing = int((~self._seen).sum())
            raise ValueError(f"{missing} of {self.plan.n_tiles} tiles were never added")
        by, bx = self.plan.pad_before
        ny, nx = self.plan.image_shape
        out = self._acc[by : by + ny, bx : bx + nx]  # in place: no second full-size buffer
        out /= self.plan.weight_sum[by : by + ny, bx : bx + nx, None]
        if self.plan.needs_padding:  # only small images are padded; drop the margin
            out = np.ascontiguousarray(out)
        self._result, self._acc = out, None
        return out


def untile(tiles: np.ndarray, plan: TilePlan) -> NDArray[np.float32]:
    """Blend all tiles (n, ty, tx, K) of a plan back into a (Y, X, K) float32 map."""
    untiler = Untiler(plan)
    untiler.add(tiles)
    return untiler.result()
