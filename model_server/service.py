"""gRPC handlers for TF Serving's PredictionService and ModelService.

Registered under the official service names (see :mod:`kiosk.serving.methods`), so the official
TensorFlow Serving client and Kiosk's own client both work against ``kiosk serve``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from typing import Any, cast

import grpc
import numpy as np

from kiosk.serving import methods
from kiosk.serving.protos import tfserving_pb2 as pb
from kiosk.serving.tensors import to_tensor_proto
from model_server.batching import BatcherClosed
from model_server.errors import ServingError, as_serving_error
from model_server.manager import LoadedVersion, ModelManager
from model_server.metrics import ServerMetrics
from model_server.signatures import batch_items, check_inputs, check_output_filter

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
SIGNATURE_DEF = "signature_def"
UNKNOWN_MODEL = "unknown"  # metrics label for names the server does not serve (bounded labels)

Handler = Callable[[Any, grpc.ServicerContext], Any]


class ModelServerService:
    """Predict, GetModelMetadata and GetModelStatus over a :class:`ModelManager`."""

    def __init__(self, manager: ModelManager, metrics: ServerMetrics) -> None:
        self.manager = manager
        self.metrics = metrics

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        def unary(path: str, handler: Handler) -> grpc.RpcMethodHandler:
            request_cls, response_cls = methods.METHODS[path]
            return grpc.unary_unary_rpc_method_handler(
                self._guarded(path.rsplit("/", 1)[-1], handler),
                request_deserializer=request_cls.FromString,
                response_serializer=response_cls.SerializeToString,
            )

        return [
            grpc.method_handlers_generic_handler(
                methods.PREDICTION_SERVICE,
                {
                    "Predict": unary(methods.PREDICT, self.predict),
                    "GetModelMetadata": unary(methods.GET_MODEL_METADATA, self.get_model_metadata),
                },
            ),
            grpc.method_handlers_generic_handler(
                methods.MODEL_SERVICE,
                {"GetModelStatus": unary(methods.GET_MODEL_STATUS, self.get_model_status)},
            ),
        ]

    def _guarded(self, method: str, handler: Handler) -> Handler:
        """Turn ServingError into its gRPC status; count and time every call."""

        def call(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            name = request.model_spec.name
            code = grpc.StatusCode.OK
            try:
                return handler(request, context)
            except ServingError as exc:
                code = exc.code
                context.abort(exc.code, exc.message)
            except Exception as exc:
                log.exception("%s for model %r failed", method, name)
                code = grpc.StatusCode.INTERNAL
                context.abort(code, f"{method} failed inside the model server: {exc}")
            finally:
                label = name if name in self.manager.model_names() else UNKNOWN_MODEL
                self.metrics.request(label, method, code.name, time.perf_counter() - started)

        return call

    # ------------------------------------------------------------------ Predict

    def predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> Any:
        spec = request.model_spec
        version = requested_version(spec)
        signature_name = spec.signature_name or DEFAULT_SIGNATURE
        future: Future | None = None
        for _ in range(2):  # once more if the version was unloaded between lookup and submit
            loaded = self.manager.resolve(spec.name, version, context.time_remaining())
            where = f"model {loaded.name} version {loaded.version} signature {signature_name}"
            signature = runnable_signature(loaded, signature_name)
            arrays = check_inputs(signature, request.inputs, where)
            wanted = check_output_filter(signature, request.output_filter, where)
            try:
                future = loaded.batcher.submit(
                    signature_name, arrays, batch_items(signature, arrays)
                )
                break
            except BatcherClosed:
                continue
        if future is None:
            raise ServingError(grpc.StatusCode.UNAVAILABLE, f"{spec.name} is being reloaded")
        pending = future

        def cancel() -> None:  # the client went away: drop the request from the batch
            pending.cancel()

        context.add_callback(cancel)
        try:
            outputs = future.result(timeout=context.time_remaining())
        except TimeoutError:
            future.cancel()
            raise ServingError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"{where}: no result before the deadline"
            ) from None
        except CancelledError:
            raise ServingError(grpc.StatusCode.CANCELLED, f"{where}: cancelled") from None
        except Exception as exc:
            error = as_serving_error(exc)
            raise ServingError(error.code, f"{where}: {error.message}") from None
        response = pb.PredictResponse()
        fill_spec(response.model_spec, loaded, signature_name)
        for name in wanted:
            to_tensor_proto(outputs[name], out=response.outputs[name])
        self.metrics.predict_bytes(  # from the arrays: a read of tensor_content is a copy
            loaded.name,
            signature_name,
            sum(a.nbytes for a in arrays.values()),
            sum(np.asarray(outputs[name]).nbytes for name in wanted),
        )
        return response

    # ------------------------------------------------------------------ metadata and status

    def get_model_metadata(
        self, request: pb.GetModelMetadataRequest, context: grpc.ServicerContext
    ) -> Any:
        fields = list(request.metadata_field) or [SIGNATURE_DEF]
        unsupported = [f for f in fields if f != SIGNATURE_DEF]
        if unsupported:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"metadata field(s) {', '.join(map(repr, unsupported))} are not supported; "
                f"ask for {SIGNATURE_DEF!r}",
            )
        spec = request.model_spec
        loaded = self.manager.resolve(spec.name, requested_version(spec), context.time_remaining())
        signatures = pb.SignatureDefMap()
        for key, signature in loaded.servable.signature_defs.items():
            signatures.signature_def[key].CopyFrom(signature)
        response = pb.GetModelMetadataResponse()
        fill_spec(response.model_spec, loaded)
        entry = response.metadata[SIGNATURE_DEF]
        entry.type_url = methods.SIGNATURE_DEF_MAP_TYPE_URL
        entry.value = signatures.SerializeToString(deterministic=True)
        return response

    def get_model_status(
        self, request: pb.GetModelStatusRequest, context: grpc.ServicerContext
    ) -> Any:
        spec = request.model_spec
        response = pb.GetModelStatusResponse()
        for status in self.manager.status(spec.name, requested_version(spec)):
            entry = response.model_version_status.add(
                version=status.version, state=pb.ModelVersionStatus.State.Value(status.state.value)
            )
            if status.error is not None:
                # gRPC and TensorFlow number their status codes alike.
                entry.status.error_code = cast("pb.ErrorCode", status.error.code.value[0])
                entry.status.error_message = status.error.message
        return response


def requested_version(spec: pb.ModelSpec) -> int | None:
    """The pinned version of a request, None for the latest; refuses labels and no name."""
    if not spec.name:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT, "model_spec.name is empty: name the model to use"
        )
    choice = spec.WhichOneof("version_choice")
    if choice == "version_label":
        raise ServingError(
            grpc.StatusCode.UNIMPLEMENTED,
            f"version labels are not supported (got {spec.version_label!r}): pin a number "
            "with model_spec.version, or leave it out for the latest version",
        )
    return spec.version.value if choice == "version" else None


def runnable_signature(loaded: LoadedVersion, name: str) -> pb.SignatureDef:
    if name not in loaded.servable.runnable:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"model {loaded.name} version {loaded.version} has no signature {name!r}; "
            f"its signatures are {', '.join(map(repr, sorted(loaded.servable.runnable)))}",
        )
    return loaded.servable.signature_defs[name]


def fill_spec(spec: pb.ModelSpec, loaded: LoadedVersion, signature_name: str = "") -> None:
    spec.name = loaded.name
    spec.version.value = loaded.version
    if signature_name:
        spec.signature_name = signature_name
