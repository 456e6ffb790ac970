"""The bundled models as consumers run them, served by the real model server: tiled the
consumer's way they give their whole-image outputs, and over the lean wire (float16, only the
heads used) the labels of the float32 wire.

The models' U-Net is strided, so it is not shift-equivariant: only tiles on its 16-px grid with
the contract's ``reach`` of context reproduce the whole image.
"""

from __future__ import annotations

import numpy as np
import pytest

from consumers.processing.contract import CYTOPLASM_MODEL, WHOLE_CELL_MODEL, ModelContract
from consumers.processing.normalize import normalize
from consumers.processing.pipeline import predict_maps, segment
from consumers.segmentation import BUNDLED_CONTRACTS, NUCLEAR_MODEL, SegmentationSettings
from evaluation.cells import generate_cells
from evaluation.quality import score
from evaluation.served import ServedModel

CHANNELS = {
    NUCLEAR_MODEL.name: ("nuclear",),
    WHOLE_CELL_MODEL.name: ("nuclear", "membrane"),
    CYTOPLASM_MODEL.name: ("cytoplasm",),
}
each_model = pytest.mark.parametrize("contract", BUNDLED_CONTRACTS, ids=lambda c: c.name)


def cells_image(contract: ModelContract, shape: tuple[int, int], seed: int) -> np.ndarray:
    drawn = generate_cells(shape, seed=seed, setting="tissue")
    return drawn.stack(CHANNELS[contract.name])


@each_model
def test_tiles_with_the_contracts_reach_give_the_whole_image_outputs_and_labels(
    nuclear_model_server: str, contract: ModelContract
) -> None:
    image = normalize(cells_image(contract, (720, 656), 60_000_001))
    predict = ServedModel(nuclear_model_server, contract.name, None, contract)
    common = {"size_multiple": contract.size_multiple, "reach": contract.reach}
    whole = predict_maps(image, predict, whole_pixels=1 << 22, **common)
    calls = []

    def counted(batch: np.ndarray):
        calls.append(batch.shape)
        return predict(batch)

    tiled = predict_maps(image, counted, tile_size=256, whole_pixels=0, batch_size=4, **common)
    assert len(calls) > 4  # 12 tiles of 256 px, four a call
    for head, maps in whole.items():
        assert np.abs(tiled[head] - maps).max() < 1e-4, head
    np.testing.assert_array_equal(
        contract.postprocess_stacked(tiled), contract.postprocess_stacked(whole)
    )


@each_model
def test_the_lean_wire_gives_the_float32_wires_labels_for_3_8_of_the_bytes(
    nuclear_model_server: str, contract: ModelContract
) -> None:
    image = cells_image(contract, (1024, 1024), 60_000_002)
    options = SegmentationSettings().pipeline_options(contract)
    labels, answers = {}, {}
    for lean in (False, True):
        served = ServedModel(nuclear_model_server, contract.name, None, contract, lean=lean)

        def predict(batch: np.ndarray, served: ServedModel = served, lean: bool = lean):
            outputs = served(batch)
            answers[lean] = sum(np.asarray(v).nbytes for v in outputs.values())
            return contract.foreground_only(outputs)

        labels[lean] = segment(image, predict, postprocess=contract.postprocess_stacked, **options)
    assert answers[True] * 8 <= answers[False] * 3  # float16, one foreground channel: 3/8
    for k in range(labels[True].shape[-1]):  # each compartment
        agreement = score(labels[False][..., k], labels[True][..., k])
        assert agreement.n_true > 300
        assert agreement.f1 >= 0.99, (contract.name, k, agreement)
