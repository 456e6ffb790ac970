"""Requests checked against a SignatureDef, before any tensor reaches TensorFlow.

Every refusal is INVALID_ARGUMENT naming the input, what the signature expects and what came,
so a client with a wrong channel count or dtype learns what to send instead of reading a
TensorFlow stack trace. Also decides whether a request can share a batch, and builds the
zeros a freshly loaded version is warmed up with.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np

from kiosk.serving.protos import tfserving_pb2 as pb
from kiosk.serving.tensors import numpy_dtype, shape_of, to_ndarray
from model_server.errors import ServingError

if TYPE_CHECKING:
    from model_server.manager import Servable

log = logging.getLogger(__name__)

WARMUP_SIZE = 64  # an unknown dimension in the warm-up input (1 for the batch dimension)

Shape = tuple[int, ...] | None  # None: unknown rank


def expected_shape(info: pb.TensorInfo) -> Shape:
    """The signature's shape for a tensor, -1 for unknown dims, None for unknown rank."""
    if info.tensor_shape.unknown_rank:
        return None
    return shape_of(info.tensor_shape)


def describe(dtype: int, shape: Shape) -> str:
    name = pb.DataType.Name(dtype) if dtype in pb.DataType.values() else f"dtype {dtype}"
    dims = "unknown rank" if shape is None else f"shape [{', '.join(map(str, shape))}]"
    return f"{name} {dims}"


def _fits(expected: Shape, got: tuple[int, ...]) -> bool:
    if expected is None:
        return True
    return len(expected) == len(got) and all(
        e in (-1, g) for e, g in zip(expected, got, strict=True)
    )


def check_inputs(
    signature: pb.SignatureDef, inputs: Mapping[str, pb.TensorProto], where: str
) -> dict[str, np.ndarray]:
    """Decoded inputs when they match the signature; INVALID_ARGUMENT naming what does not."""
    wanted = sorted(signature.inputs)
    missing = [name for name in wanted if name not in inputs]
    unknown = sorted(name for name in inputs if name not in signature.inputs)
    if missing or unknown:
        problems = []
        if missing:
            problems.append(f"missing {', '.join(map(repr, missing))}")
        if unknown:
            problems.append(f"unknown {', '.join(map(repr, unknown))}")
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{where} takes inputs {', '.join(map(repr, wanted))}: {'; '.join(problems)}",
        )
    arrays = {}
    for name in wanted:
        info, proto = signature.inputs[name], inputs[name]
        expected = expected_shape(info)
        got = shape_of(proto.tensor_shape)
        if proto.dtype != info.dtype or not _fits(expected, got):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input {name!r} of {where}: expected {describe(info.dtype, expected)}, "
                f"got {describe(proto.dtype, got)}",
            )
        try:
            arrays[name] = to_ndarray(proto)
        except ValueError as exc:  # UnsupportedTensor is a ValueError too
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"input {name!r} of {where}: {exc}"
            ) from None
    return arrays


def check_output_filter(signature: pb.SignatureDef, names: Iterable[str], where: str) -> list[str]:
    """The outputs to send back: all of them, or those named in ``output_filter``."""
    chosen = list(dict.fromkeys(names))
    unknown = [name for name in chosen if name not in signature.outputs]
    if unknown:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"output_filter names {', '.join(map(repr, unknown))}, which {where} does not have; "
            f"its outputs are {', '.join(map(repr, sorted(signature.outputs)))}",
        )
    return chosen or sorted(signature.outputs)


def batch_items(signature: pb.SignatureDef, arrays: Mapping[str, np.ndarray]) -> int | None:
    """Items in a request that may share a batch along axis 0; None when it must run alone.

    Batching is safe only when every input's first dimension is the signature's open batch
    dimension and all inputs agree on its size.
    """
    sizes = set()
    for name, array in arrays.items():
        expected = expected_shape(signature.inputs[name])
        if expected is None or not expected or expected[0] != -1 or array.ndim == 0:
            return None
        sizes.add(array.shape[0])
    if len(sizes) != 1:
        return None
    items = sizes.pop()
    return items if items > 0 else None


def warmup_inputs(signature: pb.SignatureDef) -> dict[str, np.ndarray] | None:
    """Zeros that fit the signature (one item, 64 for other open dims); None if none can."""
    arrays = {}
    for name, info in signature.inputs.items():
        shape = expected_shape(info)
        if shape is None:
            return None
        try:
            dtype = numpy_dtype(info.dtype)
        except ValueError:
            return None
        dims = [(1 if axis == 0 else WARMUP_SIZE) if n == -1 else n for axis, n in enumerate(shape)]
        arrays[name] = np.zeros(dims, dtype=dtype)
    return arrays


def warm_up(servable: Servable, path: Path) -> None:
    """Run every signature once on zeros: a signature's first call traces and optimises its
    graph (a tenth of a second for the bundled models in TensorFlow), which no request should
    wait for, the lean signature's included."""
    warmed = []
    for name in sorted(servable.runnable):
        inputs = warmup_inputs(servable.signature_defs[name])
        if inputs is None:
            log.info("%s: no warm-up for signature %s (unknown rank or dtype)", path, name)
            continue
        try:
            servable.run(name, inputs)
            warmed.append(name)
        except Exception as exc:
            # Zeros of a guessed size may not suit every model (e.g. sizes that must be a
            # multiple of 128); real requests can still succeed, so this does not fail the load.
            message = getattr(exc, "message", None) or str(exc)
            log.warning("%s: warm-up of %s on zeros failed: %s", path, name, message)
    if warmed:
        log.info("%s: warmed up signatures %s", path, ", ".join(warmed))
