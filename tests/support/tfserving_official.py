"""The official side of tests/test_serving_wire.py, run in a process of its own.

It uses only TensorFlow Serving's own API package (``tensorflow-serving-api`` from PyPI, on
PYTHONPATH) and TensorFlow's protos and tensor conversions; it never imports kiosk. It

* serves PredictionService and ModelService written with the official generated stubs
  (``add_PredictionServiceServicer_to_server``): model "double", versions 5 (failed), 6 and 7;
* answers JSON lines on stdin: ``parse`` reads bytes with an official class and describes what
  it found; ``sample`` returns a message built with official classes.

The first line on stdout is ``{"port": ...}``; each command gets one line back. Everything else
that would reach stdout (TensorFlow's C++ logs) is sent to stderr.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from concurrent import futures
from typing import Any

# fd 1 carries the protocol only; anything else printed goes to stderr.
_protocol = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_serving  # noqa: E402
from google.protobuf.message import Message  # noqa: E402
from protodesc import as_dict, unknown_field_paths  # noqa: E402 - a sibling; this runs as a script
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2  # noqa: E402
from tensorflow.core.protobuf import error_codes_pb2, meta_graph_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)

MODEL = "double"
VERSIONS = (6, 7)  # version 5 failed to load
MAX_MESSAGE = 2**31 - 1  # what TensorFlow Serving allows

TYPES: dict[str, type[Message]] = {
    "PredictRequest": predict_pb2.PredictRequest,
    "PredictResponse": predict_pb2.PredictResponse,
    "GetModelMetadataRequest": get_model_metadata_pb2.GetModelMetadataRequest,
    "GetModelMetadataResponse": get_model_metadata_pb2.GetModelMetadataResponse,
    "GetModelStatusRequest": get_model_status_pb2.GetModelStatusRequest,
    "GetModelStatusResponse": get_model_status_pb2.GetModelStatusResponse,
    "TensorProto": tensor_pb2.TensorProto,
}


# -- the servicers -------------------------------------------------------------------------


def resolve(spec: model_pb2.ModelSpec, context: grpc.ServicerContext) -> int:
    """The version a request names, or NOT_FOUND worded as TensorFlow Serving words it."""
    if spec.HasField("version"):
        wanted = f"Specific({spec.name}, {spec.version.value})"
    else:
        wanted = f"Latest({spec.name})"
    if spec.name != MODEL or (spec.HasField("version") and spec.version.value not in VERSIONS):
        context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {wanted}")
    return spec.version.value if spec.HasField("version") else max(VERSIONS)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:
        version = resolve(request.model_spec, context)
        if "image" not in request.inputs or set(request.inputs) - {"image", "mask"}:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input tensor alias not found in signature: {sorted(request.inputs)}",
            )
        sent = request.inputs["image"]
        image = tf.make_ndarray(sent)
        outputs = {
            "doubled": tf.make_tensor_proto(image * 2),
            "tensor_content_bytes": tf.make_tensor_proto(np.int64(len(sent.tensor_content))),
            "float_val_count": tf.make_tensor_proto(np.int64(len(sent.float_val))),
            # The typed-field encodings older servers and clients use: a list and a splat.
            "first_row": tensor_pb2.TensorProto(
                dtype=types_pb2.DT_FLOAT,
                tensor_shape=shape_proto([image.shape[2]]),
                float_val=image[0, 0, :, 0].tolist(),
            ),
            "splat": tensor_pb2.TensorProto(
                dtype=types_pb2.DT_FLOAT, tensor_shape=shape_proto([2, 3]), float_val=[1.5]
            ),
        }
        if "mask" in request.inputs:
            outputs["mask_plus_one"] = tf.make_tensor_proto(
                tf.make_ndarray(request.inputs["mask"]) + 1
            )
        response = predict_pb2.PredictResponse()
        response.model_spec.name = MODEL
        response.model_spec.version.value = version
        response.model_spec.signature_name = request.model_spec.signature_name
        for name, tensor in outputs.items():
            if not request.output_filter or name in request.output_filter:
                response.outputs[name].CopyFrom(tensor)
        return response

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        version = resolve(request.model_spec, context)
        if list(request.metadata_field) != ["signature_def"]:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "Metadata field signature_def is the only one supported",
            )
        return metadata_response(version)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.model_spec.name != MODEL:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"Could not find any versions of model {request.model_spec.name}",
            )
        response = status_response()
        if request.model_spec.HasField("version"):
            keep = [
                s
                for s in response.model_version_status
                if s.version == request.model_spec.version.value
            ]
            del response.model_version_status[:]
            response.model_version_status.extend(keep)
        return response


# -- messages built with official classes --------------------------------------------------


def shape_proto(dims: list[int], unknown_rank: bool = False) -> Any:
    return tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in dims],
        unknown_rank=unknown_rank,
    )


def tensor_info(name: str, dtype: int, dims: list[int] | None) -> Any:
    return meta_graph_pb2.TensorInfo(
        name=name,
        dtype=dtype,
        tensor_shape=shape_proto(dims or [], unknown_rank=dims is None),
    )


def signature_def_map() -> Any:
    defs = get_model_metadata_pb2.SignatureDefMap()
    main = defs.signature_def["serving_default"]
    main.method_name = "tensorflow/serving/predict"
    main.inputs["image"].CopyFrom(tensor_info("image:0", types_pb2.DT_FLOAT, [-1, -1, -1, 2]))
    main.inputs["mask"].CopyFrom(tensor_info("mask:0", types_pb2.DT_UINT16, [-1, -1, -1, 1]))
    main.outputs["doubled"].CopyFrom(tensor_info("mul:0", types_pb2.DT_FLOAT, [-1, -1, -1, 2]))
    main.outputs["label"].CopyFrom(tensor_info("label:0", types_pb2.DT_STRING, [-1]))
    loose = defs.signature_def["any_rank"]
    loose.method_name = "tensorflow/serving/predict"
    loose.inputs["x"].CopyFrom(tensor_info("x:0", types_pb2.DT_DOUBLE, None))
    loose.outputs["y"].CopyFrom(tensor_info("y:0", types_pb2.DT_INT64, []))
    return defs


def metadata_response(version: int) -> Any:
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = MODEL
    response.model_spec.version.value = version
    response.metadata["signature_def"].Pack(signature_def_map())
    return response


def status_response() -> Any:
    failed = status_pb2.StatusProto(
        error_code=error_codes_pb2.NOT_FOUND, error_message="Could not find SavedModel .pb"
    )
    states = get_model_status_pb2.ModelVersionStatus
    return get_model_status_pb2.GetModelStatusResponse(
        model_version_status=[
            states(version=5, state=states.END, status=failed),
            states(version=6, state=states.END, status=status_pb2.StatusProto()),
            states(version=7, state=states.AVAILABLE, status=status_pb2.StatusProto()),
        ]
    )


def samples() -> dict[str, Message]:
    rng = np.random.default_rng(3)
    image = rng.random((1, 4, 4, 2), dtype=np.float32)
    mask = rng.integers(0, 65535, (1, 4, 4, 1)).astype(np.uint16)
    with_version = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=MODEL, signature_name="serving_default"),
        output_filter=["doubled"],
    )
    with_version.model_spec.version.value = 7
    with_version.inputs["image"].CopyFrom(tf.make_tensor_proto(image))
    with_version.inputs["mask"].CopyFrom(tf.make_tensor_proto(mask))
    with_label = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=MODEL, version_label="stable")
    )
    with_label.inputs["image"].CopyFrom(tf.make_tensor_proto(image))
    response = predict_pb2.PredictResponse()
    response.model_spec.name = MODEL
    response.model_spec.version.value = 7
    arrays = {
        "float16": np.arange(6, dtype=np.float16).reshape(2, 3) / 4,
        "float64": rng.random((3, 2)),
        "int8": np.array([-128, 0, 127], np.int8),
        "int32": np.arange(-3, 3, dtype=np.int32),
        "int64": np.array([[2**40, -(2**40)]], np.int64),
        "uint8": np.arange(250, 256, dtype=np.uint8),
        "bool": np.array([True, False, True]),
        "scalar": np.float32(2.5),
    }
    for name, array in arrays.items():
        response.outputs[name].CopyFrom(tf.make_tensor_proto(array))
    response.outputs["float_val"].CopyFrom(
        tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT, tensor_shape=shape_proto([2, 2]), float_val=[1, 2, 3, 4]
        )
    )
    response.outputs["int_val_uint16"].CopyFrom(
        tensor_pb2.TensorProto(
            dtype=types_pb2.DT_UINT16, tensor_shape=shape_proto([3]), int_val=[0, 1, 65535]
        )
    )
    metadata_request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=model_pb2.ModelSpec(name=MODEL), metadata_field=["signature_def"]
    )
    status_request = get_model_status_pb2.GetModelStatusRequest(
        model_spec=model_pb2.ModelSpec(name=MODEL)
    )
    status_request.model_spec.version.value = 6
    return {
        "predict_request_version": with_version,
        "predict_request_label": with_label,
        "predict_response": response,
        "metadata_request": metadata_request,
        "metadata_response": metadata_response(7),
        "status_request": status_request,
        "status_response": status_response(),
    }


# -- describing messages -------------------------------------------------------------------


def arrays_of(message: Message) -> dict[str, dict[str, Any]]:
    """Every tensor in a Predict message, decoded by TensorFlow itself."""
    tensors = getattr(message, "inputs", None) or getattr(message, "outputs", None) or {}
    out = {}
    for name, tensor in tensors.items():
        array = tf.make_ndarray(tensor)
        out[name] = {
            "dtype": array.dtype.str.lstrip("<>|="),
            "shape": list(array.shape),
            "data": b64(
                np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
            ),
        }
    return out


def describe(message: Message) -> dict[str, Any]:
    described: dict[str, Any] = {
        "data": b64(message.SerializeToString(deterministic=True)),
        "unknown_fields": unknown_field_paths(message),
        "arrays": arrays_of(message),
    }
    if isinstance(message, get_model_metadata_pb2.GetModelMetadataResponse):
        entry = message.metadata["signature_def"]
        defs = get_model_metadata_pb2.SignatureDefMap()
        described["any_type_url"] = entry.type_url
        described["any_unpacked"] = entry.Unpack(defs)
        described["signature_def_map"] = as_dict(defs)
        described["signature_def_map_unknown_fields"] = unknown_field_paths(defs)
        spec = model_pb2.ModelSpec()
        spec.CopyFrom(message.model_spec)
        described["model_spec"] = as_dict(spec)
    else:
        described["dict"] = as_dict(message)
    return described


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def answer(command: dict[str, Any]) -> dict[str, Any]:
    if command["op"] == "parse":
        message = TYPES[command["type"]].FromString(base64.b64decode(command["data"]))
        return describe(message)
    if command["op"] == "sample":
        message = samples()[command["name"]]
        return {"type": type(message).__name__, **describe(message)}
    raise ValueError(f"unknown op {command['op']!r}")


def main() -> None:
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.max_receive_message_length", MAX_MESSAGE),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(4), options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ready = {
        "port": port,
        "tensorflow_serving": os.path.dirname(tensorflow_serving.__file__),
        "tensorflow": tf.__version__,
        "kiosk_imported": any(name.split(".")[0] == "kiosk" for name in sys.modules),
    }
    print(json.dumps(ready), file=_protocol)
    for line in sys.stdin:
        try:
            reply = answer(json.loads(line))
        except Exception as error:  # reported to the test, which fails with it
            reply = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(reply), file=_protocol)
    server.stop(grace=None)


if __name__ == "__main__":
    main()
