"""Tensor encoding on the wire: tensor_content (Kiosk) against float_val (the original kiosk).

A float32 image (1024x1024 by default) goes to an echo model server over a real local gRPC channel
(a grpc.server in this process with its own thread pool, and Kiosk's shared client channel),
encoded each way. The server decodes the request to numpy and answers in the encoding it received,
as a model server does. Per encoding:

* encode: numpy -> PredictRequest -> bytes (what a client does before the socket);
* decode: bytes -> PredictResponse -> numpy (what it does after);
* wire: request bytes;
* round trip: encode, call, decode.

Rounds alternate the two encodings so that drift in the machine hits both alike; figures are
medians (min-max), and ratios are float_val / tensor_content from the same run.

    python -m benchmark.tensor_encoding [--size 1024] [--rounds 10]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np

from benchmark.report import median, save, table
from kiosk.serving import methods
from kiosk.serving.client import (
    ServingClient,
    build_predict_request,
    channel_options,
    close_channels,
    get_channel,
)
from kiosk.serving.protos import tfserving_pb2 as pb
from kiosk.serving.tensors import to_ndarray, to_tensor_proto

MODEL = "echo"
LIMIT = 512 * 1024**2


def float_val_request(array: np.ndarray) -> pb.PredictRequest:
    """The original kiosk's encoding: one float_val entry per pixel."""
    request = pb.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "serving_default"
    proto = request.inputs["image"]
    proto.dtype = pb.DT_FLOAT
    proto.tensor_shape.dim.extend(pb.TensorShapeProto.Dim(size=n) for n in array.shape)
    proto.float_val.extend(array.ravel())
    return request


def tensor_content_request(array: np.ndarray) -> pb.PredictRequest:
    """Kiosk's encoding, built by the client's own request builder."""
    return build_predict_request(MODEL, {"image": array})


ENCODINGS: dict[str, Callable[[np.ndarray], pb.PredictRequest]] = {
    "tensor_content": tensor_content_request,
    "float_val": float_val_request,
}


def echo(request: pb.PredictRequest, context: object = None) -> pb.PredictResponse:
    """Decode the input and answer it in the encoding it came in."""
    sent = request.inputs["image"]
    array = to_ndarray(sent)
    response = pb.PredictResponse()
    response.model_spec.name = MODEL
    response.model_spec.version.value = 1
    if sent.tensor_content:
        to_tensor_proto(array, response.outputs["image"])
    else:
        out = response.outputs["image"]
        out.dtype = pb.DT_FLOAT
        out.tensor_shape.CopyFrom(sent.tensor_shape)
        out.float_val.extend(array.ravel())
    return response


def start_server() -> tuple[grpc.Server, str]:
    server = grpc.server(
        ThreadPoolExecutor(4),
        options=[
            ("grpc.max_send_message_length", LIMIT),
            ("grpc.max_receive_message_length", LIMIT),
        ],
    )
    handler = grpc.unary_unary_rpc_method_handler(
        echo,
        request_deserializer=pb.PredictRequest.FromString,
        response_serializer=pb.PredictResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(methods.PREDICTION_SERVICE, {"Predict": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def measure(
    encode: Callable[[np.ndarray], pb.PredictRequest], array: np.ndarray, call: Callable
) -> dict[str, float]:
    started = time.perf_counter()
    data = encode(array).SerializeToString()
    encode_s = time.perf_counter() - started

    reply = echo(pb.PredictRequest.FromString(data)).SerializeToString()
    started = time.perf_counter()
    decoded = to_ndarray(pb.PredictResponse.FromString(reply).outputs["image"])
    decode_s = time.perf_counter() - started
    assert np.array_equal(decoded, array)

    started = time.perf_counter()
    response = call(encode(array), timeout=120)
    result = to_ndarray(response.outputs["image"])
    round_trip_s = time.perf_counter() - started
    assert np.array_equal(result, array)
    return {
        "encode_ms": encode_s * 1000,
        "decode_ms": decode_s * 1000,
        "round_trip_ms": round_trip_s * 1000,
        "request_bytes": float(len(data)),
        "response_bytes": float(len(reply)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()

    array = np.random.default_rng(0).random((1, args.size, args.size, 1), dtype=np.float32)
    server, target = start_server()
    try:
        channel = get_channel(target, channel_options(LIMIT))
        call = channel.unary_unary(
            methods.PREDICT,
            request_serializer=pb.PredictRequest.SerializeToString,
            response_deserializer=pb.PredictResponse.FromString,
        )
        client = ServingClient(target, max_message_bytes=LIMIT, retries=0, cold_start_wait=0)
        for encode in ENCODINGS.values():  # warm up: connection, allocator, code paths
            measure(encode, array, call)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in ENCODINGS}
        predict_ms: list[float] = []
        for _ in range(args.rounds):
            for name, encode in ENCODINGS.items():
                runs[name].append(measure(encode, array, call))
            started = time.perf_counter()
            client.predict(MODEL, {"image": array})
            predict_ms.append((time.perf_counter() - started) * 1000)
    finally:
        close_channels()
        server.stop(grace=None)

    results: dict[str, dict[str, float]] = {
        name: {metric: median([r[metric] for r in rounds]) for metric in rounds[0]}
        for name, rounds in runs.items()
    }
    results["tensor_content"]["client_predict_ms"] = median(predict_ms)
    ranges = {
        name: {
            metric: [min(r[metric] for r in rounds), max(r[metric] for r in rounds)]
            for metric in rounds[0]
        }
        for name, rounds in runs.items()
    }
    ratio = {
        metric: results["float_val"][metric] / results["tensor_content"][metric]
        for metric in runs["float_val"][0]
    }

    rows = [["measure", "tensor_content", "float_val", "float_val / tensor_content"]]
    for metric, value in ratio.items():
        unit = "" if metric.endswith("bytes") else " ms"
        fmt = "{:,.0f}" if metric.endswith("bytes") else "{:,.2f}"
        rows.append(
            [
                metric.removesuffix("_ms"),
                *(
                    fmt.format(results[name][metric])
                    + unit
                    + (
                        ""
                        if metric.endswith("bytes")
                        else " (" + "-".join(fmt.format(v) for v in ranges[name][metric]) + ")"
                    )
                    for name in ("tensor_content", "float_val")
                ),
                f"{value:.2f}",
            ]
        )
    print(f"{args.size}x{args.size} float32 ({array.nbytes:,} bytes), {args.rounds} rounds")
    print(table(rows))
    print(f"ServingClient.predict round trip: {median(predict_ms):,.2f} ms")
    path = save(
        "tensor_encoding",
        {
            "shape": list(array.shape),
            "tensor_bytes": array.nbytes,
            "rounds": args.rounds,
            "results": results,
            "min_max": ranges,
            "ratio_float_val_over_tensor_content": ratio,
        },
    )
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
