"""The deep-watershed network and its TF-Serving export, for any deep-watershed contract.

Why this shape: a small U-Net that downsamples at once (strided stem) and uses depthwise-
separable convolutions, so a 1024x1024 image runs in a fraction of a second on two CPU cores
and the SavedModel is a few hundred kB. Four 2x downsamplings reach a 1/16 grid whose
receptive field (well over 100 px) spans a clump of 30 px nuclei; skips carry the fine detail
back, and a last full-resolution step sees the input again to place boundaries to the pixel.

Its signature is a :class:`~consumers.processing.contract.ModelContract` (by default the
segmentation job type's ``consumers.segmentation.NUCLEAR_MODEL``): input ``image``
[b, H, W, input_channels]; per compartment, heads ``inner_distance`` (linear, 1 channel),
``outer_distance`` (linear, 1 channel) and ``fgbg`` (softmax over 2 channels; channel 1 is the
foreground), under whatever names the contract gives them. Compartments share the whole network
but their last 1x1 convolutions.
"""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf
from keras import layers

from consumers.processing.contract import ModelContract
from consumers.segmentation import NUCLEAR_MODEL as CONTRACT

__all__ = ["CONTRACT", "OUTPUT_NAMES", "SIZE_MULTIPLE", "build_model", "export_saved_model"]

HEADS = CONTRACT.heads
OUTPUT_NAMES = HEADS.names
WIDTHS = (16, 32, 64, 96, 128)
"""Channels at 1/2, 1/4, 1/8, 1/16 of the input (and the 1/16 bottleneck's second block)."""
SIZE_MULTIPLE = 2 ** (len(WIDTHS) - 1)
"""Height and width must be multiples of this (four 2x downsamplings)."""


def _check_size_multiple(contract: ModelContract) -> None:
    if contract.size_multiple != SIZE_MULTIPLE:
        raise ValueError(
            f"the network needs multiples of {SIZE_MULTIPLE}; the contract of {contract.name} "
            f"says {contract.size_multiple}"
        )


_check_size_multiple(CONTRACT)


class Upsample2x(layers.Layer):
    """Bilinear 2x upsampling for any input size (Keras' UpSampling2D needs static shapes)."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        size = tf.shape(x)[1:3] * 2
        return tf.image.resize(x, size, method="bilinear")

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        b, h, w, c = input_shape
        return (b, None if h is None else 2 * h, None if w is None else 2 * w, c)


def _bn_relu(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    x = layers.BatchNormalization(momentum=0.95, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _sep(x: keras.KerasTensor, width: int, name: str, strides: int = 1) -> keras.KerasTensor:
    """Depthwise 3x3 then pointwise, BN, ReLU: a 3x3 conv's reach at a fraction of its cost."""
    x = layers.SeparableConv2D(
        width, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_sep"
    )(x)
    return _bn_relu(x, name)


def _pointwise(x: keras.KerasTensor, width: int, name: str) -> keras.KerasTensor:
    x = layers.Conv2D(width, 1, use_bias=False, name=f"{name}_pw")(x)
    return _bn_relu(x, name)


