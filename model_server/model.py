"""A SavedModel version loaded with TensorFlow: the one module of Kiosk that imports it.

Signatures are read from ``saved_model.pb`` itself and re-parsed into Kiosk's wire-compatible
messages, so GetModelMetadata answers exactly what TF Serving would (tensor names, dtypes,
-1 for unknown dims, every signature including ``__saved_model_init_op``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import saved_model_pb2

from kiosk.serving.protos import tfserving_pb2 as pb
from model_server.errors import ServingError

log = logging.getLogger(__name__)

SERVE_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"


def log_devices() -> None:
    """Say which devices TensorFlow will run on (a GPU is used whenever one is visible)."""
    devices = tf.config.list_physical_devices()
    log.info(
        "TensorFlow %s sees %s",
        tf.__version__,
        ", ".join(f"{d.device_type} {d.name}" for d in devices) or "no devices",
    )
    if not tf.config.list_physical_devices("GPU"):
        log.info("no GPU visible: inference runs on the CPU")


def read_signature_defs(path: Path) -> dict[str, pb.SignatureDef]:
    """The ``serve`` meta graph's signatures, as Kiosk's SignatureDef messages."""
    saved = saved_model_pb2.SavedModel()
    binary = path / "saved_model.pb"
    try:
        if binary.is_file():
            saved.ParseFromString(binary.read_bytes())
        else:
            text_format.Parse((path / "saved_model.pbtxt").read_text(), saved)
    except (DecodeError, text_format.ParseError, UnicodeDecodeError) as exc:
        raise ServingError(
            grpc.StatusCode.DATA_LOSS, f"{path} does not hold a readable SavedModel: {exc}"
        ) from None
    for graph in saved.meta_graphs:
        if SERVE_TAG in graph.meta_info_def.tags or len(saved.meta_graphs) == 1:
            return {
                key: pb.SignatureDef.FromString(sig.SerializeToString())
                for key, sig in graph.signature_def.items()
            }
    raise ValueError(f"{path} has no meta graph tagged {SERVE_TAG!r}")


class SavedModelServable:
    """A loaded version: its signatures and a way to run them on numpy arrays."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.signature_defs = read_signature_defs(path)
        self._module = tf.saved_model.load(str(path), tags=[SERVE_TAG])
        self._functions = dict(self._module.signatures)
        self.runnable = frozenset(k for k in self._functions if k in self.signature_defs)
        if not self.runnable:
            raise ValueError(f"{path} has no signatures to serve")
        self.parallel_runs = 1  # TensorFlow spreads one inference over its own thread pools

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._functions[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        return {name: value.numpy() for name, value in outputs.items()}
