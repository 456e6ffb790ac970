"""The embedded model server (``kiosk serve``).

Pure parts (batcher, input checks, busy ratio, version discovery, version policy with a fake
loader) are tested in-process without TensorFlow. The rest starts the real server as a
subprocess, once for the module, on tiny SavedModels built in another subprocess, and talks to
it over gRPC and HTTP like a client would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kiosk.serving import methods
from kiosk.serving.protos import tfserving_pb2 as pb
from kiosk.serving.tensors import to_ndarray, to_tensor_proto
from kiosk.storage.local import LocalBucket
from model_server import manager as manager_module
from model_server.batching import Batcher, BatcherClosed
from model_server.errors import ServingError
from model_server.health import HealthCheckRequest, HealthCheckResponse
from model_server.manager import ModelManager, State
from model_server.metrics import BusyTracker, ServerMetrics
from model_server.repository import ModelRepository
from model_server.signatures import batch_items, check_inputs, warmup_inputs
from tests.support.servers import free_port, wait_for
from tests.support.services import REPO, Service
from tests.support.tiny_models import KERAS_BIAS, KERAS_CHANNELS, KERAS_SCALE

# ============================================================================ batcher


def _echo_plus(calls: list[int]):
    def run(signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        calls.append(x.shape[0])
        if np.isnan(x).any():
            raise ValueError("NaN in input")
        return {"y": x + 1, "n": np.full(x.shape[0], x.shape[0])}

    return run


def test_batcher_concatenates_concurrent_requests_and_splits_results() -> None:
    calls: list[int] = []
    batcher = Batcher(_echo_plus(calls), max_batch_size=6, timeout=2.0)
    arrays = [np.full((n, 3), i, np.float32) for i, n in enumerate((1, 2, 3))]
    futures = [batcher.submit("s", {"x": a}, a.shape[0]) for a in arrays]
    results = [f.result(5) for f in futures]
    batcher.close()
    assert calls == [6]  # full at 6 items: no waiting out the 2 s timeout
    for array, result in zip(arrays, results, strict=True):
        np.testing.assert_array_equal(result["y"], array + 1)
        assert result["n"].tolist() == [6] * array.shape[0]


def test_batcher_without_a_timeout_runs_at_once_and_batches_what_queued_meanwhile() -> None:
    calls: list[int] = []
    started, release = threading.Event(), threading.Event()
    echo = _echo_plus(calls)

    def run(signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started.set()
        release.wait(5)
        return echo(signature, inputs)

    batcher = Batcher(run, max_batch_size=8, timeout=0)
    first = batcher.submit("s", {"x": np.zeros((1, 3), np.float32)}, 1)
    assert started.wait(5)  # it did not wait for company
    queued = [batcher.submit("s", {"x": np.zeros((1, 3), np.float32)}, 1) for _ in range(3)]
    release.set()
    for future in [first, *queued]:
        future.result(5)
    batcher.close()
    assert calls == [1, 3]


def test_batcher_keeps_to_max_size_and_never_mixes_shapes() -> None:
    calls: list[int] = []
    batcher = Batcher(_echo_plus(calls), max_batch_size=4, timeout=0.05)
    same = [batcher.submit("s", {"x": np.zeros((2, 3), np.float32)}, 2) for _ in range(3)]
    other = batcher.submit("s", {"x": np.zeros((1, 5), np.float32)}, 1)
    large = batcher.submit("s", {"x": np.zeros((9, 3), np.float32)}, 9)
    alone = batcher.submit("s", {"x": np.zeros((2, 3), np.float32)}, None)
    for future in [*same, other, large, alone]:
        future.result(5)
    batcher.close()
    assert sorted(calls) == [1, 2, 2, 4, 9]  # 2+2 batched; a request above the max runs alone


def test_batcher_reruns_a_failed_batch_request_by_request() -> None:
    calls: list[int] = []
    batcher = Batcher(_echo_plus(calls), max_batch_size=3, timeout=2.0)
    good = np.ones((1, 2), np.float32)
    bad = np.full((1, 2), np.nan, np.float32)
    futures = [batcher.submit("s", {"x": a}, 1) for a in (good, bad, good)]
    assert futures[0].result(5)["y"].tolist() == [[2, 2]]
    assert futures[2].result(5)["y"].tolist() == [[2, 2]]
    with pytest.raises(ValueError, match="NaN"):
        futures[1].result(5)
    batcher.close()
    assert calls == [3, 1, 1, 1]


def test_batcher_runs_alone_when_outputs_are_not_per_item() -> None:
    calls: list[int] = []

    def run(signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(inputs["x"].shape[0])
        return {"mean": np.asarray(inputs["x"].mean())}

    batcher = Batcher(run, max_batch_size=2, timeout=2.0)
    futures = [batcher.submit("s", {"x": np.full((1,), v, np.float32)}, 1) for v in (1, 3)]
    assert [f.result(5)["mean"] for f in futures] == [1, 3]
    batcher.close()
    assert calls == [2, 1, 1]


def test_batcher_skips_cancelled_requests_and_drains_on_close() -> None:
    gate = threading.Event()
    seen: list[float] = []

    def run(signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        gate.wait(5)
        seen.append(float(inputs["x"][0]))
        return {"y": inputs["x"]}

    batcher = Batcher(run, max_batch_size=1, timeout=0)
    first = batcher.submit("s", {"x": np.array([1.0])}, 1)
    wait_for(lambda: batcher.queued() == 0, 5, what="the first request to start")
    dropped = batcher.submit("s", {"x": np.array([2.0])}, 1)
    kept = batcher.submit("s", {"x": np.array([3.0])}, 1)
    assert dropped.cancel()
    gate.set()
    batcher.close()  # drains what is queued
    assert first.result(1)["y"].tolist() == [1.0]
    assert kept.result(1)["y"].tolist() == [3.0]
    assert seen == [1.0, 3.0]
    with pytest.raises(BatcherClosed):
        batcher.submit("s", {"x": np.array([4.0])}, 1)


@pytest.mark.parametrize("workers", [1, 2])
def test_batcher_runs_as_many_batches_at_once_as_it_has_workers(workers: int) -> None:
    """Two requests that cannot share a batch (different shapes) meet inside ``run`` only
    when two workers run them side by side."""
    inside = threading.Barrier(2)

    def run(signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            inside.wait(timeout=1.0)
            met = True
        except threading.BrokenBarrierError:
            met = False
        return {"met": np.full(inputs["x"].shape[0], met)}

    batcher = Batcher(run, max_batch_size=8, timeout=0, workers=workers)
    futures = [batcher.submit("s", {"x": np.zeros((1, n), np.float32)}, 1) for n in (2, 3)]
    met = [bool(f.result(5)["met"][0]) for f in futures]
    batcher.close()
    assert met == [workers == 2] * 2


# ============================================================================ signatures


def _signature(shape: list[int], dtype: int = pb.DT_FLOAT) -> pb.SignatureDef:
    signature = pb.SignatureDef(method_name="tensorflow/serving/predict")
    info = signature.inputs["image"]
    info.dtype = dtype
    info.tensor_shape.dim.extend(pb.TensorShapeProto.Dim(size=n) for n in shape)
    signature.outputs["y"].CopyFrom(info)
    return signature


def test_inputs_are_checked_against_the_signature() -> None:
    signature = _signature([-1, -1, -1, 1])
    good = {"image": to_tensor_proto(np.zeros((2, 4, 4, 1), np.float32))}
    assert check_inputs(signature, good, "M")["image"].shape == (2, 4, 4, 1)
    cases = {
        "expected DT_FLOAT shape [-1, -1, -1, 1], got DT_INT32 shape [1, 4, 4, 1]": np.zeros(
            (1, 4, 4, 1), np.int32
        ),
        "expected DT_FLOAT shape [-1, -1, -1, 1], got DT_FLOAT shape [1, 4, 4, 3]": np.zeros(
            (1, 4, 4, 3), np.float32
        ),
        "got DT_FLOAT shape [4, 4, 1]": np.zeros((4, 4, 1), np.float32),
    }
    for message, array in cases.items():
        with pytest.raises(ServingError) as caught:
            check_inputs(signature, {"image": to_tensor_proto(array)}, "model M")
        assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert "input 'image' of model M" in caught.value.message
        assert message in caught.value.message
    with pytest.raises(ServingError, match="takes inputs 'image': missing 'image'; unknown 'x'"):
        check_inputs(signature, {"x": good["image"]}, "M")


def test_batching_and_warm_up_follow_the_signature() -> None:
    open_batch = _signature([-1, -1, -1, 1])
    assert batch_items(open_batch, {"image": np.zeros((3, 2, 2, 1))}) == 3
    assert batch_items(_signature([1, -1, -1, 1]), {"image": np.zeros((1, 2, 2, 1))}) is None
    assert warmup_inputs(open_batch)["image"].shape == (1, 64, 64, 1)
    assert warmup_inputs(_signature([2, 8], pb.DT_INT32))["image"].dtype == np.int32


def test_busy_ratio_is_the_busy_share_of_the_window() -> None:
    now = [100.0]
    tracker = BusyTracker(window=10, clock=lambda: now[0])
    now[0] = 120.0
    assert tracker.ratio() == 0
    tracker.begin()
    now[0] = 123.0
    assert tracker.ratio() == pytest.approx(0.3)  # still running counts
    tracker.begin()  # a second model at the same time: the device is not twice as busy
    now[0] = 124.0
    tracker.end()
    tracker.end()
    now[0] = 125.0
    assert tracker.ratio() == pytest.approx(0.4)
    now[0] = 200.0
    assert tracker.ratio() == 0


# ============================================================================ repository


def _version(root: Path, name: str, version: str, content: bytes = b"ok") -> Path:
    folder = root / "models" / name / version
    (folder / "variables").mkdir(parents=True, exist_ok=True)
    (folder / "saved_model.pb").write_bytes(content)
    (folder / "variables" / "variables.index").write_bytes(b"index")
    return folder


class _RemoteBucket(LocalBucket):
    """A local directory that pretends to be remote, so versions are copied to the cache."""

    def local_path(self, key: str) -> Path | None:
        return None


def test_repository_lists_numeric_versions_with_a_saved_model(tmp_path: Path) -> None:
    bucket_dir = tmp_path / "bucket"
    for version in ("1", "2", "tmp"):
        _version(bucket_dir, "M", version)
    (bucket_dir / "models" / "M" / "3").mkdir()  # no saved_model.pb yet: not a version
    for bucket in (LocalBucket(bucket_dir), _RemoteBucket(bucket_dir)):
        repository = ModelRepository(bucket, tmp_path / "cache")
        assert repository.model_names() == ["M"]
        assert sorted(repository.versions("M")) == [1, 2]
        assert repository.versions("Other") == {}
        assert repository.versions("../etc") == {}


def test_repository_copies_remote_versions_into_the_cache(tmp_path: Path) -> None:
    bucket_dir = tmp_path / "bucket"
    _version(bucket_dir, "M", "1")
    local = ModelRepository(LocalBucket(bucket_dir), tmp_path / "cache")
    assert local.local_path("M", 1) == bucket_dir.resolve() / "models" / "M" / "1"
    remote = ModelRepository(_RemoteBucket(bucket_dir), tmp_path / "cache")
    path = remote.local_path("M", 1)
    assert path == tmp_path / "cache" / "M" / "1"
    assert (path / "variables" / "variables.index").read_bytes() == b"index"
    (path / "variables" / "variables.index").write_bytes(b"cached")  # reused while unchanged
    assert (remote.local_path("M", 1) / "variables" / "variables.index").read_bytes() == b"cached"
    (bucket_dir / "models" / "M" / "1" / "assets").mkdir()
    (bucket_dir / "models" / "M" / "1" / "assets" / "vocab.txt").write_text("a")
    path = remote.local_path("M", 1)  # the version changed: copied afresh
    assert (path / "variables" / "variables.index").read_bytes() == b"index"
    assert (path / "assets" / "vocab.txt").read_text() == "a"
    assert [p.name for p in (tmp_path / "cache" / "M").iterdir()] == ["1"]


# ============================================================================ manager


class _FakeServable:
    def __init__(self, version: int) -> None:
        self.version = version
        self.signature_defs = {"serving_default": _signature([-1, 2])}
        self.runnable = frozenset(self.signature_defs)
        self.parallel_runs = 1

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": inputs["image"] + self.version}


def _fake_loader(path: Path) -> _FakeServable:
    if (path / "saved_model.pb").read_bytes() == b"broken":
        raise ValueError("cannot parse saved_model.pb")
    return _FakeServable(int(path.name))


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake_models(tmp_path: Path) -> Iterator[tuple[ModelManager, Path, _Clock]]:
    bucket_dir = tmp_path / "bucket"
    _version(bucket_dir, "M", "1")
    _version(bucket_dir, "M", "2")
    clock = _Clock()
    manager = ModelManager(
        ModelRepository(LocalBucket(bucket_dir), tmp_path / "cache"),
        _fake_loader,
        ServerMetrics(),
        poll_interval=0.05,
        batch_timeout=0,
        clock=clock,
    )
    yield manager, bucket_dir, clock
    manager.stop()


def _states(manager: ModelManager, name: str = "M") -> dict[int, str]:
    return {s.version: s.state.value for s in manager.status(name)}


def test_manager_serves_the_latest_and_loads_a_pinned_version_on_demand(fake_models) -> None:
    manager, _bucket, clock = fake_models
    manager.poll_once()
    assert manager.resolve("M", None, 0).version == 2
    assert _states(manager) == {2: "AVAILABLE"}
    assert manager.ready() == (True, {"M": "AVAILABLE: version 2"})
    with pytest.raises(ServingError) as caught:
        manager.resolve("M", 1, 0)  # not loaded yet; asking for it is what loads it
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    manager.poll_once()
    assert manager.resolve("M", 1, 0).version == 1
    assert manager.resolve("M", None, 0).version == 2
    clock.now += manager_module.PINNED_IDLE + 1
    manager.poll_once()
    assert _states(manager) == {2: "AVAILABLE", 1: "END"}


@pytest.mark.parametrize(("setting", "suits", "workers"), [(0, 2, 2), (0, 1, 1), (3, 2, 3)])
def test_a_version_runs_as_many_inferences_at_once_as_set_or_as_its_runtime_suits(
    tmp_path: Path, setting: int, suits: int, workers: int
) -> None:
    bucket_dir = tmp_path / "bucket"
    _version(bucket_dir, "M", "1")

    def loader(path: Path) -> _FakeServable:
        servable = _fake_loader(path)
        servable.parallel_runs = suits
        return servable

    manager = ModelManager(
        ModelRepository(LocalBucket(bucket_dir), tmp_path / "cache"),
        loader,
        ServerMetrics(),
        inference_workers=setting,
    )
    try:
        manager.poll_once()
        assert len(manager.resolve("M", None, 0).batcher._threads) == workers
    finally:
        manager.stop()


def test_manager_waits_for_a_pinned_version_while_it_loads(fake_models) -> None:
    manager, _bucket, _clock = fake_models
    manager.start()
    assert manager.resolve("M", 1, 5.0).version == 1  # clock is fake: the wait is by polls


def test_manager_swaps_in_a_new_version_once_its_files_settle(fake_models) -> None:
    manager, bucket_dir, _clock = fake_models
    manager.poll_once()
    old = manager.resolve("M", None, 0)
    _version(bucket_dir, "M", "3")
    manager.poll_once()  # first sight: could still be copying
    assert manager.resolve("M", None, 0).version == 2
    manager.poll_once()
    assert manager.resolve("M", None, 0).version == 3
    assert _states(manager) == {3: "AVAILABLE", 2: "END"}
    with pytest.raises(BatcherClosed):
        old.batcher.submit("serving_default", {}, None)


def test_manager_reports_a_broken_version_and_keeps_the_previous(fake_models) -> None:
    manager, bucket_dir, _clock = fake_models
    manager.poll_once()
    _version(bucket_dir, "M", "3", b"broken")
    manager.poll_once()
    manager.poll_once()
    statuses = {s.version: s for s in manager.status("M")}
    assert statuses[3].state is State.END
    assert "cannot parse saved_model.pb" in statuses[3].error.message
    assert manager.resolve("M", None, 0).version == 2
    with pytest.raises(ServingError, match="version 3 of model M failed to load") as caught:
        manager.resolve("M", 3, 0)
    assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION
    _version(bucket_dir, "M", "3", b"fixed now")  # its files change: tried again
    manager.poll_once()
    manager.poll_once()
    assert manager.resolve("M", None, 0).version == 3


def test_manager_falls_back_when_the_newest_version_is_broken(fake_models) -> None:
    manager, bucket_dir, _clock = fake_models
    _version(bucket_dir, "M", "2", b"broken")
    _version(bucket_dir, "N", "1", b"broken")
    manager.poll_once()
    assert manager.resolve("M", None, 0).version == 1
    with pytest.raises(ServingError, match="no version of model N could be loaded") as caught:
        manager.resolve("N", None, 0)
    assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION
    ok, states = manager.ready()
    assert not ok
    assert "failed to load: ValueError: cannot parse" in states["N"]


def test_manager_names_what_is_missing(tmp_path: Path) -> None:
    bucket_dir = tmp_path / "bucket"
    _version(bucket_dir, "M", "1")
    manager = ModelManager(
        ModelRepository(LocalBucket(bucket_dir), tmp_path / "cache"),
        _fake_loader,
        ServerMetrics(),
        models=("M", "Later"),
    )
    manager.poll_once()
    where = f"file://{bucket_dir.resolve()}/models/"
    with pytest.raises(ServingError) as caught:
        manager.resolve("Nope", None, 0)
    assert caught.value.code is grpc.StatusCode.NOT_FOUND
    assert caught.value.message == (
        f"model 'Nope' not found: models are read from {where} (serving: M)"
    )
    with pytest.raises(ServingError, match=re.escape(f"put a SavedModel in {where}Later/VERSION/")):
        manager.resolve("Later", None, 0)
    with pytest.raises(ServingError, match=r"has no version 7 .*versions there: 1"):
        manager.resolve("M", 7, 0)
    assert manager.ready() == (
        False,
        {"M": "AVAILABLE: version 1", "Later": f"no versions under {where}Later/"},
    )
    _version(bucket_dir, "Later", "1")
    manager.poll_once()  # seen once: maybe still being copied in
    assert not manager.ready()[0]
    manager.poll_once()
    assert manager.ready()[0]
    manager.stop()


# ============================================================================ the real server


class ModelServer:
    def __init__(self, root: Path, service: Service, port: int, http_port: int) -> None:
        self.root = root
        self.service = service
        self.address = f"127.0.0.1:{port}"
        self.http = f"http://127.0.0.1:{http_port}"
        self.channel = grpc.insecure_channel(self.address)

    def call(self, path: str, request, timeout: float = 30):
        request_cls, response_cls = methods.METHODS[path]
        stub = self.channel.unary_unary(
            path,
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )
        return stub(request, timeout=timeout)

    def predict(self, name: str, array: np.ndarray, **spec) -> pb.PredictResponse:
        return self.call(methods.PREDICT, predict_request(name, array, **spec))

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.http + path, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metrics(self) -> dict[tuple[str, tuple], float]:
        _code, text = self.get("/monitoring/prometheus/metrics")
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


def predict_request(
    name: str,
    array: np.ndarray,
    version: int | None = None,
    signature: str = "",
    input_name: str = "image",
    output_filter: tuple[str, ...] = (),
) -> pb.PredictRequest:
    request = pb.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if signature:
        request.model_spec.signature_name = signature
    to_tensor_proto(array, out=request.inputs[input_name])
    request.output_filter.extend(output_filter)
    return request


def outputs(response: pb.PredictResponse) -> dict[str, np.ndarray]:
    return {name: to_ndarray(proto) for name, proto in response.outputs.items()}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    root = tmp_path_factory.mktemp("model-server")
    subprocess.run(
        [sys.executable, "-m", "tests.support.tiny_models", str(root)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=120,
    )
    port, http_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KIOSK_")},
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        "KIOSK_MODEL_POLL_INTERVAL": "0.2",
        "KIOSK_MAX_BATCH_SIZE": "8",
        "KIOSK_BATCH_TIMEOUT": "0.05",
        "KIOSK_MODEL_CACHE_DIR": str(root / "cache"),
        "KIOSK_LOG_LEVEL": "INFO",
    }
    args = ["-m", "local", "serve", "--port", str(port), "--http-port", str(http_port)]
    args += ["--bucket", f"file://{root}"]
    service = Service("model-server", args, env, root / "logs")
    running = ModelServer(root, service, port, http_port)
    try:
        wait_for(lambda: running.get("/healthz")[0] == 200, 90, 0.2, "the model server")
        yield running
    finally:
        running.channel.close()
        service.stop()


@pytest.fixture
def model_server(server: ModelServer, request: pytest.FixtureRequest) -> Iterator[ModelServer]:
    """The module's server; its log is printed when a test fails."""
    yield server
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print(f"\n----- model server log -----\n{server.service.log()[-8000:]}")


