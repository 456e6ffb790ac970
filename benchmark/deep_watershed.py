"""Deep watershed: Kiosk's post-processing against the original's two, time and agreement.

deepcell_toolbox's post-processing came in two forms: ``deep_watershed`` found one marker per
nucleus with ``peak_local_max`` (its pairwise spacing pass included), ``deep_watershed_mibi``
(and later versions' default) with ``h_maxima`` (a morphological reconstruction); both then ran
a marker watershed over the whole foreground. Kiosk's ``deep_watershed`` takes the same maps and
settings but finds markers with one separable maximum filter and floods only the foreground
components that hold several markers. The three run here on the same maps (the served model's
outputs for generated images through the consumer's layout, or with ``--maps ideal`` the exact
training targets), with the model's tuned settings (radius, thresholds, smoothing) and the same
foreground mask, so only the algorithms differ:

* original, peak_local_max: skimage ``peak_local_max`` markers + full watershed;
* original, h_maxima: skimage ``h_maxima`` markers + full watershed;
* Kiosk: ``consumers.processing.deep_watershed.deep_watershed`` (peak_local_max semantics).

Beside each time: the F1@0.5 of its labels against Kiosk's (agreement) and against the images'
truth. Images have 30% of their area in nuclei about 20 px across, so every size has the same
work per megapixel. Figures are the median (min-max) of ``--repeat`` runs.

    python -m benchmark.deep_watershed [--sizes 512,1024,2048] [--repeat 3] [--maps model|ideal]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.morphology import disk, h_maxima, remove_small_objects
from skimage.segmentation import relabel_sequential, watershed

from benchmark.report import save, table
from benchmark.support import (
    MODEL,
    add_model_args,
    check_model,
    generated_images,
    model_server,
    spread,
    spread_text,
)
from consumers.processing.deep_watershed import deep_watershed
from consumers.processing.normalize import normalize
from consumers.processing.pipeline import predict_maps
from consumers.segmentation import NUCLEAR_MODEL
from evaluation.quality import score
from evaluation.report import PipelineConfig
from evaluation.served import ServedModel

SEED_BASE = 700_000
METHODS = ("original_peak_local_max", "original_h_maxima", "kiosk")


def timed(fn: Callable[[], np.ndarray], repeat: int) -> tuple[list[float], np.ndarray]:
    """Seconds of each of ``repeat`` runs, and the last result."""
    runs, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - start)
    assert out is not None
    return runs, out


def heads(maps: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inner, outer, foreground) planes from the model's heads."""
    inner, outer, fg = NUCLEAR_MODEL.heads.planes(maps)
    assert fg is not None
    return inner, outer, fg


def ideal_maps(labels: np.ndarray) -> dict[str, np.ndarray]:
    from models.training.targets import targets

    t = targets(labels)
    fg = t[..., 2:3]
    names = NUCLEAR_MODEL.heads
    return {
        names.inner: t[..., 0:1],
        names.outer: t[..., 1:2],
        names.foreground: np.concatenate([1 - fg, fg], -1),
    }


