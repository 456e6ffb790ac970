"""The segmentation pipeline as one pure function, shared by the consumer and by evaluation.

    normalise -> rescale to the model's pixel size -> tile -> predict in batches -> untile each
    output head -> post-process (deep watershed by default) -> labels back on the input grid

Why one function: the consumer (with a gRPC model client as `predict`), the evaluation scripts
and the tests (with a stand-in model) must run exactly the same maths, so tiling or rescaling
cannot silently differ between what is measured and what is served. No TensorFlow here: the
model is any callable that maps a float32 batch (n, ty, tx, C) to named output maps
(n, ty, tx, K), by default a deep-watershed model's heads (:class:`~.contract.Heads`).
Stacks and time series go through :func:`segment_frames`, the one per-frame loop.

Timings per stage (seconds) go into a caller's dict, and tile progress to a callback, so the
consumer can record them on the job without this module knowing about jobs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np
from numpy.typing import NDArray

from consumers.processing.contract import Heads
from consumers.processing.rescale import rescale_to_model, restore_labels
from consumers.processing.tiling import (
    TilePlan,
    Untiler,
    extract_tiles,
    iter_batches,
    plan_for_model,
    plan_tiles,
)

__all__ = [
    "STAGES",
    "Postprocess",
    "Predict",
    "default_postprocess",
    "predict_maps",
    "segment",
    "segment_frames",
]

Predict = Callable[[np.ndarray], Mapping[str, np.ndarray]]
Postprocess = Callable[[Mapping[str, np.ndarray]], np.ndarray]
Progress = Callable[[int, int], None]
FrameProgress = Callable[[int, int, int], None]
"""(frame index, tiles done in the frame, tiles in the frame)."""

#: Keys written to `timings`, in pipeline order ("predict" is time inside the model callable;
#: "tile" covers extracting tiles and blending predictions back).
STAGES = ("normalize", "rescale", "tile", "predict", "postprocess", "restore")


@contextmanager
def _timed(timings: MutableMapping[str, float] | None, stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def default_postprocess(maps: Mapping[str, np.ndarray], **kwargs: Any) -> NDArray[np.int32]:
    """Deep watershed on a deep-watershed model's heads (DeepCell's names).

    Keyword arguments go to `deep_watershed` (radius, maxima_threshold, interior_threshold...).
    """
    return Heads().postprocess(maps, **kwargs)


def _as_yxc(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        return image[..., None]
    if image.ndim != 3:
        raise ValueError(f"segment takes one (Y, X) or (Y, X, C) image, got shape {image.shape}")
    return image


def predict_maps(
    image: np.ndarray,
    predict: Predict,
    *,
    tile_size: int = 512,
    overlap: int | None = None,
    stride_ratio: float = 0.75,
    size_multiple: int = 32,
    reach: int | None = None,
    whole_pixels: int = 0,
    batch_size: int = 32,
    timings: MutableMapping[str, float] | None = None,
    progress: Progress | None = None,
) -> dict[str, NDArray[np.float32]]:
    """Run `predict` over overlapping tiles of a (Y, X, C) image; blended (Y, X, K) per head.

    With the model's `reach` (its receptive field, in pixels each side) the layout is
    :func:`~.tiling.plan_for_model`'s: the whole image in one call up to `whole_pixels`, else
    `tile_size` tiles on the model's grid overlapping by what the reach needs. Without it,
    `overlap` or `stride_ratio` set a generic layout (:func:`~.tiling.plan_tiles`).
    Tiles go to the model `batch_size` at a time, so memory holds one batch of tiles and one
    float32 accumulator per head, whatever the image size.
    """
    image = _as_yxc(image)
    if image.dtype != np.float32:
        image = image.astype(np.float32)
    if reach is not None:
        plan = plan_for_model(
            image.shape,
            size_multiple=size_multiple,
            reach=reach,
            tile_size=tile_size,
            whole_pixels=whole_pixels,
        )
    else:
        plan = plan_tiles(
            image.shape,
            tile_size,
            overlap=overlap,
            stride_ratio=stride_ratio,
            size_multiple=size_multiple,
        )
    if plan.n_tiles == 1:
        return _predict_whole(image, plan, predict, timings, progress)
    untilers: dict[str, Untiler] = {}
    done = 0
    tile_time = 0.0
    predict_time = 0.0
    for indices in iter_batches(plan, batch_size):
        t0 = time.perf_counter()
        batch = extract_tiles(image, plan, indices)
        t1 = time.perf_counter()
        outputs = predict(batch)
        t2 = time.perf_counter()
        for head, maps in _checked_outputs(outputs, batch).items():
            untilers.setdefault(head, Untiler(plan)).add(maps, indices)
        tile_time += t1 - t0 + time.perf_counter() - t2
        predict_time += t2 - t1
        done += len(indices)
        if progress is not None:
            progress(done, plan.n_tiles)
    t0 = time.perf_counter()
    result = {head: untiler.result() for head, untiler in untilers.items()}
    tile_time += time.perf_counter() - t0
    if timings is not None:
        timings["tile"] = timings.get("tile", 0.0) + tile_time
        timings["predict"] = timings.get("predict", 0.0) + predict_time
    return result


def _checked_outputs(outputs: Mapping[str, np.ndarray], batch: np.ndarray) -> dict[str, np.ndarray]:
    """The model's outputs as (n, ty, tx, K) arrays, each checked against the input batch."""
    if not outputs:
        raise ValueError("the model returned no outputs")
    checked = {}
    for head, maps in outputs.items():
        maps = np.asarray(maps)
        if maps.ndim == 3:
            maps = maps[..., None]
        if maps.shape[:3] != batch.shape[:3]:
            raise ValueError(
                f"model output {head!r} has shape {maps.shape}; expected "
                f"{batch.shape[:3]} + (channels,) to match the input tiles"
            )
        checked[head] = maps
    return checked


