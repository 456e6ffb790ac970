"""The sample images ``kiosk up --demo`` segments: generated nuclei, a few sizes and a zip.

They are committed under ``samples/`` (``make samples`` rewrites them, identically for the same
seeds) so that the demo needs no download.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from evaluation.synthetic import generate
from local.stack import SAMPLES

# (file name, height, width, seed): one of a megapixel, one not square.
IMAGES = (
    ("nuclei-1024.tif", 1024, 1024, 101),
    ("nuclei-480x640.tif", 480, 640, 102),
    ("nuclei-512.png", 512, 512, 103),
)
ZIP_NAME = "plate.zip"
ZIP_IMAGES = tuple((f"plate/well-{i + 1}.png", 256, 256, 200 + i) for i in range(4))


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _encode(name: str, image: np.ndarray) -> bytes:
    if name.endswith(".png"):
        return _png(image)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, compression="zlib")
    return buffer.getvalue()


def write_samples(directory: Path = SAMPLES) -> list[Path]:
    """Write the sample images and zip into ``directory``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, height, width, seed in IMAGES:
        image, _ = generate((height, width), seed=seed, dtype="uint16")
        path = directory / name
        path.write_bytes(_encode(name, image))
        written.append(path)
    path = directory / ZIP_NAME
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, height, width, seed in ZIP_IMAGES:
            image, _ = generate((height, width), seed=seed, dtype="uint16")
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            archive.writestr(info, _encode(name, image))
    written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_samples():
        print(written_path)
