"""Tiny SavedModels for model-server tests, in TF Serving layout.

``python -m tests.support.tiny_models DIR`` builds them in a child process, so the test process
itself never imports TensorFlow:

* ``DIR/models/Tiny/{1,2}``: ``y = 2 * image + version`` and ``total = sum(image)`` per item,
  signature ``serving_default`` plus ``double`` (``y = 2 * image``); ``DIR/models/Tiny/tmp`` is a
  non-numeric folder the server must ignore.
* ``DIR/models/Keras/1``: a Keras 3 1x1 conv exported with ``model.export`` (``3 * image + 0.5``
  on each of 2 channels), as the bundled models are exported.
* ``DIR/models/Growing/1`` (a Tiny), and ``DIR/spare/Growing-2`` (a Tiny) and
  ``DIR/spare/Growing-3`` (broken) to copy in while the server runs.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

KERAS_SCALE, KERAS_BIAS, KERAS_CHANNELS = 3.0, 0.5, 2


def save_tiny(path: Path, version: int) -> None:
    """``y = 2 * image + version`` over [batch, y, x, 1] float32."""
    import tensorflow as tf

    class Tiny(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.offset = tf.Variable(float(version))

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32)])
        def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": 2.0 * image + self.offset, "total": tf.reduce_sum(image, axis=[1, 2, 3])}

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32)])
        def double(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": 2.0 * image}

    module = Tiny()
    tf.saved_model.save(
        module, str(path), signatures={"serving_default": module.serve, "double": module.double}
    )


def save_keras(path: Path) -> None:
    """A Keras 3 functional model saved the way the bundled models are: ``model.export``."""
    import keras

    image = keras.Input((None, None, 1), name="image")
    conv = keras.layers.Conv2D(
        KERAS_CHANNELS,
        1,
        kernel_initializer=keras.initializers.Constant(KERAS_SCALE),
        bias_initializer=keras.initializers.Constant(KERAS_BIAS),
    )
    keras.Model(image, conv(image)).export(str(path), verbose=False)


def write_broken(path: Path) -> None:
    """A version folder TensorFlow cannot load."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "saved_model.pb").write_bytes(b"this is not a SavedModel")


def build(root: Path) -> None:
    models = root / "models"
    for version in (1, 2):
        save_tiny(models / "Tiny" / str(version), version)
    shutil.copytree(models / "Tiny" / "1", models / "Tiny" / "tmp")
    save_keras(models / "Keras" / "1")
    save_tiny(models / "Growing" / "1", 1)
    save_tiny(root / "spare" / "Growing-2", 2)
    write_broken(root / "spare" / "Growing-3")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    build(Path(sys.argv[1]))
