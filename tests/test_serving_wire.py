"""Wire compatibility with TensorFlow Serving, checked against its official Python API package
(tensorflow-serving-api from PyPI) running in a separate process (tests/support/
tfserving_official.py): our client calls servicers written with the official stubs, and messages
serialized by either side parse on the other to the same content and the same bytes."""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf.message import Message

from kiosk.serving import methods
from kiosk.serving.client import (
    InvalidRequest,
    ModelNotFound,
    ServingClient,
    VersionStatus,
    build_metadata_request,
    build_predict_request,
    build_status_request,
    close_channels,
)
from kiosk.serving.protos import tfserving_pb2 as pb
from kiosk.serving.tensors import to_ndarray, to_tensor_proto
from tests.support.protodesc import as_dict, unknown_field_paths
from tests.support.services import REPO

API_VERSION = "2.21.0"  # the release matching the TensorFlow in the project's environment
API_SITE = REPO / ".cache" / f"tensorflow-serving-api-{API_VERSION}"
OFFICIAL = Path(__file__).parent / "support" / "tfserving_official.py"
STARTUP_S = 180


def official_api_site() -> Path:
    """tensorflow-serving-api installed without its dependencies (it pins ``tensorflow``, which
    would replace tensorflow-cpu) into a directory of its own. Fails loudly if it cannot."""
    ready = API_SITE / ".installed"
    if not ready.exists():
        shutil.rmtree(API_SITE, ignore_errors=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--target",
                str(API_SITE),
                f"tensorflow-serving-api=={API_VERSION}",
            ],
            check=True,
        )
        ready.touch()
    return API_SITE


class Official:
    """The official process: a gRPC target and a JSON-line command channel."""

    def __init__(self, site: Path, log: Path) -> None:
        self.log = log
        env = {**os.environ, "PYTHONPATH": str(site), "TF_CPP_MIN_LOG_LEVEL": "2"}
        env["CUDA_VISIBLE_DEVICES"] = ""
        self._sink = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, str(OFFICIAL)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._sink,
            text=True,
            env=env,
            cwd=site,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready = self._reply(STARTUP_S)
        self.target = f"127.0.0.1:{self.ready['port']}"

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put("")

    def _reply(self, timeout: float = 60) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            line = ""
        if not line:
            tail = self.log.read_text(errors="replace")[-4000:]
            raise AssertionError(f"the official process gave no answer; its log:\n{tail}")
        reply = json.loads(line)
        assert "error" not in reply, reply["error"]
        return reply

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._reply()

    def parse(self, message: Message) -> dict[str, Any]:
        """How the official class of the same name reads our serialized ``message``."""
        data = message.SerializeToString(deterministic=True)
        return self.ask(op="parse", type=type(message).__name__, data=b64(data))

    def stop(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._sink.close()


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Official]:
    process = Official(official_api_site(), tmp_path_factory.mktemp("official") / "official.log")
    yield process
    process.stop()
    close_channels()


@pytest.fixture
def client(official: Official) -> ServingClient:
    return ServingClient(official.target, timeout=60.0, retries=0, cold_start_wait=0.0)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def decoded(described: dict[str, Any]) -> dict[str, np.ndarray]:
    """The arrays TensorFlow's make_ndarray found, as the official side reported them."""
    return {
        name: np.frombuffer(base64.b64decode(a["data"]), np.dtype(a["dtype"]).newbyteorder("<"))
        .reshape(a["shape"])
        .astype(np.dtype(a["dtype"]))
        for name, a in described["arrays"].items()
    }


def test_the_official_package_runs_apart_from_kiosk(official: Official) -> None:
    assert Path(official.ready["tensorflow_serving"]).is_relative_to(API_SITE)
    assert official.ready["kiosk_imported"] is False


# -- our client against servicers written with the official stubs ---------------------------


def test_predict_round_trips_through_the_official_servicer(
    official: Official, client: ServingClient
) -> None:
    rng = np.random.default_rng(5)
    image = rng.random((1, 64, 48, 2), dtype=np.float32)
    mask = rng.integers(0, 65535, (1, 64, 48, 1)).astype(np.uint16)
    result = client.predict("double", {"image": image, "mask": mask})
    out = result.outputs
    assert result.model_version == 7 and result.retries == 0
    np.testing.assert_array_equal(out["doubled"], image * 2)
    assert out["doubled"].dtype == np.float32
    np.testing.assert_array_equal(out["mask_plus_one"], mask + 1)
    assert out["mask_plus_one"].dtype == np.uint16
    # What TensorFlow's side saw arrive: tensor_content, no float_val.
    assert int(out["tensor_content_bytes"]) == image.nbytes
    assert int(out["float_val_count"]) == 0
    # Replies in the typed-value encodings decode too.
    np.testing.assert_array_equal(out["first_row"], image[0, 0, :, 0])
    np.testing.assert_array_equal(out["splat"], np.full((2, 3), 1.5, np.float32))


