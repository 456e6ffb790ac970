"""Which runtime runs a model version: ONNX Runtime where the version carries an ONNX export,
TensorFlow otherwise (or as ``KIOSK_MODEL_RUNTIME`` says).

ONNX Runtime serves the bundled models with the same outputs (to float rounding) in about a
third of TensorFlow's memory, starts in a fraction of a second instead of six, and infers
faster on CPUs; TensorFlow is imported only when a version needs it, so a server whose versions
all carry an export never loads it. An export is ``onnx/`` beside ``saved_model.pb``: one graph
per signature (``onnx/<signature>.onnx``) and the signatures as TF Serving describes them
(``onnx/signatures.pb``), written and checked by ``python -m models.training.export_onnx``.
TF Serving, the cluster's server, reads the SavedModel and ignores the folder.
"""

from __future__ import annotations

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


def onnx_folder(path: Path) -> Path:
    return path / ONNX_DIR


def has_onnx(path: Path) -> bool:
    """Whether a version directory carries an ONNX export."""
    return (onnx_folder(path) / SIGNATURES_FILE).is_file()


def load_servable(path: Path, runtime: ModelRuntime = "auto") -> Servable:
    """Load and warm up one version with the runtime that ``runtime`` picks for it."""
    if runtime == "onnx" or (runtime == "auto" and has_onnx(path)):
        if not has_onnx(path):
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{path} has no ONNX export ({ONNX_DIR}/{SIGNATURES_FILE}): export it with "
                f"`python -m models.training.export_onnx {path}`, or serve it with "
                "KIOSK_MODEL_RUNTIME=auto or tensorflow",
            )
        from model_server.onnx_model import OnnxServable

        servable: Servable = OnnxServable(onnx_folder(path))
    else:
        from model_server.model import SavedModelServable  # TensorFlow, only when needed

        servable = SavedModelServable(path)
    warm_up(servable, path)
    return servable
