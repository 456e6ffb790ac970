"""Export a SavedModel version for ONNX Runtime: ``onnx/`` beside its ``saved_model.pb``.

Why: the embedded model server runs an exported version with ONNX Runtime, in about 0.7x
TensorFlow's memory and with a start in a tenth of the time (see ``model_server.runtimes``).
Each signature is converted with tf2onnx (its command line, one process a signature, opset
17) into ``onnx/<signature>.onnx``; the signatures are written as TF Serving describes them
into ``onnx/signatures.pb``, so metadata answers alike from either runtime, and the digest of
the SavedModel into ``onnx/source.sha256``, so an export outlived by its model is never served.
Before the folder is put in place, both runtimes run every signature on the same random input:
the outputs must have the same names, dtypes and shapes, be finite, and agree to
``--tolerance`` of the largest expected value (1e-2 for float16 outputs). An export that would
change labels, or that lacks a signature tf2onnx could not convert, is refused.

    .venv/bin/python -m models.training.export_onnx models/NuclearSegmentation/1 ...
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from kiosk.serving.protos import tfserving_pb2 as pb
from kiosk.serving.tensors import numpy_dtype
from model_server.runtimes import (
    INIT_OP,
    ONNX_DIR,
    SIGNATURES_FILE,
    SOURCE_FILE,
    saved_model_digest,
)
from model_server.signatures import expected_shape

OPSET = 17
CHECK_SIDE = 128  # the open spatial dims of the check input
TOLERANCE = 1e-4
HALF_TOLERANCE = 1e-2


def check_inputs(signature: pb.SignatureDef, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random inputs that fit the signature (one item, CHECK_SIDE for other open dims)."""
    arrays = {}
    for name, info in signature.inputs.items():
        shape = expected_shape(info)
        if shape is None:
            raise ValueError(f"input {name!r} has an unknown rank: no check input for it")
        dims = [(1 if axis == 0 else CHECK_SIDE) if n == -1 else n for axis, n in enumerate(shape)]
        arrays[name] = rng.random(dims, dtype=np.float32).astype(numpy_dtype(info.dtype))
    return arrays


def convert(version: Path, signature: str, out: Path) -> str | None:
    """tf2onnx on one signature; None on success, else what it said last."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tf2onnx.convert",
            "--saved-model",
            str(version),
            "--signature_def",
            signature,
            "--opset",
            str(OPSET),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    if done.returncode == 0 and out.is_file():
        return None
    return (done.stderr.strip().splitlines() or ["no output"])[-1]


def disagreement(expected: np.ndarray, got: np.ndarray) -> float:
    """Largest difference relative to the largest expected value (at least 1e-3); inf when
    either side holds a value that is not finite, or the shapes differ."""
    if expected.shape != got.shape:
        return float("inf")
    want, have = expected.astype(np.float64), got.astype(np.float64)
    if not (np.isfinite(want).all() and np.isfinite(have).all()):
        return float("inf")
    if want.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(want))), 1e-3)
    return float(np.max(np.abs(want - have))) / scale


def mismatch(want: dict[str, np.ndarray], got: dict[str, np.ndarray], tolerance: float) -> str:
    """What differs between two runtimes' outputs of one signature ("" for nothing)."""
    if set(want) != set(got):
        return f"outputs {sorted(got)} instead of {sorted(want)}"
    for name, value in want.items():
        if got[name].dtype != value.dtype:
            return f"output {name} is {got[name].dtype}, not {value.dtype}"
        limit = HALF_TOLERANCE if value.dtype == np.float16 else tolerance
        off = disagreement(value, got[name])
        if not off <= limit:
            return f"output {name} differs by {off:.2g} of its largest value (limit {limit:g})"
    return ""


def export(version: Path, tolerance: float, seed: int = 0) -> list[str]:
    """Write ``version/onnx``; the signatures exported."""
    from model_server.model import SavedModelServable
    from model_server.onnx_model import OnnxServable

    saved = SavedModelServable(version)
    with tempfile.TemporaryDirectory(dir=version.parent) as tmp:
        folder = Path(tmp) / ONNX_DIR
        folder.mkdir()
        exported = sorted(saved.runnable)
        for name in exported:
            problem = convert(version, name, folder / f"{name}.onnx")
            if problem:
                raise SystemExit(f"{version}: signature {name} cannot be exported: {problem}")
        defs = pb.SignatureDefMap()
        for name, signature in saved.signature_defs.items():
            if name in saved.runnable or name == INIT_OP:
                defs.signature_def[name].CopyFrom(signature)
        (folder / SIGNATURES_FILE).write_bytes(defs.SerializeToString(deterministic=True))
        (folder / SOURCE_FILE).write_text(saved_model_digest(version) + "\n")
        onnx = OnnxServable(folder)
        rng = np.random.default_rng(seed)
        for name in exported:
            inputs = check_inputs(saved.signature_defs[name], rng)
            problem = mismatch(saved.run(name, inputs), onnx.run(name, inputs), tolerance)
            if problem:
                raise SystemExit(f"{version}: signature {name}: ONNX Runtime's {problem}")
            print(f"{version}: {name} exported and checked", file=sys.stderr)
        target = version / ONNX_DIR
        old = Path(tmp) / "previous"
        if target.exists():
            target.rename(old)  # aside, then the new one in: never a half-written folder
        folder.rename(target)
    return exported


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="+", type=Path, help="SavedModel version folders")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for version in args.versions:
        export(version, args.tolerance)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
