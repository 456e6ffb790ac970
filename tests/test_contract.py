"""Model contracts with several compartments, and post-processing one label image per
compartment from the heads of a two-compartment model."""

from __future__ import annotations

import numpy as np
import pytest

from consumers.processing.contract import WHOLE_CELL_MODEL, Compartment, Heads, ModelContract
from consumers.segmentation import NUCLEAR_MODEL
from evaluation.quality import score
from models.training.targets import targets


def disc_labels(centres, radius, shape=(96, 96)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        labels[((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2) & (labels == 0)] = i
    return labels


def ideal_maps(contract: ModelContract, truth: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Blended (y, x, K) maps a perfect model would give, as the pipeline hands them over."""
    maps = {}
    for c in contract.compartments:
        t = targets(truth[c.name])
        maps[c.heads.inner] = t[..., 0:1]
        maps[c.heads.outer] = t[..., 1:2]
        maps[c.heads.foreground] = np.stack([1 - t[..., 2], t[..., 2]], axis=-1)
    return maps


def test_the_nuclear_model_keeps_one_compartment_and_deepcells_head_names() -> None:
    (only,) = NUCLEAR_MODEL.compartments
    assert only.name == "nuclear" and only.heads == Heads()
    assert NUCLEAR_MODEL.output_names == ("inner_distance", "outer_distance", "fgbg")


def test_the_whole_cell_model_takes_two_channels_and_has_two_compartments() -> None:
    assert WHOLE_CELL_MODEL.input_channels == 2
    assert [c.name for c in WHOLE_CELL_MODEL.compartments] == ["whole-cell", "nuclear"]
    assert len(set(WHOLE_CELL_MODEL.output_names)) == 6
    for c in WHOLE_CELL_MODEL.compartments:
        assert {"radius", "maxima_threshold", "fgbg_threshold"} <= set(c.postprocessing)


def test_postprocess_compartments_gives_cells_and_nuclei_from_their_own_heads() -> None:
    cells = disc_labels([(30, 30), (30, 58), (70, 50)], radius=15)
    nuclei = disc_labels([(30, 30), (30, 58), (70, 50)], radius=6)
    maps = ideal_maps(WHOLE_CELL_MODEL, {"whole-cell": cells, "nuclear": nuclei})
    labels = WHOLE_CELL_MODEL.postprocess_compartments(maps)
    assert set(labels) == {"whole-cell", "nuclear"}
    for name, truth in (("whole-cell", cells), ("nuclear", nuclei)):
        s = score(truth, labels[name])
        assert (s.tp, s.fp, s.fn) == (3, 0, 0), name
        assert s.mean_iou > 0.8, name
    # The first compartment is what the single-label postprocess gives.
    np.testing.assert_array_equal(WHOLE_CELL_MODEL.postprocess(maps), labels["whole-cell"])


def test_each_compartment_uses_its_own_settings() -> None:
    heads = Heads("a_inner", "a_outer", "a_fgbg")
    contract = ModelContract(
        name="Two",
        mpp=1.0,
        heads=heads,
        compartment="whole-cell",
        also=(
            Compartment("nuclear", Heads("b_inner", "b_outer", "b_fgbg"), {"fgbg_threshold": 2.0}),
        ),
    )
    truth = disc_labels([(40, 40)], radius=12)
    maps = ideal_maps(contract, {"whole-cell": truth, "nuclear": truth})
    labels = contract.postprocess_compartments(maps)
    assert labels["whole-cell"].max() == 1
    assert labels["nuclear"].max() == 0  # no probability reaches a threshold of 2


def test_foreground_only_keeps_every_compartments_foreground_channel() -> None:
    outputs = {name: np.zeros((1, 8, 8, 1)) for name in WHOLE_CELL_MODEL.output_names}
    for c in WHOLE_CELL_MODEL.compartments:
        outputs[c.heads.foreground] = np.stack([np.zeros((1, 8, 8)), np.ones((1, 8, 8))], axis=-1)
    kept = WHOLE_CELL_MODEL.foreground_only(outputs)
    for c in WHOLE_CELL_MODEL.compartments:
        assert kept[c.heads.foreground].shape == (1, 8, 8, 1)
        assert kept[c.heads.foreground].min() == 1.0


@pytest.mark.parametrize(
    ("also", "message"),
    [
        ((Compartment("nuclear"),), "compartment names must differ"),
        ((Compartment("cells"),), "head names must differ"),
    ],
)
def test_clashing_compartments_are_refused(also: tuple[Compartment, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelContract(name="Bad", mpp=1.0, also=also)
