"""CPU cost of the consumer's pure processing steps: image I/O, rescale, tiling, metrics, baseline.

Everything here runs in the consumer around the model call, so it sets how many CPU consumers
one GPU needs. Each step is timed (median of `--repeat` runs) on the sizes the consumer meets;
the model is a stand-in (Gaussian filters), so the "pipeline" row is all of the consumer's own
work for one image except the network and the GPU.

    python -m benchmark.processing [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import tracemalloc
from collections.abc import Callable

import numpy as np
import tifffile
from scipy import ndimage as ndi

from benchmark.report import save, table
from benchmark.support import timed
from consumers.imaging import encode_labels_tiff, read_image
from consumers.processing.overlay import overlay_png
from consumers.processing.pipeline import segment
from consumers.processing.rescale import rescale_to_model, restore_labels
from consumers.processing.tiling import extract_tiles, plan_tiles, untile
from evaluation.baseline import classical_segment
from evaluation.quality import average_precision, score
from evaluation.synthetic import generate


def peak_mib(fn: Callable[[], object]) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def standin(tiles: np.ndarray) -> dict[str, np.ndarray]:
    outer = ndi.gaussian_filter(tiles, (0, 1, 1, 0))
    fg = 1.0 / (1.0 + np.exp(-(outer - 0.2) * 20.0))
    inner = ndi.gaussian_filter(tiles, (0, 4, 4, 0))
    return {
        "inner_distance": inner,
        "outer_distance": outer,
        "fgbg": np.concatenate([1 - fg, fg], -1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    r = args.repeat

    image, truth = generate((2048, 2048), seed=7, dtype="uint16", coverage=0.3)
    buf = io.BytesIO()
    tifffile.imwrite(buf, image, compression="lzw")
    tiff = buf.getvalue()
    labels_tiff = encode_labels_tiff(truth)
    big = np.tile(image, (2, 2)).astype(np.float32)[..., None] / 4000.0
    plan = plan_tiles(big.shape, 512)
    tiles = extract_tiles(big, plan)
    heads = np.repeat(tiles, 4, axis=-1)  # inner + outer + 2 fgbg channels
    shifted = np.roll(truth, 2, axis=1)
    n_objects = int(truth.max())

    rows: list[tuple[str, str, float]] = [
        ("read 2048x2048 uint16 LZW TIFF", "s", timed(lambda: read_image(tiff), r)),
        ("  peak memory of that read", "MiB", peak_mib(lambda: read_image(tiff))),
        ("  (the image itself)", "MiB", image.nbytes / 2**20),
        (
            "write 2048x2048 labels (uint16 zlib ImageJ)",
            "s",
            timed(lambda: encode_labels_tiff(truth), r),
        ),
        ("  label TIFF size", "KiB", len(labels_tiff) / 1024),
        (
            "rescale 2048x2048 by 2x (bilinear)",
            "s",
            timed(lambda: rescale_to_model(image, 1.3, 0.65), r),
        ),
        (
            "restore 4096x4096 labels to 2048x2048",
            "s",
            timed(lambda: restore_labels(np.tile(truth, (2, 2)), (2048, 2048)), 1),
        ),
        (
            f"plan + extract {plan.n_tiles} tiles of 512 from 4096x4096",
            "s",
            timed(lambda: extract_tiles(big, plan_tiles(big.shape, 512)), r),
        ),
        ("untile 4096x4096, 1 channel", "s", timed(lambda: untile(tiles, plan), r)),
        ("untile 4096x4096, 4 channels (all heads)", "s", timed(lambda: untile(heads, plan), r)),
        (
            f"quality.score, 2048x2048, {n_objects} objects",
            "s",
            timed(lambda: score(truth, shifted), r),
        ),
        (
            "average_precision (10 thresholds), same",
            "s",
            timed(lambda: average_precision(truth, shifted), r),
        ),
        ("classical baseline, 2048x2048", "s", timed(lambda: classical_segment(image), 1)),
        (
            "overlay PNG preview of 2048x2048 (1024 px)",
            "s",
            timed(lambda: overlay_png(image, truth), r),
        ),
        (
            "pipeline 2048x2048, stand-in model, deep watershed",
            "s",
            timed(lambda: segment(image, standin), 1),
        ),
    ]
    baseline_f1 = score(truth, classical_segment(image)).f1
    timings: dict[str, float] = {}
    segment(image, standin, timings=timings)

    print(table([["step", "value", "unit"]] + [[n, f"{v:.3f}", u] for n, u, v in rows]))
    print(f"\nbaseline F1 on this synthetic image: {baseline_f1:.3f}")
    print("pipeline stages (s): " + ", ".join(f"{k} {v:.3f}" for k, v in timings.items()))
    path = save(
        "processing",
        {
            "repeat": r,
            "steps": [{"step": n.strip(), "value": round(v, 4), "unit": u} for n, u, v in rows],
            "baseline_f1_synthetic_2048": round(baseline_f1, 4),
            "pipeline_stage_seconds": {k: round(v, 4) for k, v in timings.items()},
        },
    )
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
