"""Export a SavedModel version for ONNX Runtime: ``onnx/`` beside its ``saved_model.pb``.

Why: the embedded model server runs an exported version with ONNX Runtime, in about a third of
TensorFlow's memory and with a start in a fraction of a second (see ``model_server.runtimes``).
Each signature is converted with tf2onnx (its command line, one process a signature, opset
17) into ``onnx/<signature>.onnx``, and the signatures are written as TF Serving describes
them into ``onnx/signatures.pb``, so metadata answers alike from either runtime. Before the
folder is put in place, both runtimes run every signature on the same random input and must
agree to ``--tolerance`` (relative to the output's range; float16 outputs get 1e-2): an export
that would change labels is refused. A signature tf2onnx cannot convert is left out (the
version then serves it with TensorFlow only under ``KIOSK_MODEL_RUNTIME=tensorflow``) and said.

    .venv/bin/python -m models.training.export_onnx models/NuclearSegmentation/1 ...
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from kiosk.serving.protos import tfserving_pb2 as pb
from kiosk.serving.tensors import numpy_dtype
from model_server.runtimes import ONNX_DIR, SIGNATURES_FILE
from model_server.signatures import expected_shape

OPSET = 17
CHECK_SIDE = 128  # the open spatial dims of the check input
TOLERANCE = 1e-4
HALF_TOLERANCE = 1e-2
INIT_OP = "__saved_model_init_op"


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
    """Largest difference, relative to the expected output's range."""
    expected = expected.astype(np.float64)
    span = float(np.ptp(expected)) or 1.0
    return float(np.max(np.abs(expected - got.astype(np.float64)))) / span


def export(version: Path, tolerance: float, seed: int = 0) -> list[str]:
    """Write ``version/onnx``; the signatures exported."""
    from model_server.model import SavedModelServable
    from model_server.onnx_model import OnnxServable

    saved = SavedModelServable(version)
    with tempfile.TemporaryDirectory(dir=version.parent) as tmp:
        folder = Path(tmp) / ONNX_DIR
        folder.mkdir()
        exported = []
        for name in sorted(saved.runnable):
            problem = convert(version, name, folder / f"{name}.onnx")
            if problem:
                print(f"{version}: signature {name} not exported: {problem}", file=sys.stderr)
                continue
            exported.append(name)
        if not exported:
            raise SystemExit(f"{version}: no signature could be exported")
        defs = pb.SignatureDefMap()
        for name, signature in saved.signature_defs.items():
            if name in exported or name == INIT_OP:
                defs.signature_def[name].CopyFrom(signature)
        (folder / SIGNATURES_FILE).write_bytes(defs.SerializeToString(deterministic=True))
        onnx = OnnxServable(folder)
        rng = np.random.default_rng(seed)
        for name in exported:
            inputs = check_inputs(saved.signature_defs[name], rng)
            want, got = saved.run(name, inputs), onnx.run(name, inputs)
            for output, value in want.items():
                limit = HALF_TOLERANCE if value.dtype == np.float16 else tolerance
                off = disagreement(value, got[output])
                if got[output].shape != value.shape or off > limit:
                    raise SystemExit(
                        f"{version}: signature {name}, output {output}: ONNX Runtime differs "
                        f"from TensorFlow by {off:.2g} of its range (limit {limit:g}); not "
                        "exported"
                    )
            print(f"{version}: {name} exported and checked", file=sys.stderr)
        target = version / ONNX_DIR
        if target.exists():
            shutil.rmtree(target)
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
