"""The classical Otsu + watershed baseline on images whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from evaluation.baseline import classical_segment
from evaluation.quality import aggregate, score
from evaluation.synthetic import generate


def discs(centres, radius, shape=(128, 128)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        labels[((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2) & (labels == 0)] = i
    image = ndi.gaussian_filter((labels > 0).astype(np.float32), 1.0) * 800 + 100
    noise = np.random.default_rng(0).normal(0, 10, shape).astype(np.float32)
    return image + noise, labels


def test_separate_nuclei_are_found_one_each():
    image, truth = discs([(30, 30), (30, 90), (90, 60)], radius=10)
    s = score(truth, classical_segment(image))
    assert (s.tp, s.fp, s.fn) == (3, 0, 0)
    assert s.mean_iou > 0.85


def test_touching_nuclei_are_split_at_the_neck():
    image, truth = discs([(64, 50), (64, 69)], radius=10)
    labels = classical_segment(image)
    s = score(truth, labels)
    assert s.tp == 2 and s.merges == 0


def test_blank_and_constant_images_give_no_objects():
    assert classical_segment(np.zeros((64, 64))).max() == 0
    assert classical_segment(np.full((64, 64), 7.0)).max() == 0
    noise = np.random.default_rng(1).normal(100, 1, (64, 64))
    labels = classical_segment(noise)
    assert labels.dtype == np.int32 and labels.shape == (64, 64)


def test_specks_below_the_minimum_area_are_dropped():
    image, _ = discs([(64, 64)], radius=2)  # ~13 px: under 12 um^2 at 0.65 um/px (28 px)
    assert classical_segment(image).max() == 0
    assert classical_segment(image, min_area_um2=2.0).max() == 1


def test_pixel_size_scales_the_defaults():
    image, truth = discs([(64, 40), (64, 88)], radius=20, shape=(128, 128))
    # At 1.3 um/px the same nuclei are half as many pixels across; the defaults follow mpp.
    s = score(truth, classical_segment(image, mpp=0.325))
    assert s.tp == 2
    with pytest.raises(ValueError, match="mpp"):
        classical_segment(image, mpp=0)
    with pytest.raises(ValueError, match="2D"):
        classical_segment(np.zeros((2, 8, 8, 1)))


def test_baseline_quality_on_synthetic_nuclei_is_recorded_floor():
    scores = []
    for seed in range(4):
        image, truth = generate((256, 256), seed=seed)
        scores.append(score(truth, classical_segment(image)))
    total = aggregate(scores)
    # A floor, not a target: the baseline scores about F1 0.76 on 20 seeds at 512x512.
    assert total.f1 > 0.6, total


@pytest.mark.parametrize("stain", ["membrane", "cytoplasm"])
def test_whole_cell_baseline_grows_each_nucleus_into_its_cell(stain: str) -> None:
    from evaluation.baseline import classical_whole_cell
    from evaluation.cells import generate_cells

    drawn = generate_cells((192, 192), seed=3, setting="culture")
    cells, nuclei = classical_whole_cell(drawn.nuclear, getattr(drawn, stain), stain_kind=stain)
    assert cells.shape == nuclei.shape == drawn.cells.shape
    found = np.unique(nuclei[nuclei > 0])
    assert found.size > 0
    # Cell k holds nucleus k, and is larger than it.
    assert np.all(cells[nuclei > 0] == nuclei[nuclei > 0])
    assert (cells > 0).sum() > (nuclei > 0).sum()
    s = score(drawn.cells, cells)
    assert s.tp > 0


def test_whole_cell_baseline_refuses_an_unknown_stain_and_mismatched_images() -> None:
    from evaluation.baseline import classical_whole_cell

    image = np.zeros((32, 32))
    with pytest.raises(ValueError, match="stain_kind must be one of membrane, cytoplasm"):
        classical_whole_cell(image, image, stain_kind="brightfield")
    with pytest.raises(ValueError, match="two 2D images of one shape"):
        classical_whole_cell(image, np.zeros((16, 16)), stain_kind="membrane")


@pytest.mark.parametrize(("stain", "floor"), [("cytoplasm", 0.5), ("brightfield", 0.02)])
def test_the_one_channel_baseline_finds_cells_in_cytoplasm_and_brightfield(
    stain: str, floor: float
) -> None:
    from evaluation.baseline import classical_cytoplasm
    from evaluation.cells import generate_cells

    pooled = [
        score(d.cells, classical_cytoplasm(getattr(d, stain), stain_kind=stain))
        for d in (generate_cells((256, 256), seed=77_000_000 + s) for s in range(4))
    ]
    assert aggregate(pooled).f1 > floor  # a floor: the figures are in make evaluate


def test_the_one_channel_baseline_refuses_an_unknown_stain() -> None:
    from evaluation.baseline import classical_cytoplasm

    with pytest.raises(ValueError, match="cytoplasm, brightfield"):
        classical_cytoplasm(np.zeros((32, 32)), stain_kind="membrane")
