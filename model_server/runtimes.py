"""Which runtime runs a model version: ONNX Runtime where the version carries an ONNX export of
its own SavedModel, TensorFlow otherwise (or as ``KIOSK_MODEL_RUNTIME`` says).

ONNX Runtime serves the bundled models with the same outputs (to float rounding) in about 0.7x
TensorFlow's memory, answers its first request 0.6 s after it starts instead of 6.5, and infers
in about 0.65x the time on CPUs; TensorFlow is imported only when a version needs it, so a
server whose versions all carry an export never loads it. An export is ``onnx/`` beside
``saved_model.pb``: one graph per signature (``onnx/<signature>.onnx``), the signatures as TF
Serving describes them (``onnx/signatures.pb``) and the digest of the SavedModel it was made
from (``onnx/source.sha256``), written and checked by ``python -m models.training.export_onnx``.
An export whose SavedModel has since changed is stale: ``auto`` then runs TensorFlow. On a GPU
host ``auto`` runs TensorFlow unless ONNX Runtime has CUDA. TF Serving, the cluster's server,
reads the SavedModel and ignores the folder.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import grpc

from kiosk.settings import ModelRuntime
from model_server.errors import ServingError
from model_server.manager import Servable
from model_server.signatures import warm_up

log = logging.getLogger(__name__)

ONNX_DIR = "onnx"
SIGNATURES_FILE = "signatures.pb"
SOURCE_FILE = "source.sha256"
INIT_OP = "__saved_model_init_op"  # a SavedModel's initialiser: listed, never run


def onnx_folder(path: Path) -> Path:
    return path / ONNX_DIR


def saved_model_digest(path: Path) -> str:
    """SHA-256 over a SavedModel's graph and variables (names and bytes): not its export, nor
    hidden files such as the model cache's marker."""
    digest = hashlib.sha256()
    files = [
        p
        for p in path.rglob("*")
        if p.is_file()
        and not any(part == ONNX_DIR or part.startswith(".") for part in p.relative_to(path).parts)
    ]
    for file in sorted(files):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()


def export_state(path: Path) -> str:
    """``current``, ``stale`` (made from another SavedModel) or ``none``."""
    folder = onnx_folder(path)
    if not (folder / SIGNATURES_FILE).is_file():
        return "none"
    source = folder / SOURCE_FILE
    if source.is_file() and source.read_text().strip() == saved_model_digest(path):
        return "current"
    return "stale"


def gpu_without_onnx_cuda() -> bool:
    """A GPU is visible, but ONNX Runtime (CPU build) could not use it."""
    if not any(Path("/dev").glob("nvidia[0-9]*")):
        return False
    import onnxruntime as ort

    return "CUDAExecutionProvider" not in ort.get_available_providers()


def load_servable(path: Path, runtime: ModelRuntime = "auto") -> Servable:
    """Load and warm up one version with the runtime that ``runtime`` picks for it."""
    state = export_state(path) if runtime != "tensorflow" else "none"
    if runtime == "onnx" and state != "current":
        problem = "no ONNX export" if state == "none" else "a stale ONNX export"
        raise ServingError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{path} has {problem} ({ONNX_DIR}/): export it with `python -m "
            f"models.training.export_onnx {path}`, or serve it with KIOSK_MODEL_RUNTIME=auto or "
            "tensorflow",
        )
    use_onnx = state == "current"
    if runtime == "auto":
        if state == "stale":
            log.warning(
                "%s: its ONNX export was made from another SavedModel; using TensorFlow", path
            )
        if use_onnx and gpu_without_onnx_cuda():
            log.info("%s: a GPU is visible and ONNX Runtime has no CUDA; using TensorFlow", path)
            use_onnx = False
    if use_onnx:
        from model_server.onnx_model import OnnxServable

        servable: Servable = OnnxServable(onnx_folder(path))
    else:
        from model_server.model import SavedModelServable  # TensorFlow, only when needed

        servable = SavedModelServable(path)
    warm_up(servable, path)
    return servable
