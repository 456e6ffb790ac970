"""Inference per megapixel of every bundled segmentation model, against the nuclear model in
the same run, through the model server the consumers call.

For each model (its contract says how many channels it takes), one megapixel is sent three
ways to the embedded model server (``python -m model_server``, as `kiosk up` runs it):

* batch 1: one 1024 x 1024 image in one Predict call;
* batched: four 512 x 512 tiles in one Predict call (what the pipeline sends for a large image);
* pipeline: ``consumers.processing.pipeline.segment`` on a generated 1024 x 1024 image, as the
  consumer runs it (normalise, tile, predict, blend, the contract's post-processing: every
  compartment for a model of several).

Each figure is the median of ``--repeat`` runs after a warm-up, in seconds per megapixel, with
its ratio to the nuclear model's in the same run (the baseline: these machines are noisy).

    python -m benchmark.model_inference [--repeat 5]
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmark.report import save, table
from benchmark.support import timed
from consumers.processing.contract import CYTOPLASM_MODEL, WHOLE_CELL_MODEL, ModelContract
from consumers.processing.pipeline import segment
from consumers.segmentation import NUCLEAR_MODEL
from evaluation.cells import generate_cells
from evaluation.served import BUNDLED_MODELS, ServedModel, embedded_model_server

MODELS = (NUCLEAR_MODEL, WHOLE_CELL_MODEL, CYTOPLASM_MODEL)
SIDE = 1024
INPUTS = {1: ("nuclear",), 2: ("nuclear", "membrane")}


def _image(contract: ModelContract) -> np.ndarray:
    """A generated 1 MP image with the channels the model takes (cytoplasm for one channel
    of the cytoplasm model, the nuclear stain for the nuclear model)."""
    drawn = generate_cells((SIDE, SIDE), seed=5, setting="tissue")
    channels = ("cytoplasm",) if contract is CYTOPLASM_MODEL else INPUTS[contract.input_channels]
    return drawn.stack(channels)


def measure(contract: ModelContract, target: str, repeat: int) -> dict[str, float]:
    predict = ServedModel(target, contract.name, None, contract)
    rng = np.random.default_rng(0)
    channels = contract.input_channels
    one = rng.random((1, SIDE, SIDE, channels), dtype=np.float32)
    tiles = rng.random((4, SIDE // 2, SIDE // 2, channels), dtype=np.float32)
    image = _image(contract)

    def pipeline() -> object:
        return segment(
            image,
            lambda batch: contract.foreground_only(predict(batch)),
            model_mpp=contract.mpp,
            size_multiple=contract.size_multiple,
            batch_size=4,
            postprocess=contract.postprocess_stacked,
        )

    for call in (lambda: predict(one), lambda: predict(tiles), pipeline):
        call()  # warm-up: the first call of a shape builds its graph
    return {
        "batch_1_s_per_mp": timed(lambda: predict(one), repeat),
        "batched_4_tiles_s_per_mp": timed(lambda: predict(tiles), repeat),
        "pipeline_s_per_mp": timed(pipeline, repeat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    present = [c for c in MODELS if (BUNDLED_MODELS / c.name).is_dir()]
    with embedded_model_server(BUNDLED_MODELS, [c.name for c in present]) as server:
        results = {c.name: measure(c, server.target, args.repeat) for c in present}
    base = results[NUCLEAR_MODEL.name]
    rows = [["model", "channels", "batch 1 s/MP", "4 tiles s/MP", "pipeline s/MP"]]
    for contract in present:
        r = results[contract.name]
        rows.append(
            [contract.name, str(contract.input_channels)]
            + [f"{r[k]:.3f} ({r[k] / base[k]:.2f}x)" for k in base]
        )
    print(f"seconds per megapixel, median of {args.repeat}; ratio to {NUCLEAR_MODEL.name}")
    print(table(rows))
    path = save(
        "model_inference",
        {
            "repeat": args.repeat,
            "baseline": f"{NUCLEAR_MODEL.name} in the same run",
            "results": results,
            "ratios": {
                name: {k: round(r[k] / base[k], 3) for k in base} for name, r in results.items()
            },
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
