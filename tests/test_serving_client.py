"""The TF Serving client against a real in-process gRPC model server that doubles its input and
can be told to fail, to be slow, or to start late."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from kiosk.processes import free_port
from kiosk.serving import client as client_module
from kiosk.serving import methods
from kiosk.serving.client import (
    InvalidRequest,
    ModelNotFound,
    ModelServerBusy,
    ModelServerUnavailable,
    PredictTimeout,
    ServingClient,
    VersionStatus,
    backoff_delay,
    close_channels,
    get_channel,
)
from kiosk.serving.protos import tfserving_pb2 as pb
from kiosk.serving.tensors import to_ndarray, to_tensor_proto
from kiosk.settings import PredictSettings

MIB = 1024**2
Code = grpc.StatusCode


class ModelServer:
    """TF-Serving-compatible: model 'double' (versions 1 and 2) takes 'image' and answers
    'doubled' and 'echo'; model 'pair' takes two inputs (metadata only)."""

    SIGNATURES = {
        "double": {"inputs": {"image": (-1, -1, -1, 1)}, "outputs": {"doubled": (-1, -1, -1, 1)}},
        "pair": {"inputs": {"a": (-1,), "b": (-1,)}, "outputs": {"sum": (-1,)}},
    }

    def __init__(self, port: int = 0) -> None:
        self.versions = {"double": [1, 2], "pair": [1]}
        self.failures: list[tuple[grpc.StatusCode, str]] = []  # Predict answers these first
        self.delays: list[float] = []  # then sleeps these, one per call
        self.loading_polls = 0  # GetModelStatus says LOADING this many times
        self.calls: Counter[str] = Counter()
        self.peers: list[str] = []
        self.last_request = b""
        self._lock = threading.Lock()
        limit = 64 * MIB
        self._server = grpc.server(
            ThreadPoolExecutor(8),
            options=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
            ],
        )
        handlers = {
            methods.PREDICT: self._predict,
            methods.GET_MODEL_METADATA: self._metadata,
            methods.GET_MODEL_STATUS: self._status,
        }
        by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        for path, handler in handlers.items():
            request, response = methods.METHODS[path]
            service, name = path.strip("/").split("/")
            by_service.setdefault(service, {})[name] = grpc.unary_unary_rpc_method_handler(
                handler,
                request_deserializer=self._recorder(request),
                response_serializer=response.SerializeToString,
            )
        self._server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(s, h) for s, h in by_service.items()]
        )
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ModelServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)

    def fail(self, code: grpc.StatusCode, times: int, details: str = "") -> None:
        self.failures.extend([(code, details or f"told to fail with {code.name}")] * times)

    def _recorder(self, message: type) -> object:
        def parse(raw: bytes) -> object:
            self.last_request = raw
            return message.FromString(raw)

        return parse

    def _count(self, method: str, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls[method] += 1
            self.peers.append(context.peer())

    def _version(self, spec: pb.ModelSpec, context: grpc.ServicerContext) -> int:
        versions = self.versions.get(spec.name)
        if not versions:
            wanted = (
                f"Specific({spec.name}, {spec.version.value})"
                if spec.HasField("version")
                else f"Latest({spec.name})"
            )
            context.abort(Code.NOT_FOUND, f"Servable not found for request: {wanted}")
        if not spec.HasField("version"):
            return max(versions)
        if spec.version.value not in versions:
            context.abort(
                Code.NOT_FOUND,
                f"Servable not found for request: Specific({spec.name}, {spec.version.value})",
            )
        return spec.version.value

    def _predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> object:
        self._count("Predict", context)
        with self._lock:
            failure = self.failures.pop(0) if self.failures else None
            delay = self.delays.pop(0) if self.delays else 0.0
        if failure:
            context.abort(*failure)
        time.sleep(delay)
        version = self._version(request.model_spec, context)
        if set(request.inputs) != {"image"}:
            context.abort(Code.INVALID_ARGUMENT, f"input names {sorted(request.inputs)} != image")
        image = to_ndarray(request.inputs["image"])
        outputs = {"doubled": image if image.dtype == bool else image * 2, "echo": image}
        response = pb.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = version
        for name, array in outputs.items():
            if not request.output_filter or name in request.output_filter:
                to_tensor_proto(array, response.outputs[name])
        return response

    def _metadata(
        self, request: pb.GetModelMetadataRequest, context: grpc.ServicerContext
    ) -> object:
        self._count("GetModelMetadata", context)
        version = self._version(request.model_spec, context)
        defs = pb.SignatureDefMap()
        sig = defs.signature_def["serving_default"]
        sig.method_name = "tensorflow/serving/predict"
        for side, specs in self.SIGNATURES[request.model_spec.name].items():
            for name, shape in specs.items():
                info = getattr(sig, side)[name]
                info.name = f"{name}:0"
                info.dtype = pb.DT_FLOAT
                info.tensor_shape.dim.extend(pb.TensorShapeProto.Dim(size=n) for n in shape)
        response = pb.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = version
        entry = response.metadata["signature_def"]
        entry.type_url = methods.SIGNATURE_DEF_MAP_TYPE_URL
        entry.value = defs.SerializeToString()
        return response

    def _status(self, request: pb.GetModelStatusRequest, context: grpc.ServicerContext) -> object:
        self._count("GetModelStatus", context)
        name = request.model_spec.name
        if name not in self.versions:
            context.abort(Code.NOT_FOUND, f"Could not find any versions of model {name}")
        with self._lock:
            loading = self.loading_polls > 0
            self.loading_polls -= loading
        response = pb.GetModelStatusResponse()
        for version in self.versions[name]:
            if (
                request.model_spec.HasField("version")
                and version != request.model_spec.version.value
            ):
                continue
            state = pb.ModelVersionStatus.LOADING if loading else pb.ModelVersionStatus.AVAILABLE
            response.model_version_status.add(version=version, state=state)
        return response


@pytest.fixture
def server() -> Iterator[ModelServer]:
    server = ModelServer().start()
    yield server
    server.stop()
    close_channels()


def client_for(target: str, **options: object) -> ServingClient:
    fast = {"timeout": 5.0, "retries": 3, "cold_start_wait": 5.0, "backoff_base": 0.01}
    return ServingClient(target, **{**fast, "backoff_cap": 0.1, **options})  # type: ignore[arg-type]


# -- tensors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype",
    ["float32", "float64", "float16", "uint8", "uint16", "int8", "int16", "int32", "int64", "bool"],
)
def test_predict_round_trips_each_dtype(server: ModelServer, dtype: str) -> None:
    rng = np.random.default_rng(0)
    image = (rng.random((1, 16, 12, 1)) * 100).astype(dtype)
    result = client_for(server.target).predict("double", {"image": image})
    assert result.outputs["echo"].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(result.outputs["echo"], image)
    expected = image if dtype == "bool" else image * 2
    np.testing.assert_array_equal(result.outputs["doubled"], expected)
    assert result.model_version == 2 and result.retries == 0


def test_request_carries_tensor_content_not_float_val(server: ModelServer) -> None:
    image = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4)
    client_for(server.target).predict("double", {"image": image}, version=1)
    sent = pb.PredictRequest.FromString(server.last_request)
    tensor = sent.inputs["image"]
    assert tensor.tensor_content == image.tobytes()
    assert len(tensor.float_val) == 0
    assert tensor.dtype == pb.DT_FLOAT
    assert [d.size for d in tensor.tensor_shape.dim] == [1, 2, 3, 4]
    assert sent.model_spec.name == "double" and sent.model_spec.version.value == 1
    assert sent.model_spec.signature_name == "serving_default"


@pytest.mark.parametrize("side", [1024, 2048])
def test_predict_carries_tensors_larger_than_grpc_default_limit(
    server: ModelServer, side: int
) -> None:
    image = np.random.default_rng(1).random((1, side, side, 1), dtype=np.float32)
    assert image.nbytes >= 4 * MIB  # gRPC's default message limit
    result = client_for(server.target).predict("double", {"image": image})
    np.testing.assert_array_equal(result.outputs["echo"], image)
    np.testing.assert_array_equal(result.outputs["doubled"], image * 2)


def test_message_over_the_configured_limit_is_refused_at_once_with_advice(
    server: ModelServer,
) -> None:
    client = client_for(server.target, max_message_bytes=4 * MIB)
    image = np.zeros((1, 1024, 1024, 1), np.float32)
    with pytest.raises(InvalidRequest, match="KIOSK_GRPC_MAX_MESSAGE_BYTES") as caught:
        client.predict("double", {"image": image})
    assert caught.value.retries == 0
    assert server.calls["Predict"] == 0


def test_output_filter_and_version_are_honoured(server: ModelServer) -> None:
    image = np.ones((1, 2, 2, 1), np.float32)
    result = client_for(server.target).predict(
        "double", {"image": image}, version=1, output_filter=["doubled"]
    )
    assert set(result.outputs) == {"doubled"}
    assert result.model_version == 1


# -- channels ------------------------------------------------------------------------------


def test_one_channel_and_connection_serve_every_call_and_client(server: ModelServer) -> None:
    first, second = client_for(server.target), client_for(server.target)
    assert first.channel is second.channel
    image = np.ones((1, 4, 4, 1), np.float32)
    for client in (first, second, first):
        client.predict("double", {"image": image})
    first.metadata("double")
    assert len(set(server.peers)) == 1, server.peers  # one TCP connection for all four calls
    other = client_for(server.target, max_message_bytes=8 * MIB)
    assert other.channel is not first.channel  # options are part of the key


def test_clients_made_in_parallel_share_one_channel(server: ModelServer) -> None:
    with ThreadPoolExecutor(8) as pool:
        channels = list(pool.map(lambda _: client_for(server.target).channel, range(32)))
    assert len({id(channel) for channel in channels}) == 1
    assert get_channel(server.target) is channels[0]  # default options, same key


def test_calls_are_spread_over_every_address_the_target_resolves_to() -> None:
    servers = [ModelServer().start() for _ in range(2)]
    try:
        # What a dns:/// name of a headless Service gives: several addresses for one target.
        target = "ipv4:" + ",".join(server.target for server in servers)
        client = client_for(target)
        for _ in range(20):
            client.predict("double", {"image": np.ones((1, 2, 2, 1), np.float32)})
        shares = [server.calls["Predict"] for server in servers]
        assert sum(shares) == 20 and min(shares) >= 5, shares  # pick_first: [20, 0]
    finally:
        for server in servers:
            server.stop()
        close_channels()


def test_an_old_channel_is_renewed_and_closed_once_its_last_call_ends(
    server: ModelServer,
) -> None:
    client = client_for(server.target, channel_max_age=0.3)
    image = np.ones((1, 2, 2, 1), np.float32)
    old = client.channel
    server.delays.append(1.0)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(client.predict, "double", {"image": image})
        time.sleep(0.5)  # the slow call is in flight on a channel now past its age
        client.predict("double", {"image": image})
        renewed = client.channel
        assert renewed is not old
        np.testing.assert_array_equal(slow.result(10).outputs["doubled"], image * 2)
    with pytest.raises(ValueError, match="closed channel"):
        old.unary_unary(methods.PREDICT)(b"")  # closed once the slow call ended


def test_a_target_unavailable_for_long_is_resolved_again_on_fresh_channels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_module, "RENEW_WHILE_UNAVAILABLE_S", 0.5)
    opened: list[str] = []
    original = client_module.Connection.__init__

    def counting(self: client_module.Connection, target: str, options: tuple) -> None:
        opened.append(target)
        original(self, target, options)

    monkeypatch.setattr(client_module.Connection, "__init__", counting)
    port = free_port()
    late: list[ModelServer] = []
    starter = threading.Timer(2.0, lambda: late.append(ModelServer(port).start()))
    starter.start()
    try:
        result = client_for(f"127.0.0.1:{port}", cold_start_wait=30.0, backoff_cap=0.2).predict(
            "double", {"image": np.ones((1, 2, 2, 1), np.float32)}
        )
        assert result.retries >= 1
        assert len(opened) >= 3, f"one channel per half second unavailable, got {len(opened)}"
    finally:
        starter.join()
        for server in late:
            server.stop()
        close_channels()


# -- retries -------------------------------------------------------------------------------


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    ceilings = [backoff_delay(n, 0.25, 10.0, rng=lambda low, high: high) for n in range(8)]
    assert ceilings == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff_delay(1000, 0.25, 10.0, rng=lambda low, high: high) == 10.0
    samples = [backoff_delay(3, 0.25, 10.0) for _ in range(2000)]
    assert 0 <= min(samples) < 0.2 and 1.8 < max(samples) <= 2.0  # full jitter over [0, 2]


def test_resource_exhausted_is_retried_and_retries_are_counted(server: ModelServer) -> None:
    server.fail(Code.RESOURCE_EXHAUSTED, 2, "OOM when allocating tensor")
    result = client_for(server.target, retries=3).predict(
        "double", {"image": np.ones((1, 2, 2, 1), np.float32)}
    )
    assert result.retries == 2
    assert server.calls["Predict"] == 3
    np.testing.assert_array_equal(result.outputs["doubled"], np.full((1, 2, 2, 1), 2.0))


def test_resource_exhausted_past_the_retries_raises_model_server_busy(server: ModelServer) -> None:
    server.fail(Code.RESOURCE_EXHAUSTED, 10, "OOM when allocating tensor")
    with pytest.raises(ModelServerBusy, match="OOM when allocating") as caught:
        client_for(server.target, retries=2).predict("double", {"image": np.ones((1, 1, 1, 1))})
    assert server.calls["Predict"] == 3
    assert caught.value.retries == 2 and caught.value.transient


def test_deadline_exceeded_is_retried_then_succeeds(server: ModelServer) -> None:
    server.delays = [1.0]
    result = client_for(server.target, timeout=0.3).predict(
        "double", {"image": np.ones((1, 2, 2, 1), np.float32)}
    )
    assert result.retries == 1
    assert server.calls["Predict"] == 2


def test_deadline_exceeded_on_every_try_raises_predict_timeout(server: ModelServer) -> None:
    server.delays = [0.6] * 3
    started = time.monotonic()
    with pytest.raises(PredictTimeout, match="KIOSK_PREDICT_TIMEOUT") as caught:
        client_for(server.target, timeout=0.2, retries=2).predict(
            "double", {"image": np.ones((1, 2, 2, 1), np.float32)}
        )
    assert 0.6 <= time.monotonic() - started < 3  # three deadlines of 0.2 s plus backoff
    assert caught.value.code == Code.DEADLINE_EXCEEDED and caught.value.retries == 2
    assert server.calls["Predict"] == 3


def test_unavailable_is_waited_out_within_cold_start_wait(server: ModelServer) -> None:
    server.fail(Code.UNAVAILABLE, 4, "model server starting")
    client = client_for(server.target, retries=0, cold_start_wait=5.0)  # retries don't apply
    result = client.predict("double", {"image": np.ones((1, 2, 2, 1), np.float32)})
    assert result.retries == 4
    assert server.calls["Predict"] == 5


def test_unavailable_past_cold_start_wait_raises_model_server_unavailable(
    server: ModelServer,
) -> None:
    server.fail(Code.UNAVAILABLE, 10_000, "model server starting")
    client = client_for(server.target, cold_start_wait=0.6, backoff_cap=0.2)
    started = time.monotonic()
    with pytest.raises(ModelServerUnavailable, match=server.target) as caught:
        client.predict("double", {"image": np.ones((1, 2, 2, 1), np.float32)})
    assert 0.6 <= time.monotonic() - started < 2.0
    assert caught.value.transient and caught.value.retries > 1


def test_nothing_listening_raises_model_server_unavailable_after_cold_start_wait() -> None:
    target = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ModelServerUnavailable, match="is it running"):
        client_for(target, cold_start_wait=0.5).predict("double", {"image": np.ones((1, 1))})
    assert 0.5 <= time.monotonic() - started < 2.5
    close_channels()


def test_model_server_that_starts_late_is_waited_for() -> None:
    port = free_port()
    late: list[ModelServer] = []  # made in the timer: the port is bound only then
    starter = threading.Timer(1.5, lambda: late.append(ModelServer(port).start()))
    starter.start()
    try:
        started = time.monotonic()
        result = client_for(f"127.0.0.1:{port}", cold_start_wait=30.0, backoff_cap=0.5).predict(
            "double", {"image": np.ones((1, 2, 2, 1), np.float32)}
        )
        assert time.monotonic() - started >= 1.4
        assert result.retries >= 1
        np.testing.assert_array_equal(result.outputs["doubled"], np.full((1, 2, 2, 1), 2.0))
    finally:
        starter.join()
        for server in late:
            server.stop()
        close_channels()


# -- refusals ------------------------------------------------------------------------------


def test_missing_model_raises_model_not_found_at_once_with_what_to_do(server: ModelServer) -> None:
    client = client_for(server.target, models_location="gs://lab-bucket/models/")
    started = time.monotonic()
    with pytest.raises(ModelNotFound) as caught:
        client.predict("NuclearSegmentation", {"image": np.ones((1, 2, 2, 1))}, version=3)
    assert time.monotonic() - started < 1.0
    assert server.calls["Predict"] == 1
    message = str(caught.value)
    assert "model 'NuclearSegmentation' version 3 is not served by " + server.target in message
    assert "gs://lab-bucket/models/{Name}/{version}/" in message
    assert "Specific(NuclearSegmentation, 3)" in message  # what the server said
    assert not caught.value.transient and caught.value.code == Code.NOT_FOUND


def test_invalid_argument_raises_invalid_request_at_once(server: ModelServer) -> None:
    with pytest.raises(InvalidRequest, match=r"refused the request \(INVALID_ARGUMENT\)"):
        client_for(server.target).predict("double", {"pixels": np.ones((1, 2, 2, 1))})
    assert server.calls["Predict"] == 1


def test_unsupported_dtype_is_refused_before_sending(server: ModelServer) -> None:
    with pytest.raises(InvalidRequest, match="input 'image'"):
        client_for(server.target).predict("double", {"image": np.ones(3, np.complex64)})
    assert server.calls["Predict"] == 0


# -- metadata and status -------------------------------------------------------------------


def test_metadata_is_parsed_and_cached(server: ModelServer) -> None:
    client = client_for(server.target)
    meta = client.metadata("double")
    assert meta.version == 2
    signature = meta.signature()
    assert signature.method_name == "tensorflow/serving/predict"
    assert signature.inputs["image"].dtype == np.float32
    assert signature.inputs["image"].shape == (-1, -1, -1, 1)
    assert list(signature.outputs) == ["doubled"]
    assert client.metadata("double") is meta
    assert client.metadata("double", 2) is meta  # the latest version answered, so cached too
    assert server.calls["GetModelMetadata"] == 1
    client.metadata("double", 1)
    client.metadata("double", 1)
    assert server.calls["GetModelMetadata"] == 2
    with pytest.raises(InvalidRequest, match=r"no signature 'predict'.*'serving_default'"):
        meta.signature("predict")


def test_bare_array_goes_to_the_only_input(server: ModelServer) -> None:
    client = client_for(server.target)
    image = np.ones((1, 3, 3, 1), np.float32)
    for _ in range(2):
        np.testing.assert_array_equal(client.predict("double", image).outputs["doubled"], image * 2)
    assert server.calls["GetModelMetadata"] == 1
    with pytest.raises(InvalidRequest, match="takes inputs 'a', 'b'; pass a dict"):
        client.predict("pair", np.ones(3, np.float32))


def test_check_names_the_input_and_the_channel_count_before_sending(server: ModelServer) -> None:
    client = client_for(server.target)
    with pytest.raises(InvalidRequest, match="expects 1 channels, got 3"):
        client.predict("double", {"image": np.ones((1, 8, 8, 3), np.float32)}, check=True)
    with pytest.raises(InvalidRequest, match=r"takes float32 \(DT_FLOAT\) but got uint16"):
        client.predict("double", {"image": np.ones((1, 8, 8, 1), np.uint16)}, check=True)
    assert server.calls["Predict"] == 0
    client.predict("double", {"image": np.ones((1, 8, 8, 1), np.float32)}, check=True)
    assert server.calls["Predict"] == 1


def test_status_lists_versions_and_states(server: ModelServer) -> None:
    client = client_for(server.target)
    assert client.status("double") == [
        VersionStatus(1, "AVAILABLE", None),
        VersionStatus(2, "AVAILABLE", None),
    ]
    assert client.status("double", 1) == [VersionStatus(1, "AVAILABLE", None)]
    with pytest.raises(ModelNotFound, match="'missing'"):
        client.status("missing")


def test_wait_until_available_waits_while_the_model_loads(server: ModelServer) -> None:
    server.loading_polls = 3
    client = client_for(server.target)
    assert client.wait_until_available("double", timeout=10, poll=0.05) == 2
    assert server.calls["GetModelStatus"] == 4


def test_wait_until_available_gives_up_on_a_missing_model(server: ModelServer) -> None:
    started = time.monotonic()
    with pytest.raises(ModelNotFound, match=r"not available .* within 0\.5 s"):
        client_for(server.target).wait_until_available("missing", timeout=0.5, poll=0.05)
    assert 0.5 <= time.monotonic() - started < 2


# -- settings ------------------------------------------------------------------------------


def test_client_is_built_from_predict_settings(server: ModelServer) -> None:
    settings = PredictSettings(
        model_server=server.target,
        predict_timeout=7.0,
        predict_retries=2,
        cold_start_wait=9.0,
        grpc_max_message_bytes=32 * MIB,
        bucket="gs://lab-bucket",
    )
    client = ServingClient.from_settings(settings)
    assert (client.target, client.timeout, client.retries) == (server.target, 7.0, 2)
    assert (client.cold_start_wait, client.max_message_bytes) == (9.0, 32 * MIB)
    assert client.models_location == "gs://lab-bucket/models"
    assert client.predict("double", {"image": np.ones((1, 1, 1, 1), np.float32)}).retries == 0