def _rng_image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def test_predict_serves_the_latest_version_by_default(model_server: ModelServer) -> None:
    image = _rng_image((2, 5, 6, 1))
    response = model_server.predict("Tiny", image)
    got = outputs(response)
    np.testing.assert_allclose(got["y"], 2 * image + 2, rtol=1e-6)
    np.testing.assert_allclose(got["total"], image.sum(axis=(1, 2, 3)), rtol=1e-5)
    assert response.outputs["y"].tensor_content  # raw bytes, not float_val
    spec = response.model_spec
    assert (spec.name, spec.version.value, spec.signature_name) == ("Tiny", 2, "serving_default")


def test_predict_honours_version_signature_and_output_filter(model_server: ModelServer) -> None:
    image = _rng_image((1, 3, 3, 1), seed=1)
    pinned = model_server.predict("Tiny", image, version=1, output_filter=("y",))
    assert list(pinned.outputs) == ["y"]
    np.testing.assert_allclose(outputs(pinned)["y"], 2 * image + 1, rtol=1e-6)
    assert pinned.model_spec.version.value == 1
    double = model_server.predict("Tiny", image, signature="double")
    np.testing.assert_allclose(outputs(double)["y"], 2 * image, rtol=1e-6)
    assert double.model_spec.signature_name == "double"
    request = predict_request("Tiny", image)
    request.inputs["image"].ClearField("tensor_content")
    request.inputs["image"].float_val.extend(image.ravel().tolist())  # an old client's request
    np.testing.assert_allclose(
        outputs(model_server.call(methods.PREDICT, request))["y"], 2 * image + 2
    )


