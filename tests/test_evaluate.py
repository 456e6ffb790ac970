"""The evaluation command: end to end against a real embedded model server with the bundled
model, and the data set extraction from a wheel (built here, so no network is needed)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from evaluation import EvaluationError, datasets, wholecell_report
from evaluation.datasets import dsb2018_dataset, extract_members, prepare_dsb2018
from evaluation.report import main as run_evaluation
from evaluation.served import BUNDLED_MODELS

MODELS_DIR = BUNDLED_MODELS
MODEL = "NuclearSegmentation"


def test_evaluation_runs_the_served_model_and_beats_the_baseline_on_synthetic_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "evaluation.json"
    argv = [
        "--datasets",
        "synthetic",
        "--limit",
        "2",
        "--synthetic-size",
        "384",
        "--tracking",
        "off",
        "--wholecell",
        "off",
    ]
    code = run_evaluation([*argv, "--models-dir", str(MODELS_DIR), "--out", str(out)])

    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads(out.read_text())
    assert report["model"]["name"] == MODEL and report["model"]["version_answered"] >= 1
    assert report["pipeline"]["model_mpp"] == 0.65
    synthetic = report["datasets"]["synthetic"]
    assert synthetic["images"] == 2 and synthetic["image_size"] == [384, 384]
    model, baseline = synthetic["headline"]["model"], synthetic["headline"]["baseline"]
    for figures in (model, baseline):
        assert {"precision", "recall", "f1", "mean_ap", "mean_matched_iou", "splits", "merges"} <= (
            figures.keys()
        )
        assert figures["n_true"] > 0 and figures["seconds_per_image"] > 0
        assert len(figures["images"]) == 2
        assert 0.0 <= figures["mean_ap"] <= figures["f1"] <= 1.0
    assert model["f1"] > baseline["f1"]
    assert "tracking" not in report  # --tracking off
    assert "synthetic" in printed and "baseline" in printed


def test_the_whole_cell_models_are_scored_per_stain_and_compartment_beside_their_baselines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "evaluation.json"
    argv = ["--datasets", "synthetic", "--tracking", "off", "--wholecell", "only"]
    argv += ["--wholecell-count", "2", "--wholecell-size", "256"]
    code = run_evaluation([*argv, "--models-dir", str(MODELS_DIR), "--out", str(out)])

    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads(out.read_text())
    assert report["datasets"] == {}  # only the whole-cell section
    section = report["wholecell"]
    assert set(section["models"]) == set(wholecell_report.served_models(MODELS_DIR))
    mesmer = section["models"]["WholeCellSegmentation"]
    assert set(mesmer) == {"membrane", "cytoplasm"}
    for by_compartment in mesmer.values():
        assert set(by_compartment) == {"whole-cell", "nuclear"}
        for figures in by_compartment.values():
            assert figures["model"]["n_true"] == figures["baseline"]["n_true"] > 0
            assert figures["model"]["f1"] > figures["baseline"]["f1"]
    assert "bacteria_out_of_domain" not in section  # not among the --datasets
    assert any("WholeCellSegmentation whole-cell from membrane" in v for v in section["verdicts"])
    assert "| WholeCellSegmentation | membrane | whole-cell | model |" in printed


def _tiff(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array)
    return buffer.getvalue()


def _fake_stardist_wheel(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """A zip with the stardist wheel's member paths holding a tiny image and mask."""
    image = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32)
    mask = np.zeros((32, 32), np.uint16)
    mask[4:10, 4:10], mask[20:28, 16:30] = 1, 2
    members = {
        "stardist/__init__.py": b"",
        "stardist/data/images/img2d.tif": _tiff(image),
        "stardist/data/images/mask2d.tif": _tiff(mask),
        "stardist/data/images/img3d.tif": b"not needed",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    digests = {
        "img2d.tif": datasets.sha256_of(members["stardist/data/images/img2d.tif"]),
        "mask2d.tif": datasets.sha256_of(members["stardist/data/images/mask2d.tif"]),
    }
    return image, mask, digests


def test_the_dsb_image_is_extracted_from_a_cached_wheel_checked_and_kept(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    wheel = cache / "wheels" / "stardist-0.9.2-py3-none-any.whl"  # found there: no download
    image, mask, digests = _fake_stardist_wheel(wheel)

    dataset = dsb2018_dataset(cache, sha256=digests)

    (sample,) = dataset.samples
    np.testing.assert_array_equal(sample.image, image)
    np.testing.assert_array_equal(sample.truth, mask)
    assert sample.truth.dtype == np.int32
    assert dataset.image_mpp is None and 0.65 in dataset.sweep
    folder = cache / datasets.DSB_DIR
    assert sorted(p.name for p in folder.iterdir()) == ["README.txt", "img2d.tif", "mask2d.tif"]
    assert "CC0" in (folder / "README.txt").read_text()

    wheel.unlink()  # intact files are used from the cache without the wheel
    assert prepare_dsb2018(cache, sha256=digests) == (folder / "img2d.tif", folder / "mask2d.tif")


def test_a_wheel_whose_files_differ_from_the_known_ones_is_refused(tmp_path: Path) -> None:
    wheel = tmp_path / "stardist-0.9.2-py3-none-any.whl"
    _fake_stardist_wheel(wheel)
    with pytest.raises(EvaluationError, match="SHA-256"):
        extract_members(
            wheel, datasets.STARDIST_MEMBERS, tmp_path / "out", datasets.STARDIST_SHA256
        )
    assert not (tmp_path / "out" / "img2d.tif").exists()
    with pytest.raises(EvaluationError, match="has no stardist/data/images/missing"):
        extract_members(wheel, {"stardist/data/images/missing.tif": "x.tif"}, tmp_path / "out")