def test_predict_carries_a_1024_square_tensor_and_honours_version_and_filter(
    client: ServingClient,
) -> None:
    image = np.random.default_rng(6).random((1, 1024, 1024, 1), dtype=np.float32)
    result = client.predict(
        "double", {"image": image}, version=6, output_filter=["doubled", "tensor_content_bytes"]
    )
    assert set(result.outputs) == {"doubled", "tensor_content_bytes"}
    assert result.model_version == 6
    np.testing.assert_array_equal(result.outputs["doubled"], image * 2)
    assert int(result.outputs["tensor_content_bytes"]) == image.nbytes


def test_official_not_found_and_invalid_argument_map_to_our_errors(client: ServingClient) -> None:
    image = np.ones((1, 2, 2, 2), np.float32)
    with pytest.raises(ModelNotFound, match=r"Specific\(double, 3\)"):
        client.predict("double", {"image": image}, version=3)
    with pytest.raises(ModelNotFound, match=r"Latest\(missing\)"):
        client.predict("missing", {"image": image})
    with pytest.raises(InvalidRequest, match="alias not found"):
        client.predict("double", {"pixels": image})


def test_metadata_reads_signatures_from_the_official_any(client: ServingClient) -> None:
    meta = client.metadata("double")
    assert meta.model == "double" and meta.version == 7
    assert set(meta.signatures) == {"serving_default", "any_rank"}
    main = meta.signature()
    assert main.method_name == "tensorflow/serving/predict"
    assert set(main.inputs) == {"image", "mask"}
    assert (main.inputs["image"].dtype, main.inputs["image"].shape) == (
        np.dtype(np.float32),
        (-1, -1, -1, 2),
    )
    assert (main.inputs["mask"].dtype, main.inputs["mask"].shape) == (
        np.dtype(np.uint16),
        (-1, -1, -1, 1),
    )
    assert main.outputs["label"].dtype is None and main.outputs["label"].type_name == "DT_STRING"
    loose = meta.signature("any_rank")
    assert loose.inputs["x"].shape is None and loose.inputs["x"].dtype == np.float64
    assert loose.outputs["y"].shape == () and loose.outputs["y"].dtype == np.int64
    # A bare array is refused for a two-input signature, and the check uses these specs.
    with pytest.raises(InvalidRequest, match="expects 2 channels, got 3"):
        client.predict(
            "double",
            {"image": np.ones((1, 4, 4, 3), np.float32), "mask": np.ones((1, 4, 4, 1), np.uint16)},
            check=True,
        )


def test_status_and_wait_until_available_read_the_official_model_service(
    client: ServingClient,
) -> None:
    assert client.status("double") == [
        VersionStatus(5, "END", "NOT_FOUND: Could not find SavedModel .pb"),
        VersionStatus(6, "END", None),
        VersionStatus(7, "AVAILABLE", None),
    ]
    assert client.status("double", 6) == [VersionStatus(6, "END", None)]
    assert client.wait_until_available("double", timeout=10) == 7
    with pytest.raises(ModelNotFound, match="'missing'"):
        client.status("missing")


# -- messages: ours parsed by the official classes ------------------------------------------


