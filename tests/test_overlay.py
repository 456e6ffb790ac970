"""PNG previews of segmentations: outlines on a grey image, downsampled when large."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from consumers.processing.overlay import label_colours, overlay_png, overlay_rgb, to_uint8


def square_scene(shape=(100, 120)):
    image = np.full(shape, 100.0, np.float32)
    labels = np.zeros(shape, np.int32)
    labels[20:50, 30:70] = 1
    labels[60:90, 10:40] = 2
    image[labels > 0] = 1000.0
    return image, labels


def test_overlay_png_is_a_png_of_the_image_size_that_shows_the_rgb_overlay():
    image, labels = square_scene()
    png = overlay_png(image, labels, outline_colour=(0, 255, 0))
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.size == (120, 100)
        shown = np.asarray(im.convert("RGB")).astype(int)
    expected = overlay_rgb(image, labels, outline_colour=(0, 255, 0)).astype(int)
    assert np.abs(shown - expected).max() <= 1  # 254 palette greys instead of 256
    assert tuple(shown[20, 50]) == (0, 255, 0)


def test_outlines_are_drawn_in_the_colour_and_interiors_stay_grey():
    image, labels = square_scene()
    rgb = overlay_rgb(image, labels, outline_colour=(0, 255, 0))
    assert tuple(rgb[20, 50]) == (0, 255, 0)  # top edge of object 1
    assert tuple(rgb[35, 50]) == (255, 255, 255)  # its bright interior
    assert tuple(rgb[5, 5]) == (0, 0, 0)  # dim background
    assert rgb[..., 0][labels == 0].max() == 0


def test_fill_tints_objects_with_a_colour_per_label():
    image, labels = square_scene()
    rgb = overlay_rgb(np.zeros_like(image), labels, fill_alpha=0.5)
    inside_1, inside_2 = rgb[35, 50], rgb[75, 25]
    assert inside_1.max() > 0 and inside_2.max() > 0
    assert tuple(inside_1) != tuple(inside_2)
    colours = label_colours(np.array([[0, 1, 2, 1]]))
    assert tuple(colours[0, 0]) == (0, 0, 0)
    assert tuple(colours[0, 1]) == tuple(colours[0, 3])


def test_large_images_are_downsampled_to_the_max_side():
    image = np.random.default_rng(0).random((3000, 2000), dtype=np.float32)
    labels = np.zeros((3000, 2000), np.int32)
    labels[1000:1500, 500:900] = 5
    png = overlay_png(image, labels, max_side=512)
    with Image.open(io.BytesIO(png)) as im:
        assert max(im.size) == 512 and im.size == (341, 512)


def test_to_uint8_stretches_contrast_and_survives_constant_and_nan():
    ramp = np.linspace(0, 5000, 10000, dtype=np.float32).reshape(100, 100)
    out = to_uint8(ramp)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert to_uint8(np.full((4, 4), 3.0)).max() == 0
    with_nan = ramp.copy()
    with_nan[0, 0] = np.nan
    assert to_uint8(with_nan)[0, 0] == 0


def test_multichannel_image_shows_the_chosen_channel():
    image, labels = square_scene()
    stack = np.stack([np.zeros_like(image), image], axis=-1)
    assert overlay_rgb(stack, labels, channel=1)[35, 50].max() == 255


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_integer_images_stretch_as_their_float_values_do(dtype: type) -> None:
    rng = np.random.default_rng(3)
    top = 200 if dtype == np.uint8 else 4000
    image = rng.integers(10, top, size=(300, 200)).astype(dtype)
    by_table, by_float = to_uint8(image), to_uint8(image.astype(np.float32))
    assert by_table.dtype == np.uint8 and by_table.shape == image.shape
    assert np.abs(by_table.astype(int) - by_float.astype(int)).max() <= 1
    assert by_table.min() == 0 and by_table.max() == 255
    assert to_uint8(np.full((4, 4), 7, dtype)).max() == 0, "a flat image is black, not noise"
