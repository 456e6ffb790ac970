"""The whole-cell generator: exact, consistent labels and channels that look like their stains."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import label as connected_components
from skimage.measure import regionprops
from skimage.segmentation import find_boundaries

from evaluation.cells import (
    CHANNELS,
    MIN_CELL_AREA,
    MIN_NUCLEUS_AREA,
    MODEL_MPP,
    CellImage,
    generate_cells,
)

SHAPE = (192, 192)
# Quiet optics and a bright camera, so that the tests of the channels see the stains' shape.
CLEAN = {"photons": 3000.0, "blur": 0.8, "bleed_through": 0.0, "debris": 0.0}


@pytest.fixture(scope="module")
def images() -> list[CellImage]:
    """Images of both settings, with every parameter drawn."""
    culture = [generate_cells(SHAPE, seed=s, setting="culture") for s in range(6)]
    tissue = [generate_cells(SHAPE, seed=s, setting="tissue") for s in range(3)]
    return culture + tissue


def _touching_pairs(labels: np.ndarray) -> int:
    """4-adjacent pixel pairs that belong to two different cells."""
    right = (labels[:, 1:] != labels[:, :-1]) & (labels[:, 1:] > 0) & (labels[:, :-1] > 0)
    down = (labels[1:] != labels[:-1]) & (labels[1:] > 0) & (labels[:-1] > 0)
    return int(right.sum() + down.sum())


def _edge_cells(labels: np.ndarray) -> set[int]:
    rim = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return set(np.unique(rim[rim > 0]).tolist())


def test_same_seed_same_image_other_seed_other_image() -> None:
    a = generate_cells((96, 128), seed=11)
    b = generate_cells((96, 128), seed=11)
    c = generate_cells((96, 128), seed=12)
    for name in (*CHANNELS, "cells", "nuclei", "debris"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.params == b.params
    assert not np.array_equal(a.nuclear, c.nuclear)
    assert a.cells.shape == a.nuclear.shape == (96, 128)
    assert a.cells.dtype == a.nuclei.dtype == np.int32
    assert all(getattr(a, name).dtype == np.float32 for name in CHANNELS)
    assert a.mpp == MODEL_MPP


def test_labels_are_sequential_single_pieces_above_the_minimum_area(
    images: list[CellImage],
) -> None:
    for image in images:
        cells, nuclei = image.cells, image.nuclei
        n = int(cells.max())
        assert n > 0
        assert np.array_equal(np.unique(cells), np.arange(n + 1))
        assert connected_components(cells, background=0, connectivity=1).max() == n
        assert np.bincount(cells.ravel())[1:].min() >= MIN_CELL_AREA
        present = np.unique(nuclei[nuclei > 0])
        assert connected_components(nuclei, background=0, connectivity=1).max() == present.size
        assert np.bincount(nuclei.ravel())[present].min() >= MIN_NUCLEUS_AREA


def test_the_nucleus_of_cell_k_is_label_k_inside_cell_k(images: list[CellImage]) -> None:
    ratios: list[float] = []
    for image in images:
        inside = image.nuclei > 0
        assert np.array_equal(image.cells[inside], image.nuclei[inside])
        # Every cell wholly in view shows its nucleus; only cells cut by the edge may not.
        without = set(range(1, int(image.cells.max()) + 1)) - set(np.unique(image.nuclei))
        assert without <= _edge_cells(image.cells)
        areas = np.bincount(image.cells.ravel())
        nuclear_areas = np.bincount(image.nuclei.ravel(), minlength=areas.size)
        whole = [k for k in range(1, areas.size) if k not in _edge_cells(image.cells)]
        ratios.extend(nuclear_areas[whole] / areas[whole])
    # A nucleus is well inside its cell: most of a cell is cytoplasm.
    assert len(ratios) > 20
    assert np.median(ratios) < 0.6


def test_touching_cells_keep_distinct_labels() -> None:
    for image in (
        generate_cells(SHAPE, seed=3, setting="tissue", coverage=1.0),
        generate_cells(SHAPE, seed=3, setting="culture", coverage=0.6, clustering=0.9),
    ):
        assert _touching_pairs(image.cells) > 50
        # Merging touching cells would give fewer foreground pieces than cells.
        _, blobs = ndi.label(image.cells > 0)
        assert blobs < image.cells.max()


def test_tissue_is_packed_and_culture_sparse() -> None:
    tissue = generate_cells((256, 256), seed=4, setting="tissue", coverage=1.0)
    sparse = generate_cells((256, 256), seed=4, setting="culture", coverage=0.08, clustering=0.0)
    assert (tissue.cells > 0).mean() > 0.9
    assert (sparse.cells > 0).mean() < 0.25

    # Packed: most of a tissue cell's outline borders another cell; sparse cells mostly do not.
    def shared(cells: np.ndarray) -> float:
        border = find_boundaries(cells, mode="inner") & (cells > 0)
        padded = np.pad(cells, 1)
        other = np.zeros(cells.shape, dtype=bool)
        for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
            neighbour = padded[dy : dy + cells.shape[0], dx : dx + cells.shape[1]]
            other |= (neighbour > 0) & (neighbour != cells)
        return float((other & border).sum() / border.sum())

    assert shared(tissue.cells) > 0.6
    assert shared(sparse.cells) < 0.3
    # Tissue cells are smaller and more of them fit in the same field.
    assert tissue.cells.max() > 4 * sparse.cells.max()


def test_sizes_match_real_cells_at_the_model_pixel_size(images: list[CellImage]) -> None:
    def diameters_um(labels: np.ndarray) -> np.ndarray:
        inner = [r for r in regionprops(labels) if r.label not in _edge_cells(labels)]
        return np.array([r.equivalent_diameter_area for r in inner]) * MODEL_MPP

    culture = np.concatenate(
        [diameters_um(i.cells) for i in images if i.params.setting == "culture"]
    )
    tissue = np.concatenate([diameters_um(i.cells) for i in images if i.params.setting == "tissue"])
    nuclei = np.concatenate([diameters_um(i.nuclei) for i in images])
    assert 18.0 <= np.median(culture) <= 50.0
    assert 8.0 <= np.median(tissue) <= 22.0
    assert 5.0 <= np.median(nuclei) <= 18.0
    assert np.percentile(tissue, 90) / np.percentile(tissue, 10) > 1.3  # varied sizes


def test_rounded_cells_are_small_and_round_spread_cells_large_and_irregular() -> None:
    common: dict[str, float | str] = {
        "setting": "culture",
        "coverage": 0.3,
        "cell_diameter": 50.0,
        "clustering": 0.0,
    }
    rounded = generate_cells(
        (256, 256), seed=8, rounded_fraction=1.0, spread_fraction=0.0, **common
    )
    spread = generate_cells((256, 256), seed=8, rounded_fraction=0.0, spread_fraction=1.0, **common)

    def inner(image: CellImage) -> list:
        return [r for r in regionprops(image.cells) if r.label not in _edge_cells(image.cells)]

    assert np.median([r.area for r in inner(spread)]) > 3 * np.median(
        [r.area for r in inner(rounded)]
    )
    assert np.median([r.solidity for r in inner(rounded)]) > 0.95
    assert np.median([r.solidity for r in inner(spread)]) < np.median(
        [r.solidity for r in inner(rounded)]
    )


def _background(image: CellImage, channel: str, far: int = 8) -> np.ndarray:
    away = ndi.distance_transform_edt(image.cells == 0) > far
    return getattr(image, channel)[away]


def test_membrane_is_bright_at_cell_borders_dim_inside() -> None:
    image = generate_cells(SHAPE, seed=5, setting="culture", coverage=0.4, **CLEAN)
    edge = ndi.distance_transform_edt(~find_boundaries(image.cells, mode="inner"))
    border = find_boundaries(image.cells, mode="inner") & (image.cells > 0)
    interior = (image.cells > 0) & (edge >= 5) & (image.nuclei == 0)
    floor = np.median(_background(image, "membrane"))
    assert np.median(image.membrane[border]) - floor > 2 * (
        np.median(image.membrane[interior]) - floor
    )


def test_cytoplasm_is_bright_inside_cells_dark_outside() -> None:
    image = generate_cells(SHAPE, seed=6, setting="culture", coverage=0.3, **CLEAN)
    edge = ndi.distance_transform_edt(~find_boundaries(image.cells, mode="inner"))
    cytoplasm = (image.cells > 0) & (edge >= 3) & (image.nuclei == 0)
    background = _background(image, "cytoplasm")
    assert np.median(image.cytoplasm[cytoplasm]) > np.median(background) + 5 * background.std()


def test_nuclear_channel_is_bright_in_nuclei_and_dim_in_cytoplasm() -> None:
    image = generate_cells(SHAPE, seed=7, setting="culture", coverage=0.3, **CLEAN)
    nuclei = ndi.binary_erosion(image.nuclei > 0, iterations=2)
    cytoplasm = (image.cells > 0) & ~ndi.binary_dilation(image.nuclei > 0, iterations=4)
    assert np.median(image.nuclear[nuclei]) > 3 * np.median(image.nuclear[cytoplasm])


def _edge_contrast(image: CellImage) -> float:
    """Median over cells of (brightfield just outside the cell / a little further out) - 1,
    compared cell by cell because the illumination is uneven across the field."""
    outside, index = ndi.distance_transform_edt(image.cells == 0, return_indices=True)
    nearest = image.cells[index[0], index[1]]
    cells = np.arange(1, int(image.cells.max()) + 1)
    ring = (outside >= 1) & (outside <= 2)
    beyond = (outside >= 8) & (outside <= 14)
    with np.errstate(invalid="ignore"):  # a cell with no background around it: NaN, left out
        at_edge = ndi.mean(image.brightfield, np.where(ring, nearest, 0), cells)
        around = ndi.mean(image.brightfield, np.where(beyond, nearest, 0), cells)
    seen = np.isfinite(at_edge) & np.isfinite(around)
    assert seen.sum() >= 3
    return float(np.median(at_edge[seen] / around[seen] - 1.0))


def test_brightfield_has_a_bright_or_dark_halo_at_cell_edges() -> None:
    # Only the halo differs between these images: the same cells, light and camera noise.
    contrast = {
        halo: _edge_contrast(
            generate_cells(
                SHAPE,
                seed=9,
                setting="culture",
                coverage=0.3,
                cell_diameter=40.0,
                halo=halo,
                **CLEAN,
            )
        )
        for halo in (-0.3, 0.0, 0.3)
    }
    assert contrast[0.3] > 0.05  # a bright phase halo
    assert contrast[-0.3] < -0.05  # a dark defocus edge
    assert contrast[-0.3] + 0.05 < contrast[0.0] < contrast[0.3] - 0.05


def test_brightfield_is_low_contrast_transmitted_light() -> None:
    image = generate_cells(SHAPE, seed=10, setting="culture", coverage=0.3, **CLEAN)
    inside = image.brightfield[image.cells > 0].mean()
    background = _background(image, "brightfield").mean()
    # Light everywhere: cells take away only a little of it.
    assert 0.6 * background < inside < background


def test_debris_is_drawn_but_never_labelled() -> None:
    image = generate_cells(SHAPE, seed=2, setting="culture", coverage=0.2, debris=8.0)
    assert image.debris.sum() > 10
    assert not image.cells[image.debris].any()
    assert not image.nuclei[image.debris].any()
    # Visible: debris is brighter than the background in some fluorescent channel.
    near = ndi.binary_dilation(image.debris, iterations=6) & ~image.debris & (image.cells == 0)
    assert any(
        getattr(image, c)[image.debris].max() > getattr(image, c)[near].max()
        for c in ("nuclear", "membrane", "cytoplasm")
    )
    clean = generate_cells(SHAPE, seed=2, setting="culture", coverage=0.2, debris=0.0)
    assert not clean.debris.any()


def test_overrides_are_kept_and_recorded() -> None:
    image = generate_cells(SHAPE, seed=1, setting="tissue", coverage=0.7, cell_diameter=24.0)
    assert image.params.setting == "tissue"
    assert image.params.coverage == 0.7
    assert image.params.cell_diameter == 24.0


def test_stack_gives_channels_in_the_order_named() -> None:
    image = generate_cells((64, 64), seed=0)
    stacked = image.stack(("nuclear", "membrane"))
    assert stacked.shape == (64, 64, 2)
    assert np.array_equal(stacked[..., 1], image.membrane)
    assert image.stack().shape == (64, 64, 4)
    with pytest.raises(ValueError, match="channels must name"):
        image.stack(("nuclear", "dapi"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape": (16, 64)}, "at least 32x32"),
        ({"setting": "organoid"}, "setting must be one of"),
        ({"colour": 3}, "unknown cell parameter"),
        ({"coverage": 1.5}, "coverage"),
        ({"spread_fraction": 0.7, "rounded_fraction": 0.5}, "at most 1"),
        ({"halo": 2.0}, "halo"),
    ],
)
def test_rejects_bad_arguments_saying_what_is_wrong(kwargs: dict, message: str) -> None:
    arguments = {"shape": (64, 64), "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate_cells(**arguments)


@pytest.mark.parametrize(("seed", "size"), [(2, 48), (11, 64), (73, 64)])
def test_small_images_draw_brightfield_without_negative_light(seed: int, size: int) -> None:
    # These seeds once drew a light field below zero and crashed in the camera's shot noise.
    image = generate_cells((size, size), seed=seed)
    assert np.isfinite(image.brightfield).all() and image.brightfield.min() >= 0.0
