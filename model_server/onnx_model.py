"""A model version's ONNX export run with ONNX Runtime (see :mod:`.runtimes`)."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

from kiosk.serving.protos import tfserving_pb2 as pb
from model_server.errors import ServingError
from model_server.runtimes import INIT_OP, SIGNATURES_FILE

log = logging.getLogger(__name__)

# ONNX Runtime's errors as the gRPC status TensorFlow's would carry: a request the graph cannot
# take is the caller's to fix; an allocation that failed is worth a retry (the client retries
# RESOURCE_EXHAUSTED); anything else is the server's.
_INPUT_ERRORS = ("InvalidArgument", "Fail", "InvalidGraph")
_MEMORY_WORDS = ("bad_alloc", "bad allocation", "Failed to allocate")


def providers() -> list[str]:
    """CUDA first where this ONNX Runtime build has it, then the CPU; nothing else (TensorRT
    would rebuild its engine for every new image size)."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def serving_error(exc: Exception, where: str) -> ServingError:
    message = str(exc) or type(exc).__name__
    if any(word in message for word in _MEMORY_WORDS):
        code = grpc.StatusCode.RESOURCE_EXHAUSTED
    elif type(exc).__name__ in _INPUT_ERRORS:
        code = grpc.StatusCode.INVALID_ARGUMENT
    else:
        code = grpc.StatusCode.INTERNAL
    return ServingError(code, f"{where}: {message}")


class OnnxServable:
    """A loaded export: the SavedModel's signatures, each one an ONNX session."""

    def __init__(self, folder: Path) -> None:
        self.path = folder
        defs = pb.SignatureDefMap.FromString((folder / SIGNATURES_FILE).read_bytes())
        self.signature_defs = {name: defs.signature_def[name] for name in defs.signature_def}
        wanted = sorted(name for name in self.signature_defs if name != INIT_OP)
        missing = [name for name in wanted if not (folder / f"{name}.onnx").is_file()]
        if missing or not wanted:
            raise ValueError(
                f"{folder} lacks the graphs of signature(s) {', '.join(missing) or '(none)'}: "
                "a partial export (export the version again)"
            )
        options = ort.SessionOptions()
        # Memory patterns plan each input shape's buffers ahead and keep them: with images of
        # every size, a megapixel request held 800 MiB; without, 490 MiB, 3-6 % slower.
        options.enable_mem_pattern = False
        # Idle inference threads sleep instead of spinning: spinning took the CPU consumers
        # post-process on, and a 100-image zip through kiosk up took 11.3 s instead of 8.9.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        chosen = providers()
        self._sessions = {
            name: ort.InferenceSession(str(folder / f"{name}.onnx"), options, providers=chosen)
            for name in wanted
        }
        self._outputs = {
            name: [o.name for o in session.get_outputs()]
            for name, session in self._sessions.items()
        }
        self.runnable = frozenset(self._sessions)
        log.info("%s: ONNX Runtime %s on %s", folder, ort.__version__, ", ".join(chosen))

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self._outputs[signature]
        try:
            values = self._sessions[signature].run(names, inputs)
        except Exception as exc:
            raise serving_error(exc, f"signature {signature}") from None
        return dict(zip(names, values, strict=True))