def build_model(
    widths: tuple[int, ...] = WIDTHS,
    contract: ModelContract = CONTRACT,
    name: str = "nuclear_deep_watershed",
) -> keras.Model:
    """A fully convolutional model: image [b, H, W, C] -> dict of every compartment's heads."""
    _check_size_multiple(contract)
    image = keras.Input(shape=(None, None, contract.input_channels), name=contract.input)
    # 1/2: strided full 3x3 conv (few input channels, so it is cheap).
    x = layers.Conv2D(widths[0], 3, strides=2, padding="same", use_bias=False, name="stem")(image)
    x = _bn_relu(x, "stem")
    x = _sep(x, widths[0], "enc1")
    skips = [x]
    for level, width in enumerate(widths[1:-1], start=2):
        x = _sep(x, width, f"down{level}", strides=2)
        x = _sep(x, width, f"enc{level}")
        skips.append(x)
    x = _sep(x, widths[-1], "bottleneck")
    # Decoder: upsample, concatenate the skip, mix (1x1), refine (separable 3x3).
    for level in range(len(skips) - 1, 0, -1):
        width = widths[level - 1]
        x = Upsample2x(name=f"up{level}")(x)
        x = layers.Concatenate(name=f"cat{level}")([x, skips[level - 1]])
        x = _pointwise(x, width, f"mix{level}")
        x = _sep(x, width, f"dec{level}")
    # Full resolution: see the input again for pixel-accurate boundaries.
    x = Upsample2x(name="up0")(x)
    x = layers.Concatenate(name="cat0")([x, image])
    x = _pointwise(x, 8, "mix0")
    x = layers.DepthwiseConv2D(3, padding="same", name="refine_dw")(x)
    x = layers.ReLU(name="refine_relu")(x)
    outputs = {}
    for compartment in contract.compartments:
        heads = compartment.heads
        outputs[heads.inner] = layers.Conv2D(1, 1, name=heads.inner)(x)
        outputs[heads.outer] = layers.Conv2D(1, 1, name=heads.outer)(x)
        fg_logits = layers.Conv2D(2, 1, name=f"{heads.foreground}_logits")(x)
        outputs[heads.foreground] = layers.Softmax(axis=-1, name=heads.foreground)(fg_logits)
    return keras.Model(image, outputs, name=name)


def export_saved_model(model: keras.Model, path: Path, contract: ModelContract = CONTRACT) -> None:
    """Write a TF Serving SavedModel: signature ``serving_default``, the contract's input, and
    the contract's lean (float16) signature when it declares one."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    output_names = contract.output_names

    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = model(image, training=False)
        return {name: tf.identity(outputs[name], name=name) for name in output_names}

    archive.add_endpoint(
        name="serving_default",
        fn=serve,
        input_signature=[
            tf.TensorSpec(
                shape=(None, None, None, contract.input_channels),
                dtype=tf.float32,
                name=contract.input,
            )
        ],
    )
    archive.write_out(str(path), verbose=False)
    if contract.lean_signature:
        from models.training.lean_signature import add_lean_signature

        add_lean_signature(path, contract)


def check_signature(path: Path, contract: ModelContract = CONTRACT) -> dict[str, object]:
    """Reload the SavedModel and confirm the serving contract (names, dtypes, ranks)."""
    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures["serving_default"]
    _, inputs = signature.structured_input_signature
    outputs = signature.structured_outputs
    if set(inputs) != {contract.input}:
        raise AssertionError(f"serving_default inputs are {sorted(inputs)}, not {contract.input}")
    if set(outputs) != set(contract.output_names):
        raise AssertionError(
            f"serving_default outputs are {sorted(outputs)}, not {contract.output_names}"
        )
    spec = inputs[contract.input]
    if (
        spec.dtype != tf.float32
        or spec.shape.rank != 4
        or spec.shape[-1] != contract.input_channels
    ):
        raise AssertionError(f"unexpected input spec {spec}")
    channels = {}
    for compartment in contract.compartments:
        heads = compartment.heads
        channels.update({heads.inner: 1, heads.outer: 1, heads.foreground: 2})
    for name, want in channels.items():
        out = outputs[name]
        if out.dtype != tf.float32 or out.shape.rank != 4 or out.shape[-1] != want:
            raise AssertionError(f"unexpected output spec for {name}: {out}")
    described: dict[str, object] = {
        "inputs": {name: str(spec) for name, spec in inputs.items()},
        "outputs": {name: str(spec) for name, spec in outputs.items()},
    }
    if contract.lean_signature:
        lean = loaded.signatures[contract.lean_signature]
        described[contract.lean_signature] = {
            "inputs": {k: str(v) for k, v in lean.structured_input_signature[1].items()},
            "outputs": {k: str(v) for k, v in lean.structured_outputs.items()},
        }
    return described