def test_refusals_say_what_was_wrong(model_server: ModelServer) -> None:
    image = np.zeros((1, 4, 4, 1), np.float32)
    cases = [
        (
            predict_request("Nope", image),
            grpc.StatusCode.NOT_FOUND,
            f"model 'Nope' not found: models are read from file://{model_server.root}/models/",
        ),
        (predict_request("Tiny", image, version=9), grpc.StatusCode.NOT_FOUND, "has no version 9"),
        (
            predict_request("Tiny", image.astype(np.int32)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input 'image' of model Tiny version 2 signature serving_default: expected DT_FLOAT "
            "shape [-1, -1, -1, 1], got DT_INT32 shape [1, 4, 4, 1]",
        ),
        (
            predict_request("Tiny", np.zeros((1, 4, 4, 3), np.float32)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "got DT_FLOAT shape [1, 4, 4, 3]",
        ),
        (
            predict_request("Tiny", image, input_name="x"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "takes inputs 'image': missing 'image'; unknown 'x'",
        ),
        (
            predict_request("Tiny", image, signature="nope"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "its signatures are 'double', 'serving_default'",
        ),
        (
            predict_request("Tiny", image, output_filter=("z",)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "output_filter names 'z'",
        ),
    ]
    labelled = predict_request("Tiny", image)
    labelled.model_spec.version_label = "stable"
    cases.append((labelled, grpc.StatusCode.UNIMPLEMENTED, "version labels are not supported"))
    for request, code, message in cases:
        with pytest.raises(grpc.RpcError) as caught:
            model_server.call(methods.PREDICT, request)
        assert caught.value.code() is code, caught.value.details()
        assert message in caught.value.details()


def test_metadata_lists_every_signature_like_tf_serving(model_server: ModelServer) -> None:
    request = pb.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "Tiny"
    response = model_server.call(methods.GET_MODEL_METADATA, request)
    assert (response.model_spec.name, response.model_spec.version.value) == ("Tiny", 2)
    entry = response.metadata["signature_def"]
    assert entry.type_url == methods.SIGNATURE_DEF_MAP_TYPE_URL
    signatures = pb.SignatureDefMap.FromString(entry.value).signature_def
    assert {"serving_default", "double"} <= set(signatures)
    default = signatures["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    image = default.inputs["image"]
    assert image.dtype == pb.DT_FLOAT
    assert [d.size for d in image.tensor_shape.dim] == [-1, -1, -1, 1]
    assert [d.size for d in default.outputs["total"].tensor_shape.dim] == [-1]


def test_serves_a_keras_3_export(model_server: ModelServer) -> None:
    image = _rng_image((1, 4, 5, 1), seed=2)
    response = model_server.predict("Keras", image)
    (name,) = response.outputs
    got = to_ndarray(response.outputs[name])
    assert got.shape == (1, 4, 5, KERAS_CHANNELS)
    expected = np.repeat(KERAS_SCALE * image + KERAS_BIAS, KERAS_CHANNELS, axis=-1)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_status_over_grpc_and_http(model_server: ModelServer) -> None:
    request = pb.GetModelStatusRequest()
    request.model_spec.name = "Keras"
    (status,) = model_server.call(methods.GET_MODEL_STATUS, request).model_version_status
    assert (status.version, status.state, status.status.error_code) == (
        1,
        pb.ModelVersionStatus.AVAILABLE,
        pb.OK,
    )
    code, body = model_server.get("/v1/models/Tiny/versions/2")
    assert code == 200
    assert json.loads(body) == {
        "model_version_status": [
            {
                "version": "2",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    code, body = model_server.get("/v1/models/Tiny")
    assert code == 200
    assert {"2"} <= {s["version"] for s in json.loads(body)["model_version_status"]}
    code, body = model_server.get("/v1/models/Nope")
    assert code == 404
    assert "model 'Nope' not found" in json.loads(body)["error"]
    code, body = model_server.get("/healthz")
    assert code == 200
    assert json.loads(body)["models"]["Keras"] == "AVAILABLE: version 1"


def test_grpc_health_check(model_server: ModelServer) -> None:
    check = model_server.channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=HealthCheckRequest.SerializeToString,
        response_deserializer=HealthCheckResponse.FromString,
    )
    assert check(HealthCheckRequest(service=""), timeout=10).status == 1  # SERVING
    with pytest.raises(grpc.RpcError) as caught:
        check(HealthCheckRequest(service="nope"), timeout=10)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def _batch_sizes(model_server: ModelServer, model: str) -> tuple[float, float]:
    samples = model_server.metrics()
    labels = (("model", model),)
    return (
        samples.get(("kiosk_model_server_batch_size_count", labels), 0),
        samples.get(("kiosk_model_server_batch_size_sum", labels), 0),
    )


def test_every_signature_is_warmed_up_before_a_version_serves(model_server: ModelServer) -> None:
    log = model_server.service.log()
    assert "Tiny/1: warmed up signatures double, serving_default" in log


def test_concurrent_requests_are_batched(model_server: ModelServer) -> None:
    count_before, sum_before = _batch_sizes(model_server, "Growing")
    clients = 16
    barrier = threading.Barrier(clients)
    images = [np.full((1, 8, 8, 1), i, np.float32) for i in range(clients)]

    def one(image: np.ndarray) -> np.ndarray:
        barrier.wait(10)
        return outputs(model_server.predict("Growing", image, version=1))["y"]

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, images))
    for image, result in zip(images, results, strict=True):
        np.testing.assert_array_equal(result, 2 * image + 1)  # each gets its own result
    count, total = _batch_sizes(model_server, "Growing")
    assert total - sum_before == clients
    assert count - count_before < clients  # some inferences ran more than one request


def test_metrics_count_requests_and_busy_time(model_server: ModelServer) -> None:
    model_server.predict("Tiny", np.zeros((1, 2, 2, 1), np.float32))
    with pytest.raises(grpc.RpcError):
        model_server.predict("Nope", np.zeros((1, 2, 2, 1), np.float32))
    samples = model_server.metrics()
    ok = (("code", "OK"), ("method", "Predict"), ("model", "Tiny"))
    missing = (("code", "NOT_FOUND"), ("method", "Predict"), ("model", "unknown"))
    assert samples[("kiosk_model_server_requests_total", ok)] >= 1
    assert samples[("kiosk_model_server_requests_total", missing)] >= 1
    assert samples[("kiosk_model_server_request_duration_seconds_count", ok[1:])] >= 1
    assert samples[("kiosk_model_server_inference_duration_seconds_count", (("model", "Tiny"),))]
    assert samples[("kiosk_model_server_busy_seconds_total", (("model", "Tiny"),))] > 0
    assert 0 <= samples[("kiosk_model_server_busy_ratio", ())] <= 1


def _default_version(model_server: ModelServer, name: str) -> int:
    response = model_server.predict(name, np.zeros((1, 1, 1, 1), np.float32))
    return response.model_spec.version.value


def test_new_versions_are_picked_up_and_broken_ones_reported(model_server: ModelServer) -> None:
    models = model_server.root / "models" / "Growing"
    assert _default_version(model_server, "Growing") == 1
    shutil.copytree(model_server.root / "spare" / "Growing-2", models / "2")
    wait_for(lambda: _default_version(model_server, "Growing") == 2, 30, 0.1, "version 2")
    shutil.copytree(model_server.root / "spare" / "Growing-3", models / "3")

    def broken() -> dict | None:
        body = json.loads(model_server.get("/v1/models/Growing")[1])
        by_version = {s["version"]: s for s in body["model_version_status"]}
        return by_version if by_version.get("3", {}).get("state") == "END" else None

    statuses = wait_for(broken, 30, 0.1, "version 3 to fail")
    assert statuses["3"]["status"]["error_code"] != "OK"
    assert statuses["3"]["status"]["error_message"]
    assert statuses["2"]["state"] == "AVAILABLE"
    assert _default_version(model_server, "Growing") == 2
    assert model_server.get("/healthz")[0] == 200


def test_kiosk_serve_help_does_not_import_tensorflow() -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from local.cli import app; "
        "result = CliRunner().invoke(app, ['serve', '--help']); "
        "assert result.exit_code == 0 and '--http-port' in result.output, result.output; "
        "assert 'tensorflow' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
    result = subprocess.run(
        [sys.executable, "-m", "model_server", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "--models" in result.stdout


def test_sigterm_stops_the_server_cleanly(model_server: ModelServer) -> None:
    """Last: it stops the module's server."""
    started = time.monotonic()
    model_server.service.signal(signal.SIGTERM)
    assert model_server.service.process.wait(20) == 0
    assert time.monotonic() - started < 15
    assert "model server stopped" in model_server.service.log()
