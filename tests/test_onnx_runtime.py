"""The embedded model server's ONNX Runtime: the bundled models' exports give TensorFlow's
outputs, the server runs them without loading TensorFlow, and a version without an export still
loads (with TensorFlow) unless the runtime says exports only."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from evaluation.served import embedded_model_server
from kiosk.serving.client import ServingClient
from model_server import onnx_model
from model_server.errors import ServingError
from model_server.model import SavedModelServable
from model_server.onnx_model import CROWDED_FOR, OnnxServable, serving_error
from model_server.runtimes import ONNX_DIR, export_state, load_servable
from models.training.export_onnx import (
    HALF_TOLERANCE,
    TOLERANCE,
    check_inputs,
    disagreement,
    mismatch,
)
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
    assert all(export_state(MODELS / name / "1") == "current" for name in BUNDLED)


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


def test_an_export_outlived_by_its_model_is_not_served(tmp_path: Path):
    version = tmp_path / "1"
    shutil.copytree(MODELS / "NuclearSegmentation" / "1", version)
    (version / ".kiosk-fingerprint.json").write_text("[]")  # the model cache's marker: no change
    assert export_state(version) == "current"
    (version / "variables" / "extra.txt").write_text("the model was replaced")
    assert export_state(version) == "stale"
    assert isinstance(load_servable(version, "auto"), SavedModelServable)
    with pytest.raises(ServingError, match="stale ONNX export"):
        load_servable(version, "onnx")


def test_a_partial_export_is_refused_rather_than_served_without_a_signature(tmp_path: Path):
    folder = tmp_path / ONNX_DIR
    shutil.copytree(MODELS / "NuclearSegmentation" / "1" / ONNX_DIR, folder)
    (folder / "lean.onnx").unlink()
    with pytest.raises(ValueError, match="lean: a partial export"):
        OnnxServable(folder)


def test_the_export_check_refuses_nan_other_dtypes_and_missing_outputs():
    want = {"a": np.ones((2, 2), np.float32)}
    assert mismatch(want, {"a": np.ones((2, 2), np.float32)}, TOLERANCE) == ""
    nan = np.ones((2, 2), np.float32)
    nan[0, 0] = np.nan
    assert "differs by inf" in mismatch(want, {"a": nan}, TOLERANCE)
    assert "float16" in mismatch(want, {"a": np.ones((2, 2), np.float16)}, TOLERANCE)
    assert "instead of" in mismatch(want, {"b": np.ones((2, 2), np.float32)}, TOLERANCE)
    tiny = {"a": np.full((2, 2), 1e-7, np.float32)}  # a near-constant output is no excuse
    assert mismatch(tiny, {"a": np.full((2, 2), 1.1e-7, np.float32)}, TOLERANCE) == ""


def test_onnx_runtime_errors_carry_the_status_tensorflow_would():
    onnx = OnnxServable(MODELS / "NuclearSegmentation" / "1" / ONNX_DIR)
    odd = {"image": np.zeros((1, 63, 65, 1), np.float32)}  # not on the model's 16-px grid
    with pytest.raises(ServingError) as refused:
        onnx.run("serving_default", odd)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "serving_default" in refused.value.message
    memory = serving_error(RuntimeError("std::bad_alloc"), "signature lean")
    assert memory.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert serving_error(RuntimeError("oops"), "x").code == grpc.StatusCode.INTERNAL


def _loaded_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


class _Watched:
    """A session stand-in that records which session ran and can hold a run until told."""

    def __init__(self, session, name: str, log: list[str], hold: threading.Event | None = None):
        self.session, self.name, self.log, self.hold = session, name, log, hold
        self.started = threading.Event()

    def run(self, names, inputs):
        self.log.append(self.name)
        self.started.set()
        if self.hold is not None:
            assert self.hold.wait(30)
        return self.session.run(names, inputs)


def test_a_lone_request_gets_every_core_and_requests_side_by_side_a_core_each(monkeypatch):
    servable = OnnxServable(MODELS / "NuclearSegmentation" / "1" / ONNX_DIR)
    if servable.parallel_runs == 1:
        pytest.skip("one core: the narrow session is the wide one")
    signature = "serving_default"
    image = {"image": np.random.default_rng(3).random((1, 256, 256, 1), dtype=np.float32)}
    wide = servable.run(signature, image)
    ran: list[str] = []
    release = threading.Event()
    held = _Watched(servable._wide[signature], "wide", ran, hold=release)
    monkeypatch.setitem(servable._wide, signature, held)
    narrow = _Watched(servable._narrow[signature], "narrow", ran)
    monkeypatch.setitem(servable._narrow, signature, narrow)
    now = [100.0]
    monkeypatch.setattr(onnx_model, "clock", lambda: now[0])
    answers: list[dict[str, np.ndarray]] = []
    first = threading.Thread(target=lambda: answers.append(servable.run(signature, image)))
    first.start()
    assert held.started.wait(30)
    beside = servable.run(signature, image)  # while the first still runs
    release.set()
    first.join(30)
    assert not first.is_alive() and len(answers) == 1
    now[0] += CROWDED_FOR - 0.1
    servable.run(signature, image)  # soon after: the version is still crowded
    now[0] += 0.2
    servable.run(signature, image)  # alone long enough: every core again
    assert ran == ["wide", "narrow", "narrow", "wide"]
    for name, value in wide.items():  # one thread or all, the same numbers
        np.testing.assert_array_equal(beside[name], value)
        np.testing.assert_array_equal(answers[0][name], value)


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


def test_the_labels_of_a_sample_image_are_the_same_under_either_runtime():
    import tifffile

    from consumers.processing.pipeline import segment
    from evaluation.quality import score
    from evaluation.report import PipelineConfig

    config = PipelineConfig.from_settings()
    heads = config.contract.heads
    image = tifffile.imread(MODELS.parent / "samples" / "nuclei-1024.tif")
    version = MODELS / "NuclearSegmentation" / "1"
    labels = {}
    for servable in (SavedModelServable(version), OnnxServable(version / ONNX_DIR)):
        labels[type(servable).__name__] = segment(
            image,
            lambda batch, s=servable: heads.foreground_only(
                s.run("serving_default", {"image": batch})
            ),
            image_mpp=config.model_mpp,
            postprocess=config.contract.postprocess,
            **config.options,
        )
    tf_labels, onnx_labels = labels["SavedModelServable"], labels["OnnxServable"]
    assert tf_labels.max() > 50  # a real segmentation, not an empty one
    assert score(tf_labels, onnx_labels).f1 >= 0.99, score(tf_labels, onnx_labels)
