"""Inference per megapixel of every bundled segmentation model, against the nuclear model in
the same run, through the model server the consumers call; and what tiling costs.

For each model (its contract says how many channels it takes), one megapixel is sent to the
embedded model server (``python -m model_server``, as `kiosk up` runs it):

* batch 1: one 1024 x 1024 image in one Predict call;
* batched: four 512 x 512 tiles in one Predict call;
* whole + post-process: the normalised image in one Predict call, then the contract's
  post-processing: the least any segmentation of it can cost (the tiling target's baseline);
* pipeline: ``consumers.processing.pipeline.segment`` on a generated 1024 x 1024 image with the
  consumer's settings (normalise, lay out, predict, post-process: every compartment for a model
  of several);
* pipeline, 512 tiles: the same with the layout the consumer used before (512-px tiles at a
  0.75 stride, 9 tiles for 1 MP).

Each figure is the median (min-max) of ``--repeat`` runs after a warm-up, in seconds per
megapixel; models compare with the nuclear model's in the same run, the pipeline with the whole
call plus post-processing (target: at most 1.25x).

    python -m benchmark.model_inference [--repeat 5]
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmark.report import save, table
from benchmark.support import runs, spread, spread_text
from consumers.processing.contract import CYTOPLASM_MODEL, WHOLE_CELL_MODEL, ModelContract
from consumers.processing.normalize import normalize
from consumers.processing.pipeline import segment
from consumers.segmentation import NUCLEAR_MODEL, SegmentationSettings
from evaluation.cells import generate_cells
from evaluation.served import BUNDLED_MODELS, ServedModel, embedded_model_server

MODELS = (NUCLEAR_MODEL, WHOLE_CELL_MODEL, CYTOPLASM_MODEL)
SIDE = 1024
INPUTS = {1: ("nuclear",), 2: ("nuclear", "membrane")}
TILING_TARGET = 1.25
"""The pipeline's time over the whole-image call plus post-processing, at most."""


def _image(contract: ModelContract) -> np.ndarray:
    """A generated 1 MP image with the channels the model takes (cytoplasm for one channel
    of the cytoplasm model, the nuclear stain for the nuclear model)."""
    drawn = generate_cells((SIDE, SIDE), seed=5, setting="tissue")
    channels = ("cytoplasm",) if contract is CYTOPLASM_MODEL else INPUTS[contract.input_channels]
    return drawn.stack(channels)


def measure(contract: ModelContract, target: str, repeat: int) -> dict[str, list[float]]:
    """Seconds of each run, per way of sending the megapixel."""
    predict = ServedModel(target, contract.name, None, contract)
    rng = np.random.default_rng(0)
    channels = contract.input_channels
    one = rng.random((1, SIDE, SIDE, channels), dtype=np.float32)
    tiles = rng.random((4, SIDE // 2, SIDE // 2, channels), dtype=np.float32)
    image = _image(contract)
    options = SegmentationSettings().pipeline_options(contract)
    normalized = normalize(image, options["normalize_method"])[None]

    def served(batch: np.ndarray) -> dict[str, np.ndarray]:
        return contract.foreground_only(predict(batch))

    def whole_and_post() -> object:
        maps = {head: m[0] for head, m in served(normalized).items()}
        return contract.postprocess_stacked(maps)

    def pipeline(**layout: object) -> object:
        return segment(
            image,
            served,
            postprocess=contract.postprocess_stacked,
            **{**options, **layout},
        )

    ways = {
        "batch_1": lambda: predict(one),
        "batched_4_tiles": lambda: predict(tiles),
        "whole_call_and_postprocess": whole_and_post,
        "pipeline": pipeline,
        "pipeline_512_tiles": lambda: pipeline(tile_size=512, reach=None, whole_pixels=0),
    }
    for call in ways.values():
        call()  # warm-up: the first call of a shape builds its graph
    measured: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeat):  # ways take turns, so a slow spell hits them all
        for name, call in ways.items():
            measured[name] += runs(call, 1)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    present = [c for c in MODELS if (BUNDLED_MODELS / c.name).is_dir()]
    with embedded_model_server(BUNDLED_MODELS, [c.name for c in present]) as server:
        results = {c.name: measure(c, server.target, args.repeat) for c in present}
    base = {k: spread(v)["median"] for k, v in results[NUCLEAR_MODEL.name].items()}
    shown = ("batch_1", "batched_4_tiles", "pipeline")
    rows = [["model", "channels", "batch 1 s/MP", "4 tiles s/MP", "pipeline s/MP"]]
    for contract in present:
        r = results[contract.name]
        rows.append(
            [contract.name, str(contract.input_channels)]
            + [f"{spread_text(r[k])} ({spread(r[k])['median'] / base[k]:.2f}x)" for k in shown]
        )
    print(f"seconds per megapixel, median (min-max) of {args.repeat}; ratio to the nuclear model")
    print(table(rows))
    tiling = [["model", "whole call + post-process", "pipeline", "ratio", "512-px tiles", "ratio"]]
    ratios: dict[str, dict[str, float]] = {}
    for contract in present:
        r = {k: spread(v)["median"] for k, v in results[contract.name].items()}
        floor = r["whole_call_and_postprocess"]
        ratios[contract.name] = {
            "pipeline_over_whole_call_and_postprocess": round(r["pipeline"] / floor, 3),
            "512_tiles_over_whole_call_and_postprocess": round(r["pipeline_512_tiles"] / floor, 3),
            **{f"{k}_over_nuclear": round(r[k] / base[k], 3) for k in shown},
        }
        tiling.append(
            [
                contract.name,
                spread_text(results[contract.name]["whole_call_and_postprocess"]),
                spread_text(results[contract.name]["pipeline"]),
                f"{r['pipeline'] / floor:.2f}x",
                spread_text(results[contract.name]["pipeline_512_tiles"]),
                f"{r['pipeline_512_tiles'] / floor:.2f}x",
            ]
        )
    print(f"1 MP segmentation against its floor (target: pipeline <= {TILING_TARGET}x)")
    print(table(tiling))
    path = save(
        "model_inference",
        {
            "repeat": args.repeat,
            "baseline": f"{NUCLEAR_MODEL.name}, and the whole-image call plus post-processing, "
            "in the same run",
            "tiling_target": TILING_TARGET,
            "runs_s": results,
            "spread_s": {name: {k: spread(v) for k, v in r.items()} for name, r in results.items()},
            "ratios": ratios,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
