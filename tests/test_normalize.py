"""Input normalisation: range, dtype, per-channel independence, constant and odd inputs."""

from __future__ import annotations

import numpy as np
import pytest

from consumers.processing.normalize import PERCENTILES, normalize


@pytest.mark.parametrize("method", ["percentile", "clahe"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64, np.int32])
def test_range_and_dtype(method: str, dtype: type) -> None:
    rng = np.random.default_rng(0)
    image = (rng.random((64, 80)) * 200).astype(dtype)
    out = normalize(image, method)
    assert out.dtype == np.float32
    assert out.shape == image.shape
    assert out.min() >= 0.0
    assert out.max() <= 1.0
    assert out.max() - out.min() > 0.5


@pytest.mark.parametrize("method", ["percentile", "clahe"])
@pytest.mark.parametrize("value", [0, 7, 65535])
def test_constant_image_becomes_zeros(method: str, value: int) -> None:
    out = normalize(np.full((32, 32), value, dtype=np.uint16), method)
    assert out.dtype == np.float32
    assert not out.any()


def test_percentiles_map_to_zero_and_one() -> None:
    image = np.arange(100 * 100, dtype=np.float32).reshape(100, 100)
    low, high = np.percentile(image, PERCENTILES)
    out = normalize(image)
    assert out[image <= low].max() == 0.0
    assert out[image >= high].min() == 1.0
    inside = (image > low) & (image < high)
    expected = (image[inside] - low) / (high - low)
    np.testing.assert_allclose(out[inside], expected, atol=1e-5)


def test_hot_pixels_do_not_squash_the_range() -> None:
    rng = np.random.default_rng(1)
    image = rng.normal(100, 10, (128, 128)).astype(np.float32)
    image[:3, :3] = 60000  # a few saturated pixels
    out = normalize(image)
    assert np.median(out) > 0.3  # a min-max scaling would put the median near 0


def test_sparse_bright_spot_on_flat_field_is_kept() -> None:
    image = np.zeros((64, 64), dtype=np.uint16)
    image[10, 10] = 500
    out = normalize(image)
    assert out[10, 10] == 1.0
    assert out.sum() == 1.0


def test_each_channel_and_batch_item_on_its_own() -> None:
    rng = np.random.default_rng(2)
    batch = rng.random((2, 32, 32, 2)).astype(np.float32)
    batch[0, ..., 1] *= 1000
    batch[1, ..., 0] += 50
    out = normalize(batch)
    assert out.shape == batch.shape
    for b in range(2):
        for c in range(2):
            np.testing.assert_array_equal(out[b, ..., c], normalize(batch[b, ..., c]))
    hwc = normalize(batch[0])
    np.testing.assert_array_equal(hwc, out[0])


def test_input_untouched_and_non_finite_values_tolerated() -> None:
    image = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    before = image.copy()
    normalize(image)
    np.testing.assert_array_equal(image, before)
    image[0, 0] = np.nan
    image[0, 1] = np.inf
    out = normalize(image)
    assert np.isfinite(out).all()


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="method"):
        normalize(np.zeros((8, 8)), "zscore")
    with pytest.raises(ValueError, match="shape"):
        normalize(np.zeros(8))
    with pytest.raises(ValueError, match="dtype"):
        normalize(np.zeros((8, 8), dtype=bool))