def _predict_whole(
    image: np.ndarray,
    plan: TilePlan,
    predict: Predict,
    timings: MutableMapping[str, float] | None,
    progress: Progress | None,
) -> dict[str, NDArray[np.float32]]:
    """One call for the whole (padded) image: no blending, the maps are cropped back."""
    with _timed(timings, "tile"):
        batch = extract_tiles(image, plan)
    with _timed(timings, "predict"):
        outputs = predict(batch)
    with _timed(timings, "tile"):
        (by, bx), (ny, nx) = plan.pad_before, plan.image_shape
        result = {
            head: np.ascontiguousarray(maps[0, by : by + ny, bx : bx + nx], dtype=np.float32)
            for head, maps in _checked_outputs(outputs, batch).items()
        }
    if progress is not None:
        progress(1, 1)
    return result


def segment(
    image: np.ndarray,
    predict: Predict,
    *,
    image_mpp: float | None = None,
    model_mpp: float | None = None,
    tile_size: int = 512,
    overlap: int | None = None,
    stride_ratio: float = 0.75,
    size_multiple: int = 32,
    reach: int | None = None,
    whole_pixels: int = 0,
    batch_size: int = 32,
    normalize_method: str | None = "percentile",
    postprocess: Postprocess | None = None,
    timings: MutableMapping[str, float] | None = None,
    progress: Progress | None = None,
) -> NDArray[np.int32]:
    """Segment one (Y, X) or (Y, X, C) image into int32 labels of shape (Y, X) (or (Y, X, K)
    for a `postprocess` giving K label images).

    `predict` is the model (see the module docstring); `image_mpp`/`model_mpp` set the rescale
    (None: the image is taken to be at the model's pixel size); `normalize_method` is
    "percentile", "clahe" or None (the image is already normalised); `reach` and
    `whole_pixels` choose the model's own tiling (see `predict_maps`); `postprocess` maps the
    blended heads {name: (y, x, K)} to labels on the model's grid (default: deep watershed).
    `timings`, when given, receives seconds per stage (see `STAGES`).
    """
    image = _as_yxc(image)
    original_shape = image.shape[:2]
    with _timed(timings, "normalize"):
        if normalize_method is not None:
            from consumers.processing.normalize import normalize  # a sibling's module

            image = normalize(image, normalize_method)
        elif image.dtype != np.float32:
            image = image.astype(np.float32)
    with _timed(timings, "rescale"):
        image = rescale_to_model(image, image_mpp, model_mpp)
    maps = predict_maps(
        image,
        predict,
        tile_size=tile_size,
        overlap=overlap,
        stride_ratio=stride_ratio,
        size_multiple=size_multiple,
        reach=reach,
        whole_pixels=whole_pixels,
        batch_size=batch_size,
        timings=timings,
        progress=progress,
    )
    del image
    with _timed(timings, "postprocess"):
        labels = (postprocess or default_postprocess)(maps)
    del maps
    with _timed(timings, "restore"):
        labels = restore_labels(labels, original_shape)
    return np.asarray(labels).astype(np.int32, copy=False)


def segment_frames(
    frames: np.ndarray,
    predict: Predict,
    *,
    timings: MutableMapping[str, float] | None = None,
    progress: FrameProgress | None = None,
    frame_done: Callable[[int, Mapping[str, float]], None] | None = None,
    **kwargs: Any,
) -> NDArray[np.int32]:
    """`segment` each plane of a (frames, Y, X[, C]) stack: (frames, Y, X) labels, or
    (frames, Y, X, K) where `postprocess` gives K label images a plane.

    Labels are numbered per frame (each frame's objects start at 1), as tracking expects.
    `timings` sums over frames; `progress` gets (frame, tiles done, tiles); `frame_done` gets
    each frame's index and its own timings once its labels are in.
    """
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.ndim != 4:
        raise ValueError(f"expected a (frames, Y, X, C) stack, got shape {frames.shape}")
    out: NDArray[np.int32] | None = None
    for i, frame in enumerate(frames):
        frame_timings: dict[str, float] = {}
        tiles = None if progress is None else partial(progress, i)
        labels = segment(frame, predict, timings=frame_timings, progress=tiles, **kwargs)
        if out is None:  # (frames, Y, X), or (frames, Y, X, K) for K label images a frame
            out = np.zeros((len(frames), *labels.shape), np.int32)
        out[i] = labels
        if timings is not None:
            for stage, seconds in frame_timings.items():
                timings[stage] = timings.get(stage, 0.0) + seconds
        if frame_done is not None:
            frame_done(i, frame_timings)
    if out is None:
        raise ValueError("a stack of no frames has nothing to segment")
    return out