def our_messages() -> dict[str, tuple[Message, dict[str, np.ndarray]]]:
    """Messages as Kiosk builds them, with the arrays their tensors hold."""
    rng = np.random.default_rng(7)
    first = {
        "image": rng.random((1, 4, 4, 2), dtype=np.float32),
        "mask": rng.integers(0, 65535, (1, 4, 4, 1)).astype(np.uint16),
    }
    second = {
        "float16": (np.arange(6, dtype=np.float16) / 4).reshape(2, 3),
        "float64": rng.random((3, 2)),
        "int8": np.array([-128, 0, 127], np.int8),
        "int16": np.array([-(2**15), 2**15 - 1], np.int16),
        "int64": np.array([[2**40, -(2**40)]], np.int64),
        "uint8": np.arange(250, 256, dtype=np.uint8),
        "uint32": np.array([0, 2**32 - 1], np.uint32),
        "bool": np.array([True, False, True]),
        "scalar": np.float32(2.5),
        "big_endian": np.arange(4, dtype=">f4"),
    }
    response = pb.PredictResponse()
    response.model_spec.name = "double"
    response.model_spec.version.value = 7
    for name, array in first.items():
        to_tensor_proto(array * 2, response.outputs[name])
    defs = pb.SignatureDefMap()
    sig = defs.signature_def["serving_default"]
    sig.method_name = "tensorflow/serving/predict"
    sig.inputs["image"].name = "image:0"
    sig.inputs["image"].dtype = pb.DT_FLOAT
    sig.inputs["image"].tensor_shape.dim.add(size=-1)
    sig.outputs["y"].name = "y:0"
    sig.outputs["y"].dtype = pb.DT_INT64
    sig.outputs["y"].tensor_shape.unknown_rank = True
    metadata = pb.GetModelMetadataResponse()
    metadata.model_spec.name = "double"
    metadata.model_spec.version.value = 7
    metadata.metadata["signature_def"].type_url = methods.SIGNATURE_DEF_MAP_TYPE_URL
    metadata.metadata["signature_def"].value = defs.SerializeToString()
    status = pb.GetModelStatusResponse()
    status.model_version_status.add(version=7, state=pb.ModelVersionStatus.AVAILABLE)
    failed = status.model_version_status.add(version=5, state=pb.ModelVersionStatus.END)
    failed.status.error_code = pb.NOT_FOUND
    failed.status.error_message = "no SavedModel"
    return {
        "predict_request_version": (
            build_predict_request("double", first, 7, output_filter=["doubled"]),
            first,
        ),
        "predict_request_latest": (
            build_predict_request("double", second, signature_name="other"),
            {k: v.astype(v.dtype.newbyteorder("=")) for k, v in second.items()},
        ),
        "predict_response": (response, {k: v * 2 for k, v in first.items()}),
        "metadata_request": (build_metadata_request("double", 7), {}),
        "metadata_response": (metadata, {}),
        "status_request": (build_status_request("double"), {}),
        "status_response": (status, {}),
    }


@pytest.mark.parametrize("case", list(our_messages()))
def test_our_messages_read_the_same_with_official_classes(official: Official, case: str) -> None:
    message, arrays = our_messages()[case]
    seen = official.parse(message)
    assert seen["unknown_fields"] == []
    # Parsed and serialized again by the official class: the very same bytes.
    assert base64.b64decode(seen["data"]) == message.SerializeToString(deterministic=True)
    if isinstance(message, pb.GetModelMetadataResponse):
        entry = message.metadata["signature_def"]
        assert seen["any_unpacked"] is True  # google.protobuf.Any.Unpack accepts our AnyMessage
        assert seen["any_type_url"] == entry.type_url
        assert seen["signature_def_map_unknown_fields"] == []
        assert seen["signature_def_map"] == as_dict(pb.SignatureDefMap.FromString(entry.value))
        assert seen["model_spec"] == as_dict(message.model_spec)
    else:
        assert seen["dict"] == as_dict(message)  # same field names, numbers, enum names
    official_arrays = decoded(seen)
    assert set(official_arrays) == set(arrays)
    for name, array in arrays.items():
        assert official_arrays[name].dtype == np.asarray(array).dtype, name
        np.testing.assert_array_equal(official_arrays[name], array, err_msg=name)


# -- messages: the official classes' parsed by ours -----------------------------------------

OFFICIAL_SAMPLES = [
    "predict_request_version",
    "predict_request_label",
    "predict_response",
    "metadata_request",
    "metadata_response",
    "status_request",
    "status_response",
]


@pytest.mark.parametrize("name", OFFICIAL_SAMPLES)
def test_official_messages_read_the_same_with_ours(official: Official, name: str) -> None:
    sample = official.ask(op="sample", name=name)
    data = base64.b64decode(sample["data"])
    ours = getattr(pb, sample["type"]).FromString(data)
    assert unknown_field_paths(ours) == []
    assert ours.SerializeToString(deterministic=True) == data
    if isinstance(ours, pb.GetModelMetadataResponse):
        entry = ours.metadata["signature_def"]
        assert entry.type_url == sample["any_type_url"] == methods.SIGNATURE_DEF_MAP_TYPE_URL
        defs = pb.SignatureDefMap.FromString(entry.value)
        assert unknown_field_paths(defs) == []
        assert as_dict(defs) == sample["signature_def_map"]
        assert as_dict(ours.model_spec) == sample["model_spec"]
    else:
        assert as_dict(ours) == sample["dict"]
    tensors = getattr(ours, "inputs", None) or getattr(ours, "outputs", None) or {}
    expected = decoded(sample)
    assert set(expected) == set(tensors)
    for key, tensor in tensors.items():
        array = to_ndarray(tensor)
        assert array.dtype == expected[key].dtype, key
        np.testing.assert_array_equal(array, expected[key], err_msg=key)
