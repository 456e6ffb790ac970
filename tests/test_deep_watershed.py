"""Deep watershed post-processing: splits touching nuclei, finds nothing in an empty prediction."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from consumers.processing.deep_watershed import deep_watershed
from evaluation.synthetic import generate
from models.training.targets import fgbg, inner_distance, outer_distance, targets


def _two_touching_discs(radius: int = 12) -> np.ndarray:
    """Labels of two discs whose centres are 2 * radius - 2 apart, so they touch along a seam."""
    yy, xx = np.mgrid[:64, :96]
    labels = np.zeros((64, 96), dtype=np.int32)
    c1, c2 = (32, 32), (32, 32 + 2 * radius - 2)
    d1 = np.hypot(yy - c1[0], xx - c1[1])
    d2 = np.hypot(yy - c2[0], xx - c2[1])
    labels[(d1 <= radius) & (d1 <= d2)] = 1
    labels[(d2 <= radius) & (d2 < d1)] = 2
    return labels


def _ideal_maps(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a perfect model predicts, computed by hand (no training code involved)."""
    inner = np.zeros(labels.shape, np.float32)
    outer = np.zeros(labels.shape, np.float32)
    for lab in range(1, labels.max() + 1):
        obj = labels == lab
        cy, cx = ndi.center_of_mass(obj)
        yy, xx = np.nonzero(obj)
        inner[obj] = 1 / (1 + ((yy - cy) ** 2 + (xx - cx) ** 2) / np.sqrt(obj.sum()))
        dist = ndi.distance_transform_edt(obj)
        outer[obj] = dist[obj] / dist.max()
    return inner, outer, (labels > 0).astype(np.float32)


def test_separates_two_touching_discs() -> None:
    truth = _two_touching_discs()
    assert ndi.label(truth > 0)[1] == 1  # one blob: only the maps can split it
    inner, outer, fg = _ideal_maps(truth)
    labels = deep_watershed(inner, outer, fg)
    assert labels.dtype == np.int32
    assert labels.max() == 2
    for lab in (1, 2):
        obj = truth == lab
        found = np.bincount(labels[obj], minlength=3)
        best = int(found[1:].argmax()) + 1
        iou = (obj & (labels == best)).sum() / (obj | (labels == best)).sum()
        assert iou > 0.9


def test_without_fgbg_and_with_channel_axis() -> None:
    inner, outer, _ = _ideal_maps(_two_touching_discs())
    labels = deep_watershed(inner[..., None], outer[..., None])
    assert labels.max() == 2


def test_accepts_the_two_channel_softmax() -> None:
    inner, outer, fg = _ideal_maps(_two_touching_discs())
    softmax = np.stack([1 - fg, fg], axis=-1)
    np.testing.assert_array_equal(
        deep_watershed(inner, outer, softmax), deep_watershed(inner, outer, fg)
    )


@pytest.mark.parametrize("algorithm", ["peak_local_max", "h_maxima"])
def test_empty_prediction_gives_no_objects(algorithm: str) -> None:
    zeros = np.zeros((64, 64), np.float32)
    labels = deep_watershed(zeros, zeros, zeros, maxima_algorithm=algorithm)
    assert labels.shape == (64, 64)
    assert labels.dtype == np.int32
    assert not labels.any()
    noise = np.random.default_rng(0).random((64, 64)).astype(np.float32) * 0.005
    assert not deep_watershed(noise, noise, noise, maxima_algorithm=algorithm).any()


def test_h_maxima_also_splits_discs() -> None:
    inner, outer, fg = _ideal_maps(_two_touching_discs())
    assert deep_watershed(inner, outer, fg, maxima_algorithm="h_maxima").max() == 2


def test_small_objects_removed_and_labels_sequential() -> None:
    truth = _two_touching_discs()
    truth[2:5, 2:5] = 3  # a 9-pixel speck
    inner, outer, fg = _ideal_maps(truth)
    kept = deep_watershed(inner, outer, fg, radius=2, small_objects_threshold=0)
    assert kept.max() == 3
    dropped = deep_watershed(inner, outer, fg, radius=2, small_objects_threshold=20)
    assert np.array_equal(np.unique(dropped), [0, 1, 2])


def test_ideal_maps_of_generated_images_recover_every_nucleus() -> None:
    """Targets (training code) and post-processing agree: a perfect model scores near 1."""
    for seed in (0, 1, 2):
        _, truth = generate((256, 256), seed=seed, coverage=0.4, clumping=0.7)
        maps = targets(truth)
        labels = deep_watershed(maps[..., 0], maps[..., 1], maps[..., 2], radius=4)
        n_true = int(truth.max())
        # Count true nuclei matched by a predicted object with IoU > 0.5.
        matched = 0
        for lab in range(1, n_true + 1):
            obj = truth == lab
            hits = np.bincount(labels[obj])
            hits[0] = 0
            best = int(hits.argmax())
            if best and (obj & (labels == best)).sum() / (obj | (labels == best)).sum() > 0.5:
                matched += 1
        assert matched >= 0.97 * n_true
        assert labels.max() <= n_true * 1.03 + 1


def test_targets_shapes_and_ranges() -> None:
    truth = _two_touching_discs()
    inner, outer = inner_distance(truth), outer_distance(truth)
    assert inner.dtype == outer.dtype == np.float32
    assert inner.max() == pytest.approx(1.0, abs=0.05)
    assert outer.max() == pytest.approx(1.0)
    assert (inner[truth == 0] == 0).all() and (outer[truth == 0] == 0).all()
    # The seam between the touching discs is a valley of the outer distance.
    seam = outer[32, 42:45].min()
    assert seam < 0.2 * outer.max()
    onehot = fgbg(truth)
    assert onehot.shape == (*truth.shape, 2)
    np.testing.assert_array_equal(onehot.sum(-1), 1.0)


def test_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        deep_watershed(np.zeros((8, 8)), np.zeros((8, 9)))
    with pytest.raises(ValueError):
        deep_watershed(np.zeros((8, 8)), np.zeros((8, 8)), np.zeros((9, 8)))
    with pytest.raises(ValueError):
        deep_watershed(np.zeros((8, 8)), np.zeros((8, 8)), maxima_algorithm="magic")


def test_flooding_clumps_in_bands_gives_the_labels_of_one_whole_image_flood(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Crowded components flood a band at a time (to bound memory); the labels must be those
    of flooding them all at once."""
    from consumers.processing import deep_watershed as module

    _, labels = generate((600, 700), seed=21, coverage=0.45, clumping=0.8)
    rng = np.random.default_rng(0)
    t = targets(labels).astype(np.float32)
    inner = t[..., 0] + rng.normal(0, 0.05, labels.shape).astype(np.float32)
    outer = t[..., 1] + rng.normal(0, 0.05, labels.shape).astype(np.float32)
    floods = []
    flood = module.watershed
    monkeypatch.setattr(module, "watershed", lambda *a, **k: floods.append(1) or flood(*a, **k))
    monkeypatch.setattr(module, "_FLOOD_PIXELS", 10**9)  # one flood over every clump
    whole = deep_watershed(inner, outer, t[..., 2])
    assert len(floods) == 1
    monkeypatch.setattr(module, "_FLOOD_PIXELS", 2_000)  # a clump or two per flood
    banded = deep_watershed(inner, outer, t[..., 2])
    assert len(floods) > 20 and whole.max() > 150
    np.testing.assert_array_equal(banded, whole)
