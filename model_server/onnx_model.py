"""A model version's ONNX export run with ONNX Runtime (see :mod:`.runtimes`)."""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
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
CROWDED_FOR = 2.0
"""Seconds requests run on one thread each after two ran at once (see :class:`OnnxServable`)."""
clock = time.monotonic


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
    """A loaded export: the SavedModel's signatures, each one an ONNX session.

    On a CPU each signature has two sessions: a *wide* one whose inference spreads over every
    core, the lowest latency a lone image can get, and a *narrow* one on the calling thread
    alone. Requests run narrow while the version is crowded: from a request that found another
    running (the model server runs :attr:`parallel_runs` side by side) until
    :data:`CROWDED_FOR` seconds later. Consumers that keep the cores busy then get more images
    through: an inference on one thread costs 12 % less CPU than on two, and the consumers
    post-process on the core it leaves them. Every session of the process draws its buffers
    from one arena (:func:`shared_arena`): an arena per session keeps each one's largest
    request, 200 MiB more per session after one megapixel.
    """

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
        chosen = providers()

        def sessions(threads: int) -> dict[str, ort.InferenceSession]:
            options = session_options(threads)
            return {
                name: ort.InferenceSession(str(folder / f"{name}.onnx"), options, providers=chosen)
                for name in wanted
            }

        self._wide = sessions(0)
        on_cpu = chosen[0] == "CPUExecutionProvider" and len(os.sched_getaffinity(0)) > 1
        self._narrow = sessions(1) if on_cpu else self._wide
        self.parallel_runs = 2 if on_cpu else 1
        self._outputs = {
            name: [o.name for o in session.get_outputs()] for name, session in self._wide.items()
        }
        self._running = 0
        self._crowded_until = 0.0  # monotonic time until which requests run narrow
        self._lock = threading.Lock()
        self.runnable = frozenset(self._wide)
        log.info("%s: ONNX Runtime %s on %s", folder, ort.__version__, ", ".join(chosen))

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self._outputs[signature]
        with self._lock:
            now = clock()
            if self._running:
                self._crowded_until = now + CROWDED_FOR
            wide = now >= self._crowded_until
            self._running += 1
        session = (self._wide if wide else self._narrow)[signature]
        try:
            values = session.run(names, inputs)
        except Exception as exc:
            raise serving_error(exc, f"signature {signature}") from None
        finally:
            with self._lock:
                self._running -= 1
        return dict(zip(names, values, strict=True))


@functools.cache
def shared_arena() -> None:
    """Register one CPU arena for every session of this process that asks for it (once)."""
    memory = ort.OrtMemoryInfo(
        "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
    )
    ort.create_and_register_allocator(memory, None)


def session_options(threads: int) -> ort.SessionOptions:
    """Options for one session: ``threads`` for an inference (0: ONNX Runtime's choice, one
    per core), buffers from the process's :func:`shared_arena`."""
    shared_arena()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.use_env_allocators", "1")
    # Memory patterns plan each input shape's buffers ahead and keep them: with images of
    # every size, a megapixel request held 800 MiB; without, 490 MiB, 3-6 % slower.
    options.enable_mem_pattern = False
    # Idle inference threads sleep instead of spinning: spinning took the CPU consumers
    # post-process on, and a 100-image zip through kiosk up took 11.3 s instead of 8.9.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options
