"""Scoring and tuning deep-watershed post-processing on generated held-out images.

Why shared: every model's contract declares the ``deep_watershed`` settings that suit it, and
all are found the same way, by a coordinate search on images the model never trained on,
scored with evaluation.quality (F1@0.5 and mean AP over IoU 0.5..0.95).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from consumers.processing.contract import Heads
from consumers.processing.deep_watershed import deep_watershed
from evaluation.quality import figures

__all__ = ["GRID", "START", "figures", "segment_all", "tune"]

GRID: dict[str, list[Any]] = {
    "radius": [2, 3, 4, 5, 6, 8, 10],
    "maxima_threshold": [0.05, 0.1, 0.15, 0.2, 0.3, 0.4],
    "interior_threshold": [0.01, 0.05, 0.1, 0.2, 0.3],
    "fgbg_threshold": [0.3, 0.4, 0.5, 0.6, 0.7],
    "interior_smooth": [0.0, 0.5, 1.0, 2.0],
    "maxima_smooth": [0.0, 0.5, 1.0, 2.0],
    "small_objects_threshold": [0, 10, 20, 30],
}
"""The values tried for each setting."""
START: dict[str, Any] = {
    "radius": 4,
    "maxima_threshold": 0.1,
    "interior_threshold": 0.01,
    "fgbg_threshold": 0.5,
    "interior_smooth": 1.0,
    "maxima_smooth": 0.0,
    "small_objects_threshold": 0,
}
"""Where the search starts."""


def segment_all(
    maps: list[dict[str, np.ndarray]], params: dict[str, Any], heads: Heads
) -> list[np.ndarray]:
    """deep_watershed on each image's (y, x) planes {head name: plane}."""
    return [
        deep_watershed(m[heads.inner], m[heads.outer], m[heads.foreground], **params) for m in maps
    ]


def tune(
    maps: list[dict[str, np.ndarray]],
    truth: list[np.ndarray],
    log: Callable[[str], None],
    heads: Heads,
    *,
    grid: dict[str, list[Any]] | None = None,
    start: dict[str, Any] | None = None,
    trials: list[dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], dict[str, float | int]]:
    """Coordinate search over deep_watershed's settings; objective F1@0.5 + mean AP.

    ``trials``, when given, receives every setting tried with its F1@0.5 and mean AP: the
    sweep a model card reports.
    """
    grid = GRID if grid is None else grid
    params: dict[str, Any] = dict(START if start is None else start)

    def objective(p: dict[str, Any]) -> tuple[float, dict[str, float | int]]:
        f = figures(list(zip(truth, segment_all(maps, p, heads), strict=True)))
        if trials is not None:
            trials.append({**p, "f1": f["f1"], "mean_ap": f["mean_ap"]})
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
