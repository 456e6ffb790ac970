"""The committed whole-cell model (models/WholeCellSegmentation), served by the real model
server, answers with its contract's outputs, and its outputs post-process into cells and nuclei
on a generated image it never saw."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from consumers.processing.contract import CYTOPLASM_MODEL, WHOLE_CELL_MODEL
from consumers.processing.pipeline import segment
from consumers.segmentation import NUCLEAR_MODEL
from evaluation.cells import generate_cells
from evaluation.quality import score
from kiosk.serving.client import ServingClient

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / WHOLE_CELL_MODEL.name


def client(target: str) -> ServingClient:
    return ServingClient(target, timeout=60.0, retries=0, cold_start_wait=30.0)


def test_the_committed_model_declares_the_settings_the_contract_uses() -> None:
    report = json.loads((MODEL_DIR / "training.json").read_text())
    for c in WHOLE_CELL_MODEL.compartments:
        tuned = report["postprocessing"][c.name]
        assert dict(c.postprocessing) == tuned, c.name
    assert report["signature"]["outputs"].keys() == set(WHOLE_CELL_MODEL.output_names)


def test_the_committed_nuclear_model_declares_the_settings_its_contract_uses() -> None:
    report = json.loads((MODEL_DIR.parent / NUCLEAR_MODEL.name / "training.json").read_text())
    tuned = {k: v for k, v in report["postprocessing"].items() if k in NUCLEAR_MODEL.postprocessing}
    assert dict(NUCLEAR_MODEL.postprocessing) == tuned
    assert len(tuned) == len(report["postprocessing"]) - 2  # all but function, maxima_algorithm
    sweep = report["validation"]["sweep"]
    best = max(sweep, key=lambda trial: trial["f1"] + trial["mean_ap"])
    assert {k: best[k] for k in tuned} == tuned  # the sweep's best on generated images


def test_the_committed_cytoplasm_model_declares_the_settings_its_contract_uses() -> None:
    report = json.loads((MODEL_DIR.parent / CYTOPLASM_MODEL.name / "training.json").read_text())
    tuned = {
        k: v for k, v in report["postprocessing"].items() if k in CYTOPLASM_MODEL.postprocessing
    }
    assert dict(CYTOPLASM_MODEL.postprocessing) == tuned
    assert report["signature"]["outputs"].keys() == set(CYTOPLASM_MODEL.output_names)
    assert report["input_channels"] == ["fluorescent cytoplasm or brightfield"]


def test_the_served_model_answers_with_every_head_of_the_contract(
    nuclear_model_server: str,
) -> None:
    image = np.random.default_rng(0).random((2, 48, 64, 2), dtype=np.float32)
    out = client(nuclear_model_server).predict(
        WHOLE_CELL_MODEL.name, {WHOLE_CELL_MODEL.input: image}
    )
    assert set(out.outputs) == set(WHOLE_CELL_MODEL.output_names)
    for c in WHOLE_CELL_MODEL.compartments:
        assert out.outputs[c.heads.inner].shape == (2, 48, 64, 1)
        assert out.outputs[c.heads.outer].shape == (2, 48, 64, 1)
        np.testing.assert_allclose(out.outputs[c.heads.foreground].sum(-1), 1.0, atol=1e-5)


def test_served_outputs_post_process_into_cells_and_their_nuclei(
    nuclear_model_server: str,
) -> None:
    drawn = generate_cells((256, 256), seed=40_000_999, setting="culture")
    serving = client(nuclear_model_server)
    found: dict[str, np.ndarray] = {}

    def predict(batch: np.ndarray) -> dict[str, np.ndarray]:
        outputs = serving.predict(WHOLE_CELL_MODEL.name, {WHOLE_CELL_MODEL.input: batch}).outputs
        return WHOLE_CELL_MODEL.foreground_only(outputs)

    def postprocess(maps):  # keep both compartments; the pipeline restores the first
        found.update(WHOLE_CELL_MODEL.postprocess_compartments(maps))
        return found["whole-cell"]

    cells = segment(
        drawn.stack(("nuclear", "membrane")),
        predict,
        size_multiple=WHOLE_CELL_MODEL.size_multiple,
        postprocess=postprocess,
    )
    cell_score = score(drawn.cells, cells)
    nuclear_score = score(drawn.nuclei, found["nuclear"])
    assert cell_score.tp >= 0.7 * drawn.cells.max(), cell_score
    assert nuclear_score.tp >= 0.7 * len(np.unique(drawn.nuclei[drawn.nuclei > 0])), nuclear_score
