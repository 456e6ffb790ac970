"""The embedded model server's ONNX Runtime: the bundled models' exports give TensorFlow's
outputs, the server runs them without loading TensorFlow, and a version without an export still
loads (with TensorFlow) unless the runtime says exports only."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest

from evaluation.served import embedded_model_server
from kiosk.serving.client import ServingClient
from model_server.errors import ServingError
from model_server.model import SavedModelServable
from model_server.onnx_model import OnnxServable
from model_server.runtimes import ONNX_DIR, has_onnx, load_servable
from models.training.export_onnx import HALF_TOLERANCE, TOLERANCE, check_inputs, disagreement
from tests.support.servers import wait_for

MODELS = Path(__file__).resolve().parent.parent / "models"
BUNDLED = sorted(p.parent.parent.name for p in MODELS.glob("*/1/saved_model.pb"))


def test_every_bundled_model_carries_an_export():
    assert BUNDLED == [
        "CytoplasmSegmentation",
        "DivisionScoring",
        "NuclearSegmentation",
        "WholeCellSegmentation",
    ]
    assert all(has_onnx(MODELS / name / "1") for name in BUNDLED)


@pytest.mark.parametrize("name", BUNDLED)
def test_an_export_gives_the_saved_models_outputs_on_every_signature(name: str):
    version = MODELS / name / "1"
    saved, onnx = SavedModelServable(version), OnnxServable(version / ONNX_DIR)
    assert onnx.runnable == saved.runnable
    assert onnx.signature_defs == saved.signature_defs
    rng = np.random.default_rng(7)  # not the export's own check input
    for signature in sorted(saved.runnable):
        inputs = check_inputs(saved.signature_defs[signature], rng)
        want, got = saved.run(signature, inputs), onnx.run(signature, inputs)
        assert set(got) == set(want)
        for output, value in want.items():
            assert got[output].dtype == value.dtype and got[output].shape == value.shape
            limit = HALF_TOLERANCE if value.dtype == np.float16 else TOLERANCE
            assert disagreement(value, got[output]) < limit, (signature, output)


def test_a_version_without_an_export_loads_with_tensorflow_unless_exports_only(tmp_path: Path):
    version = tmp_path / "1"
    shutil.copytree(
        MODELS / "NuclearSegmentation" / "1", version, ignore=shutil.ignore_patterns(ONNX_DIR)
    )
    assert isinstance(load_servable(version, "auto"), SavedModelServable)
    with pytest.raises(ServingError, match="no ONNX export") as refused:
        load_servable(version, "onnx")
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "export_onnx" in refused.value.message
    exported = MODELS / "NuclearSegmentation" / "1"
    assert isinstance(load_servable(exported, "auto"), OnnxServable)
    assert isinstance(load_servable(exported, "tensorflow"), SavedModelServable)


def _loaded_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_the_model_server_serves_exports_without_loading_tensorflow():
    with embedded_model_server(MODELS, ["NuclearSegmentation"]) as server:
        client = ServingClient(server.target)
        image = np.random.default_rng(0).random((1, 256, 256, 1), dtype=np.float32)
        outputs = client.predict("NuclearSegmentation", {"image": image}).outputs
        assert outputs["inner_distance"].shape == (1, 256, 256, 1)
        maps = _loaded_libraries(server.process.pid)
        assert "onnxruntime" in maps
        assert "tensorflow" not in maps
    saved = SavedModelServable(MODELS / "NuclearSegmentation" / "1")
    want = saved.run("serving_default", {"image": image})["inner_distance"]
    assert disagreement(want, outputs["inner_distance"]) < TOLERANCE


def test_the_tensorflow_runtime_is_still_there_when_asked_for():
    with embedded_model_server(
        MODELS, ["NuclearSegmentation"], env={"KIOSK_MODEL_RUNTIME": "tensorflow"}
    ) as server:
        wait_for(
            lambda: "tensorflow" in _loaded_libraries(server.process.pid),
            30,
            what="TensorFlow loaded",
        )
        assert "onnxruntime" not in _loaded_libraries(server.process.pid)
