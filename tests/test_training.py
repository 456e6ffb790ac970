"""The training framework shared by the nuclear and whole-cell models: the data pool, the fit
loop, export and the serving signature, on tiny generated images (a two-step run)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from consumers.processing.contract import CYTOPLASM_MODEL, WHOLE_CELL_MODEL
from models.training import train_cytoplasm, train_nuclear, train_wholecell
from models.training.data import Pool
from models.training.tuning import figures, segment_all, tune


def tiny_pool(module, **overrides) -> Pool:
    args = module.parse_args(
        ["--pool", "2", "--pool-tile", "64", "--tile", "32", "--batch", "3", "--seed", "1"]
    )
    for k, v in overrides.items():
        setattr(args, k, v)
    return module.make_pool(args)


def test_the_whole_cell_pool_serves_two_channels_and_six_heads() -> None:
    pool = tiny_pool(train_wholecell)
    x, y = pool.batch()
    assert x.shape == (3, 32, 32, 2)
    assert set(y) == set(WHOLE_CELL_MODEL.output_names)
    for c in WHOLE_CELL_MODEL.compartments:
        fg = y[c.heads.foreground]
        assert fg.shape == (3, 32, 32, 2)
        np.testing.assert_allclose(fg.sum(-1), 1.0)
        assert y[c.heads.inner].max() <= 1.0 and y[c.heads.outer].min() >= 0.0
    # Nuclei lie inside cells: nuclear foreground implies whole-cell foreground.
    nuclear = y["nuclear_fgbg"][..., 1] > 0.5
    assert np.all(y["whole_cell_fgbg"][..., 1][nuclear] > 0.5)


def test_the_cytoplasm_pool_serves_one_channel_and_three_whole_cell_heads() -> None:
    pool = tiny_pool(train_cytoplasm)
    x, y = pool.batch()
    assert x.shape == (3, 32, 32, 1)
    assert set(y) == set(CYTOPLASM_MODEL.output_names)
    np.testing.assert_allclose(y[CYTOPLASM_MODEL.heads.foreground].sum(-1), 1.0)


def test_the_nuclear_pool_is_the_same_for_the_same_seed() -> None:
    a, b = tiny_pool(train_nuclear), tiny_pool(train_nuclear)
    np.testing.assert_array_equal(a.x, b.x)
    xa, _ = a.batch()
    xb, _ = b.batch()
    np.testing.assert_array_equal(xa, xb)
    assert xa.shape == (3, 32, 32, 1)


def test_refresh_every_replaces_images_only_every_nth_step() -> None:
    pool = tiny_pool(train_wholecell, refresh_every=2)
    first = pool.next_seed
    pool.refresh()
    assert pool.next_seed == first
    pool.refresh()
    assert pool.next_seed == first + 1


def test_tuning_finds_settings_that_recover_ideal_maps() -> None:
    from tests.test_contract import disc_labels, ideal_maps

    truth = disc_labels([(30, 30), (30, 56), (70, 50)], radius=13)
    heads = WHOLE_CELL_MODEL.heads
    maps = ideal_maps(WHOLE_CELL_MODEL, {"whole-cell": truth, "nuclear": truth})
    planes = [{h: m[..., -1] for h, m in maps.items()}]
    params, fig = tune(planes, [truth], lambda _: None, heads, grid={"radius": [3, 5]})
    assert fig["f1"] == 1.0
    labels = segment_all(planes, params, heads)
    assert figures([(truth, labels[0])])["f1"] == 1.0


def test_two_training_steps_export_a_savedmodel_with_the_contracts_signature(
    tmp_path: Path,
) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from models.training import fit
    from models.training.model import build_model

    fit.setup(threads=2, seed=0)
    pool = tiny_pool(train_wholecell)
    model = build_model(widths=(4, 4, 4, 4, 4), contract=WHOLE_CELL_MODEL)
    loss, weights = fit.compile_model(model, WHOLE_CELL_MODEL, lr=1e-3, steps=2)
    assert set(loss) == set(weights) == set(WHOLE_CELL_MODEL.output_names)
    history, _ = fit.train(model, pool, steps=2, log_every=1, log=lambda _: None)
    assert [h["step"] for h in history] == [1, 2]
    assert all(np.isfinite(h["loss"]) for h in history)
    version_dir, signature, serve = fit.export(model, tmp_path, WHOLE_CELL_MODEL, lambda _: None)
    assert version_dir == tmp_path / "1" and (version_dir / "saved_model.pb").is_file()
    assert set(signature["outputs"]) == set(WHOLE_CELL_MODEL.output_names)  # type: ignore[arg-type]
    planes = fit.predict_planes(serve, WHOLE_CELL_MODEL, np.zeros((1, 32, 48, 2), np.float32))
    assert {p.shape for p in planes.values()} == {(32, 48)}


def test_a_contract_whose_size_multiple_the_network_cannot_meet_is_refused() -> None:
    from dataclasses import replace

    from models.training.model import build_model

    with pytest.raises(ValueError, match="the network needs multiples of 16"):
        build_model(contract=replace(WHOLE_CELL_MODEL, size_multiple=8))
