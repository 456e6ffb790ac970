"""The segmentation pipeline with a deterministic stand-in model (no TensorFlow).

The stand-in is translation-equivariant (Gaussian filters of the normalised image), so applying
it to the whole image is the ground truth for what tiling must reproduce. Stated tolerance: with
the default layout (512-px tiles, stride 0.75, so >= 128 px overlaps whose outer 32 px carry no
weight) a model whose receptive field reaches <= 32 px gives the whole-image maps to 1e-5 (float
rounding; measured 1.8e-7) everywhere including at seams; a Gaussian one reaching 48 px stays
within 1e-4 (measured 6e-7). Labels: tiled vs untiled F1 >= 0.99 (measured 1.0, mean IoU 1.0).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from consumers.processing.pipeline import (
    STAGES,
    default_postprocess,
    predict_maps,
    segment,
    segment_frames,
)
from consumers.processing.rescale import restore_labels
from consumers.processing.tiling import plan_tiles
from evaluation.quality import score
from evaluation.synthetic import generate


def standin_model(inner_sigma: float = 4.0, outer_sigma: float = 1.0):
    """Nuclear-model-shaped outputs from Gaussian filters of the (n, t, t, 1) input.

    Reach is 4 sigma: 16 px for the default inner head.
    """

    def predict(tiles: np.ndarray) -> dict[str, np.ndarray]:
        assert tiles.dtype == np.float32 and tiles.ndim == 4 and tiles.shape[-1] == 1
        outer = ndi.gaussian_filter(tiles, (0, outer_sigma, outer_sigma, 0), truncate=4.0)
        fg = 1.0 / (1.0 + np.exp(-(outer - 0.2) * 20.0))
        inner = ndi.gaussian_filter(tiles, (0, inner_sigma, inner_sigma, 0), truncate=4.0)
        return {
            "inner_distance": inner,
            "outer_distance": outer,
            "fgbg": np.concatenate([1.0 - fg, fg], axis=-1),
        }

    return predict


def whole_image_maps(predict, image: np.ndarray) -> dict[str, np.ndarray]:
    return {head: maps[0] for head, maps in predict(image[None]).items()}


def near_seams(plan, width: int) -> np.ndarray:
    """Pixels within `width` of any tile edge inside the image."""
    mask = np.zeros(plan.image_shape, bool)
    ty, tx = plan.tile_shape
    for y0 in plan.y_starts:
        for edge in (y0, y0 + ty):
            if 0 < edge < plan.image_shape[0]:
                mask[max(0, edge - width) : edge + width, :] = True
    for x0 in plan.x_starts:
        for edge in (x0, x0 + tx):
            if 0 < edge < plan.image_shape[1]:
                mask[:, max(0, edge - width) : edge + width] = True
    return mask


def disc_image(shape=(256, 256), radius=9, spacing=32):
    """Well separated bright discs on a dark background, and their labels."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    n = 0
    for cy in range(spacing // 2, shape[0] - radius, spacing):
        for cx in range(spacing // 2, shape[1] - radius, spacing):
            n += 1
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = n
    image = ndi.gaussian_filter((labels > 0).astype(np.float32), 1.0) * 1000 + 100
    return image, labels


@pytest.fixture(scope="module")
def big_image() -> np.ndarray:
    """A 4096x4096 nuclei image: a 1024x1024 synthetic field repeated 4x4, normalised."""
    from consumers.processing.normalize import normalize

    image, _ = generate((1024, 1024), seed=11, coverage=0.3, mean_diameter=20.0)
    return normalize(np.tile(image, (4, 4))[..., None])


@pytest.mark.slow
def test_4096_image_tiled_maps_match_the_whole_image_including_seams(big_image):
    predict = standin_model()
    tiled = predict_maps(big_image, predict, tile_size=512, batch_size=16)
    whole = whole_image_maps(predict, big_image)
    seams = near_seams(plan_tiles(big_image.shape, 512), 48)
    assert seams.mean() > 0.3  # a good part of the image lies near a seam
    for head in ("inner_distance", "outer_distance", "fgbg"):
        assert tiled[head].shape == whole[head].shape
        diff = np.abs(tiled[head] - whole[head])
        assert diff.max() < 1e-5, f"{head}: max difference {diff.max():.2e}"
        assert diff[seams].max() < 1e-5


@pytest.mark.slow
def test_4096_model_reaching_past_the_blend_margin_stays_within_tolerance(big_image):
    predict = standin_model(inner_sigma=12.0)  # reach 48 px > the 32 px margin
    tiled = predict_maps(big_image, predict, tile_size=512, batch_size=32)
    whole = whole_image_maps(predict, big_image)
    diff = np.abs(tiled["inner_distance"] - whole["inner_distance"])
    assert diff.max() < 1e-4, f"max difference {diff.max():.2e}"  # measured 6e-7


@pytest.mark.slow
def test_4096_tiled_segmentation_agrees_with_untiled_including_objects_on_seams(big_image):
    predict = standin_model()
    tiled = segment(big_image, predict, normalize_method=None, tile_size=512, batch_size=16)
    untiled = default_postprocess(whole_image_maps(predict, big_image))
    assert tiled.shape == (4096, 4096) and tiled.dtype == np.int32
    s = score(untiled, tiled)
    assert s.n_true > 3000
    assert s.f1 >= 0.99, s
    # Objects cut by a tile edge are segmented the same way as in the untiled result.
    seams = near_seams(plan_tiles(big_image.shape, 512), 1)
    on_seams = np.unique(untiled[seams & (untiled > 0)])
    assert on_seams.size > 300
    seam_objects = np.where(np.isin(untiled, on_seams), untiled, 0)
    seam_scores = score(seam_objects, tiled)
    assert seam_scores.recall >= 0.99, seam_scores


def test_segment_returns_int32_labels_of_the_input_shape_for_odd_sizes():
    image, truth = generate((301, 457), seed=5, coverage=0.1, mean_diameter=18.0, clumping=0.0)
    labels = segment(image, standin_model(), tile_size=128)
    assert labels.shape == (301, 457) and labels.dtype == np.int32
    assert score(truth, labels).f1 > 0.6  # the stand-in is a crude model, but a model


def test_tiled_and_untiled_segmentation_agree_on_a_synthetic_image():
    image, _ = generate((700, 900), seed=2, coverage=0.35, mean_diameter=18.0)
    predict = standin_model()
    tiled = segment(image, predict, tile_size=128, batch_size=8)
    from consumers.processing.normalize import normalize

    untiled = default_postprocess(whole_image_maps(predict, normalize(image[..., None])))
    assert score(untiled, tiled).f1 >= 0.99


def test_rescaling_by_pixel_size_finds_the_same_objects_on_the_original_grid():
    image, truth = disc_image((512, 512))
    coarse = ndi.zoom(image, 0.5, order=1, grid_mode=True, mode="nearest")  # 1.3 um/px
    coarse_truth = restore_labels(truth, coarse.shape)
    seen = []

    def predict(tiles):
        seen.append(tiles.shape)
        return standin_model(inner_sigma=3.0)(tiles)

    labels = segment(coarse, predict, image_mpp=1.3, model_mpp=0.65, tile_size=256)
    assert labels.shape == coarse.shape
    assert seen[0][1:3] == (256, 256)  # the model saw the 2x upsampled image in tiles
    s = score(coarse_truth, labels)
    assert s.f1 >= 0.95, s


def test_timings_cover_every_stage_and_progress_counts_tiles():
    image, _ = disc_image((300, 300))
    timings: dict[str, float] = {}
    calls: list[tuple[int, int]] = []
    sizes: list[int] = []

    def predict(tiles):
        sizes.append(len(tiles))
        return standin_model()(tiles)

    segment(
        image,
        predict,
        tile_size=64,
        batch_size=4,
        timings=timings,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert set(timings) == set(STAGES)
    assert all(v >= 0 for v in timings.values())
    total = plan_tiles((300, 300), 64).n_tiles
    assert calls[-1] == (total, total)
    assert max(sizes) <= 4 and sum(sizes) == total


def test_custom_postprocess_gets_blended_heads_on_the_model_grid():
    image, _ = disc_image((200, 200))
    got = {}

    def postprocess(maps):
        got.update({k: v.shape for k, v in maps.items()})
        return (maps["fgbg"][..., 1] > 0.5).astype(np.int32)

    labels = segment(
        image,
        standin_model(),
        image_mpp=0.325,
        model_mpp=0.65,
        tile_size=64,
        postprocess=postprocess,
    )
    assert got == {
        "inner_distance": (100, 100, 1),
        "outer_distance": (100, 100, 1),
        "fgbg": (100, 100, 2),
    }
    assert labels.shape == (200, 200)
    assert set(np.unique(labels)) == {0, 1}


def test_unnormalised_float_input_reaches_the_model_unchanged():
    image = np.random.default_rng(0).random((64, 64, 1), dtype=np.float32)
    seen = []

    def predict(tiles):
        seen.append(tiles.copy())
        return {"inner_distance": tiles, "outer_distance": tiles}

    segment(
        image,
        predict,
        normalize_method=None,
        tile_size=64,
        postprocess=lambda m: np.zeros(m["inner_distance"].shape[:2], np.int32),
    )
    np.testing.assert_array_equal(seen[0][0], image)


def test_model_outputs_of_the_wrong_shape_are_refused():
    def predict(tiles):
        return {"inner_distance": tiles[:, ::2, ::2]}

    with pytest.raises(ValueError, match="inner_distance"):
        segment(np.zeros((64, 64), np.float32), predict, tile_size=64)
    with pytest.raises(ValueError, match="no outputs"):
        segment(np.zeros((64, 64), np.float32), lambda t: {}, tile_size=64)


def test_segment_frames_labels_each_plane_separately():
    a, _ = disc_image((128, 128))
    stack = np.stack([a, np.zeros_like(a) + 100, a[::-1]])[..., None]
    timings: dict[str, float] = {}
    labels = segment_frames(stack, standin_model(inner_sigma=3.0), tile_size=64, timings=timings)
    assert labels.shape == (3, 128, 128) and labels.dtype == np.int32
    assert labels[0].max() == labels[2].max() > 0
    assert labels[1].max() == 0
    assert set(timings) == set(STAGES)


def test_an_image_that_fits_goes_to_the_model_once_whole_and_larger_ones_on_its_grid():
    image, _ = generate((1000, 1030), seed=4, coverage=0.2, mean_diameter=18.0)
    model = standin_model()
    shapes: list[tuple[int, ...]] = []

    def counted(batch: np.ndarray) -> dict[str, np.ndarray]:
        shapes.append(batch.shape)
        return model(batch)

    common = {"size_multiple": 16, "reach": 32, "batch_size": 4}
    whole = segment(image, counted, whole_pixels=1024 * 1040, **common)
    assert shapes == [(1, 1008, 1040, 1)]  # padded to the grid, nothing twice
    shapes.clear()
    tiled = segment(image, counted, whole_pixels=0, tile_size=256, **common)
    assert len(shapes) > 1 and all(s[1:3] == (256, 256) for s in shapes)
    np.testing.assert_array_equal(tiled, whole)
