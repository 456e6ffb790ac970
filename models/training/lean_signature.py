"""Give a deep-watershed SavedModel its lean signature: float16 in, float16 heads out, the
foreground as one channel.

Why: a megapixel's float32 input is 4 MiB and its four float32 output channels 16 MiB, while
the model's own work on a CPU takes about as long as moving those bytes. The ``lean`` signature
(the contract's ``lean_signature``) takes the normalised image as float16 and gives each head
as float16, with the foreground softmax's one channel that post-processing reads: 2 MiB in and
6 MiB out. The casts run inside the graph, so the official TF Serving serves it unchanged.
``serving_default`` stays exactly as it was, for clients that want float32.

Run on the committed models (idempotent: a model that has the signature is rewritten the same):

    .venv/bin/python -m models.training.lean_signature models/NuclearSegmentation/1 ...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from consumers.processing.contract import ModelContract
from consumers.segmentation import BUNDLED_CONTRACTS

DEFAULT = "serving_default"
CARD_LINE = (
    "- TF Serving SavedModel in `1/`, signatures `serving_default` (float32) and `lean` "
    "(float16 in and out, one foreground channel)."
)
"""What a model card says of the signatures."""
CONTRACTS_BY_NAME = {c.name: c for c in BUNDLED_CONTRACTS}


def add_lean_signature(path: Path, contract: ModelContract) -> None:
    """Rewrite the SavedModel at ``path`` with ``serving_default`` and the contract's lean
    signature (the variables are the same; only the graph gains a function)."""
    import tensorflow as tf

    if contract.lean_signature is None:
        raise ValueError(f"the contract of {contract.name} declares no lean signature")
    module = tf.saved_model.load(str(path))
    default = module.signatures[DEFAULT]
    foregrounds = {c.heads.foreground: c.heads.foreground_channel for c in contract.compartments}

    @tf.function(
        input_signature=[
            tf.TensorSpec(
                shape=(None, None, None, contract.input_channels),
                dtype=tf.float16,
                name=contract.input,
            )
        ]
    )
    def lean(image: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = default(**{contract.input: tf.cast(image, tf.float32)})
        lean_outputs = {}
        for name in contract.output_names:
            value = outputs[name]
            if name in foregrounds:
                channel = foregrounds[name]
                value = value[..., channel : channel + 1]
            lean_outputs[name] = tf.identity(tf.cast(value, tf.float16), name=name)
        return lean_outputs

    module.lean = lean  # tracked, so it is saved with the module
    signatures = {DEFAULT: default, contract.lean_signature: lean.get_concrete_function()}
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        staged = Path(scratch) / path.name
        tf.saved_model.save(module, str(staged), signatures=signatures)
        check_lean_signature(staged, contract)
        shutil.rmtree(path)
        shutil.move(str(staged), str(path))


def check_lean_signature(path: Path, contract: ModelContract) -> None:
    """The rewritten model gives the old one's maps, to float16 rounding."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    image = np.random.default_rng(0).random((1, 64, 48, contract.input_channels), np.float32)
    full = {k: v.numpy() for k, v in loaded.signatures[DEFAULT](tf.constant(image)).items()}
    lean_sig = loaded.signatures[contract.lean_signature]
    lean = {k: v.numpy() for k, v in lean_sig(tf.constant(image.astype(np.float16))).items()}
    expected = contract.foreground_only(full)
    if set(lean) != set(expected):
        raise AssertionError(f"lean outputs {sorted(lean)}, expected {sorted(expected)}")
    for name, value in expected.items():
        if lean[name].dtype != np.float16 or lean[name].shape != value.shape:
            raise AssertionError(f"lean {name}: {lean[name].dtype} {lean[name].shape}")
        if np.abs(lean[name].astype(np.float32) - value).max() > 0.02:
            raise AssertionError(f"lean {name} differs from serving_default's")


def _record(path: Path, contract: ModelContract) -> None:
    """Update the signatures and size in the model's training.json, where it has one."""
    from models.training.fit import saved_model_bytes
    from models.training.model import check_signature

    report_path = path.parent / "training.json"
    if not report_path.is_file():
        return
    report = json.loads(report_path.read_text())
    report["signature"] = {"name": DEFAULT, **check_signature(path, contract)}
    report["saved_model_bytes"] = saved_model_bytes(path)
    report_path.write_text(json.dumps(report, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="SavedModel version folders")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for path in args.paths:
        name = path.resolve().parent.name
        if name not in CONTRACTS_BY_NAME:
            parser.error(f"{path}: {name} is not a bundled deep-watershed model")
        contract = CONTRACTS_BY_NAME[name]
        add_lean_signature(path, contract)
        _record(path, contract)
        print(f"{path}: serving_default and {contract.lean_signature}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