def original(
    inner: np.ndarray,
    outer: np.ndarray,
    fg: np.ndarray,
    params: Mapping[str, Any],
    markers_by: str,
) -> np.ndarray:
    """The original's post-processing shape: markers over the whole image by skimage's
    ``peak_local_max`` or ``h_maxima``, then one marker watershed over the whole foreground;
    the same smoothing, mask and settings as Kiosk's."""
    radius = max(int(params["radius"]), 1)
    threshold = params["maxima_threshold"]
    if params["maxima_smooth"]:
        inner = ndi.gaussian_filter(inner, params["maxima_smooth"])
    if params["interior_smooth"]:
        outer = ndi.gaussian_filter(outer, params["interior_smooth"])
    mask = (outer > params["interior_threshold"]) & (fg > params["fgbg_threshold"])
    if markers_by == "peak_local_max":
        peaks = np.zeros(inner.shape, bool)
        coords = peak_local_max(
            inner, min_distance=radius, threshold_abs=threshold, exclude_border=False
        )
        peaks[tuple(coords.T)] = True
    else:
        peaks = h_maxima(inner, threshold, footprint=disk(radius)).astype(bool)
    markers, _ = ndi.label(peaks & mask, structure=np.ones((3, 3), bool))
    labels = watershed(-outer, markers, mask=mask)
    if params["small_objects_threshold"]:
        labels = remove_small_objects(labels, min_size=params["small_objects_threshold"])
    return relabel_sequential(labels)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="512,1024,2048", help="image sides in pixels")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--maps", choices=("model", "ideal"), default="model")
    add_model_args(parser)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    images = {
        size: generated_images(1, size, SEED_BASE + size, coverage=0.3, mean_diameter=20)[0]
        for size in sizes
    }
    maps: dict[int, dict[str, np.ndarray]] = {}
    model_note = "ideal maps (training targets from the labels)"
    if args.maps == "model":
        model_note = check_model(args.models_dir)
        config = PipelineConfig.from_settings()
        with model_server(args.models_dir) as server:
            predict = ServedModel(server.target, MODEL)
            for size, (image, _) in images.items():
                options = dict(config.options)
                x = normalize(image, options.pop("normalize_method"))[..., None]
                del options["model_mpp"]
                maps[size] = predict_maps(x, predict, **options)
    else:
        maps = {size: ideal_maps(labels) for size, (_, labels) in images.items()}
    params = dict(NUCLEAR_MODEL.postprocessing)

    results = []
    for size in sizes:
        _, labels = images[size]
        inner, outer, fg = heads(maps[size])
        megapixels = size * size / 1e6
        row: dict[str, Any] = {"size": size, "megapixels": megapixels, "nuclei": int(labels.max())}
        methods: dict[str, Callable[[], np.ndarray]] = {
            "original_peak_local_max": partial(
                original, inner, outer, fg, params, "peak_local_max"
            ),
            "original_h_maxima": partial(original, inner, outer, fg, params, "h_maxima"),
            "kiosk": partial(deep_watershed, inner, outer, fg, **params),
        }
        outputs = {}
        for name, fn in methods.items():
            runs, outputs[name] = timed(fn, args.repeat)
            row[name] = {
                "runs_s": [round(r, 4) for r in runs],
                "s_per_mp": {k: round(v / megapixels, 4) for k, v in spread(runs).items()},
                "f1_vs_truth": round(score(labels, outputs[name]).f1, 4),
            }
        for name in METHODS:
            row[name]["f1_vs_kiosk"] = round(score(outputs["kiosk"], outputs[name]).f1, 4)
            row[name]["kiosk_speedup"] = round(
                row[name]["s_per_mp"]["median"] / row["kiosk"]["s_per_mp"]["median"], 2
            )
        results.append(row)
        print(f"{size}px done", flush=True)

    rows = [
        [
            "image",
            "method",
            "s/MP median (min-max)",
            "Kiosk faster by",
            "F1 vs Kiosk",
            "F1 vs truth",
        ]
    ]
    for r in results:
        for name in METHODS:
            m = r[name]
            rows.append(
                [
                    f"{r['size']}x{r['size']} ({r['nuclei']} nuclei)",
                    name.replace("_", " "),
                    spread_text([v / r["megapixels"] for v in m["runs_s"]]),
                    f"{m['kiosk_speedup']:.2f}x",
                    f"{m['f1_vs_kiosk']:.3f}",
                    f"{m['f1_vs_truth']:.3f}",
                ]
            )
    print(table(rows))
    path = save(
        "deep_watershed",
        {
            "maps": args.maps,
            "model": model_note,
            "repeat": args.repeat,
            "baseline": "the original's post-processing (skimage peak_local_max or h_maxima "
            "markers, then a full marker watershed) with the same settings and mask",
            "parameters": params,
            "results": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
