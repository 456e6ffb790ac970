"""Tiling with blended untiling, and rescaling by pixel size: maths that must leave no seams."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from consumers.processing.rescale import (
    rescale_to_model,
    rescaled_shape,
    resize_image,
    restore_labels,
    scale_factor,
)
from consumers.processing.tiling import (
    Untiler,
    extract_tiles,
    iter_batches,
    plan_for_model,
    plan_tiles,
    untile,
)


def smooth_random(shape, seed=0, sigma=2.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.random(shape, dtype=np.float32)
    return ndi.gaussian_filter(image, (sigma, sigma, 0)[: len(shape)])


def gaussian_model(sigma: float):
    """A translation-equivariant stand-in model: a Gaussian blur of each tile (radius 4 sigma)."""

    def predict(tiles: np.ndarray) -> np.ndarray:
        return ndi.gaussian_filter(tiles, (0, sigma, sigma, 0), mode="reflect", truncate=4.0)

    return predict


# --- plans ---------------------------------------------------------------------------------


def test_small_image_gets_one_tile_padded_to_the_size_multiple():
    plan = plan_tiles((50, 70), 512)
    assert plan.tile_shape == (64, 96)
    assert plan.padded_shape == (64, 96)
    assert plan.pad_before == (7, 13)
    assert plan.n_tiles == 1


def test_large_image_tiles_span_it_evenly_with_at_least_the_requested_overlap():
    plan = plan_tiles((2000, 1100), 512)
    for length, starts in ((2000, plan.y_starts), (1100, plan.x_starts)):
        assert starts[0] == 0 and starts[-1] == length - 512
        steps = np.diff(starts)
        assert steps.max() <= 384  # stride 0.75 of a tile: overlap >= 128
        assert steps.max() - steps.min() <= 1
    assert plan.padded_shape == plan.image_shape  # no padding once an axis spans a tile


def test_overlap_in_pixels_sets_the_stride():
    plan = plan_tiles((1024, 1024), 256, overlap=64)
    assert np.diff(plan.y_starts).max() <= 192
    assert plan.grid == (5, 5)


def test_exactly_one_tile_and_mixed_axes():
    assert plan_tiles((512, 512), 512).n_tiles == 1
    plan = plan_tiles((100, 3000), 512)
    assert plan.tile_shape == (128, 512)
    assert len(plan.y_starts) == 1 and len(plan.x_starts) > 1


def test_bad_plans_are_refused():
    with pytest.raises(ValueError, match="multiple"):
        plan_tiles((100, 100), 500)
    with pytest.raises(ValueError, match="stride_ratio"):
        plan_tiles((100, 100), 64, stride_ratio=0)
    with pytest.raises(ValueError, match="overlap"):
        plan_tiles((100, 100), 64, overlap=64)
    with pytest.raises(ValueError, match="cannot tile"):
        plan_tiles((0, 10), 64)


def test_iter_batches_visits_every_tile_once_in_bounded_batches():
    plan = plan_tiles((1500, 1500), 256)
    batches = list(iter_batches(plan, 7))
    assert all(len(b) <= 7 for b in batches)
    assert [i for b in batches for i in b] == list(range(plan.n_tiles))
    with pytest.raises(ValueError):
        list(iter_batches(plan, 0))


# --- extract and untile --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "tile"),
    [((1, 1), 32), ((5, 7), 64), ((33, 100), 64), ((513, 700), 256), ((300, 1000), (64, 128))],
)
def test_untile_of_extracted_tiles_gives_back_the_image(shape, tile):
    image = smooth_random((*shape, 2))
    plan = plan_tiles(shape, tile)
    tiles = extract_tiles(image, plan)
    assert tiles.shape == (plan.n_tiles, *plan.tile_shape, 2)
    assert tiles.dtype == image.dtype
    np.testing.assert_allclose(untile(tiles, plan), image, rtol=1e-6, atol=1e-6)


def test_constant_prediction_untiles_to_the_same_constant_everywhere():
    plan = plan_tiles((1000, 777), 128, stride_ratio=0.6)
    tiles = np.full((plan.n_tiles, *plan.tile_shape, 3), 3.7, np.float32)
    out = untile(tiles, plan)
    assert out.shape == (1000, 777, 3)
    # Float32 rounding of a weighted mean: within 4 ulp of the constant.
    assert np.abs(out - np.float32(3.7)).max() <= 4 * np.spacing(np.float32(3.7))


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_blending_weights_sum_to_one_between_tiles_and_at_corners(ratio):
    plan = plan_tiles((1200, 900), 256, stride_ratio=ratio)
    np.testing.assert_allclose(plan.weight_sum, 1.0, atol=1e-6)


def test_pixels_next_to_an_inner_tile_edge_get_no_weight():
    plan = plan_tiles((1024, 1024), 256)  # overlaps >= 64 px, margin = a quarter of it
    w = plan.weights(0)  # top-left tile: image borders on top/left, neighbours right/below
    assert w[0, 0] == 1.0
    assert np.all(w[-16:, :] == 0) and np.all(w[:, -16:] == 0)
    assert np.all(w[:-64, :-64] == 1.0)


def test_2d_image_gives_one_channel_tiles():
    plan = plan_tiles((40, 40), 32)
    assert extract_tiles(np.zeros((40, 40), np.uint16), plan).shape == (plan.n_tiles, 32, 32, 1)


def test_model_with_receptive_field_inside_the_margin_tiles_exactly():
    image = smooth_random((1100, 900, 1))
    plan = plan_tiles(image.shape, 256)  # overlap >= 64, margin >= 16 px
    model = gaussian_model(3.0)  # reach 12 px
    tiled = untile(model(extract_tiles(image, plan)), plan)
    whole = model(image[None])[0]
    assert np.abs(tiled - whole).max() < 1e-5


def test_model_reaching_past_the_margin_stays_within_a_small_tolerance_at_seams():
    image = smooth_random((1100, 900, 1))
    plan = plan_tiles(image.shape, 256)  # margin 16 px
    # A Gaussian reaching 32 px: its weight beyond 16 px is tiny (measured 1.1e-6).
    model = gaussian_model(8.0)
    tiled = untile(model(extract_tiles(image, plan)), plan)
    assert np.abs(tiled - model(image[None])[0]).max() < 1e-5

    # A box filter reaching 32 px weighs its far pixels fully: the harsh case (measured 1.7e-4
    # against local variations of 0.02).
    def box(x):
        return ndi.uniform_filter(x, (1, 65, 65, 1), mode="reflect")

    tiled = untile(box(extract_tiles(image, plan)), plan)
    whole = box(image[None])[0]
    whole_minus_mean = np.abs(whole - whole.mean()).max()
    assert np.abs(tiled - whole).max() < 1e-3 < whole_minus_mean


def grid_model(sigma: float, grid: int = 16):
    """A stand-in for a strided network: a Gaussian (reach 4 sigma) then averages over
    `grid`-px blocks, so it is not shift-equivariant and its reach is 4 sigma + grid."""

    def predict(tiles: np.ndarray) -> np.ndarray:
        blurred = ndi.gaussian_filter(tiles, (0, sigma, sigma, 0), mode="reflect", truncate=4.0)
        n, h, w, c = blurred.shape
        blocks = blurred.reshape(n, h // grid, grid, w // grid, grid, c).mean(axis=(2, 4))
        return np.repeat(np.repeat(blocks, grid, axis=1), grid, axis=2)

    return predict


def test_model_plan_sends_an_image_that_fits_whole_padded_to_the_grid():
    plan = plan_for_model((1000, 1030), size_multiple=16, reach=96, whole_pixels=2048 * 2048)
    assert plan.n_tiles == 1
    assert plan.tile_shape == plan.padded_shape == (1008, 1040)
    assert plan.pad_before == (4, 5)


def test_model_plan_tiles_a_larger_image_on_the_grid_overlapping_by_twice_the_reach():
    plan = plan_for_model((3000, 2500), size_multiple=16, reach=96, tile_size=1024)
    assert plan.padded_shape == (3008, 2512)
    for length, starts in ((3008, plan.y_starts), (2512, plan.x_starts)):
        assert starts[0] == 0 and starts[-1] == length - 1024
        assert all(start % 16 == 0 for start in starts)
        assert np.diff(starts).max() <= 1024 - (2 * 96 + 16)
    w = plan.weights(0)
    assert np.all(w[-96:, :] == 0) and np.all(w[:, -96:] == 0)  # the reach next to an edge
    assert w[-97, 0] > 0
    np.testing.assert_allclose(plan.weight_sum, 1.0, atol=1e-6)


def test_model_plan_refuses_tiles_too_small_for_the_reach():
    with pytest.raises(ValueError, match="use tiles of at least 224 px"):
        plan_for_model((3000, 3000), size_multiple=16, reach=96, tile_size=208)


def test_strided_model_tiled_on_its_grid_gives_the_whole_image_values():
    image = smooth_random((1500, 1300, 1))
    model = grid_model(4.0)  # reach 16 + 16 px
    whole_plan = plan_for_model(image.shape, size_multiple=16, reach=32, whole_pixels=1 << 22)
    whole = untile(model(extract_tiles(image, whole_plan)), whole_plan)
    plan = plan_for_model(image.shape, size_multiple=16, reach=32, tile_size=256)
    assert plan.n_tiles > 30
    tiled = untile(model(extract_tiles(image, plan)), plan)
    assert np.abs(tiled - whole).max() < 1e-6
    # Tiles off the grid give other values: what the alignment is for.
    loose = plan_tiles(image.shape, 256, overlap=2 * 32 + 16, size_multiple=16)
    assert np.abs(untile(model(extract_tiles(image, loose)), loose) - whole).max() > 1e-3


def test_untiling_in_batches_equals_untiling_at_once():
    image = smooth_random((700, 650, 2))
    plan = plan_tiles(image.shape, 128)
    streaming = Untiler(plan)
    for indices in iter_batches(plan, 5):
        streaming.add(extract_tiles(image, plan, indices), indices)
    np.testing.assert_array_equal(streaming.result(), untile(extract_tiles(image, plan), plan))


def test_untiler_refuses_missing_or_misshapen_tiles():
    plan = plan_tiles((300, 300), 128)
    untiler = Untiler(plan)
    untiler.add(np.zeros((2, 128, 128, 1), np.float32), [0, 1])
    with pytest.raises(ValueError, match="never added"):
        untiler.result()
    with pytest.raises(ValueError, match="tiles of 128x128"):
        untiler.add(np.zeros((1, 64, 64, 1), np.float32), [2])
    with pytest.raises(ValueError, match="channels"):
        untiler.add(np.zeros((1, 128, 128, 2), np.float32), [2])
    with pytest.raises(ValueError, match="does not match plan"):
        extract_tiles(np.zeros((10, 10)), plan)


# --- rescale -------------------------------------------------------------------------------


def test_scale_factor_is_image_mpp_over_model_mpp():
    assert scale_factor(1.3, 0.65) == pytest.approx(2.0)
    assert scale_factor(0.325, 0.65) == pytest.approx(0.5)
    assert scale_factor(None, 0.65) == 1.0
    assert scale_factor(0.65, 0.65) == 1.0
    assert scale_factor(0.6501, 0.65) == 1.0  # within tolerance: not worth resampling
    with pytest.raises(ValueError, match="image_mpp"):
        scale_factor(0, 0.65)
    with pytest.raises(ValueError, match="model_mpp"):
        scale_factor(0.5, float("nan"))


def test_scale_one_returns_the_input_itself():
    image = np.zeros((64, 64, 1), np.uint16)
    assert rescale_to_model(image, 0.65, 0.65) is image
    assert rescale_to_model(image, None, 0.65) is image
    labels = np.zeros((64, 64), np.int32)
    assert restore_labels(labels, (64, 64)) is labels


def test_rescale_changes_size_by_the_factor_and_keeps_intensity():
    image = smooth_random((200, 300, 1), sigma=4.0)
    up = rescale_to_model(image, 1.3, 0.65)
    down = rescale_to_model(image, 0.325, 0.65)
    assert up.shape == (400, 600, 1) and up.dtype == np.float32
    assert down.shape == (100, 150, 1)
    assert up.mean() == pytest.approx(image.mean(), rel=1e-3)
    assert down.mean() == pytest.approx(image.mean(), rel=1e-2)
    assert rescaled_shape((3, 3), 0.1) == (1, 1)


def test_downsampling_averages_fine_texture_instead_of_aliasing():
    stripes = np.zeros((64, 64), np.float32)
    stripes[:, ::2] = 1.0
    half = resize_image(stripes, (32, 32))
    assert np.abs(half - 0.5).max() < 0.1


def test_restore_labels_copies_values_and_keeps_objects_in_place():
    labels = np.zeros((100, 120), np.int32)
    labels[20:40, 30:60] = 7
    labels[60:90, 10:30] = 123456
    small = restore_labels(labels, (50, 60))
    assert set(np.unique(small)) <= {0, 7, 123456}
    back = restore_labels(small, (100, 120))
    assert set(np.unique(back)) == {0, 7, 123456}
    assert (back == labels).mean() > 0.99
    for value in (7, 123456):
        np.testing.assert_allclose(
            ndi.center_of_mass(back == value), ndi.center_of_mass(labels == value), atol=0.6
        )


def test_rescale_then_restore_round_trips_the_grid():
    image = smooth_random((333, 257, 1))
    model_grid = rescale_to_model(image, 0.9, 0.65)
    labels = (model_grid[..., 0] > 0.5).astype(np.int32)
    assert restore_labels(labels, image.shape[:2]).shape == (333, 257)
