"""Kiosk's nuclear model against a peer a user might run on one machine instead: StarDist 2D.

On one generated 1024 x 1024 image of nuclei (``evaluation.synthetic``, normalised as the
consumer normalises it), each side's two parts, median (min-max) of ``--repeat`` runs:

* the network: Kiosk's bundled model called in a process of its own (``serving_default``, the
  model and nothing else, as in ``benchmark.serving_overhead``) against StarDist's default
  ``Config2D`` network with random weights, its speed class (no trained weights can be had
  offline, and quality is not what this measures);
* the post-processing: Kiosk's deep watershed on the model's own maps of the image, against
  StarDist's non-maximum suppression and polygon rendering on the maps a perfect network would
  give for the image's true nuclei (a random network's maps would make every pixel a
  candidate).

StarDist runs in an environment of its own, ``.venv-peer`` (``stardist``, ``csbdeep``,
``tensorflow-cpu``, ``tf-keras`` installed from the registry on first use), so nothing of it
reaches Kiosk's; its side (``benchmark/peer/stardist_side.py``) runs after Kiosk's on the same
machine, not taking turns with it.

    python -m benchmark.peer_stardist [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmark.report import median, save, table
from benchmark.serving_overhead import InProcess
from benchmark.support import runs, spread, spread_text
from consumers.processing.normalize import normalize
from consumers.segmentation import NUCLEAR_MODEL, SegmentationSettings
from evaluation import REPO
from evaluation.served import ServedModel, embedded_model_server
from evaluation.synthetic import generate

SIDE = 1024
PEER_VENV = REPO / ".venv-peer"
PEER_PACKAGES = ("stardist==0.9.2", "csbdeep==0.8.2", "tensorflow-cpu==2.21.0", "tf-keras==2.21.0")
PEER_SIDE = REPO / "benchmark" / "peer" / "stardist_side.py"


def peer_python() -> Path:
    """The peer environment's interpreter, created and filled from the registry if missing."""
    python = PEER_VENV / "bin" / "python"
    ready = PEER_VENV / ".installed"
    if not ready.is_file() or ready.read_text() != "\n".join(PEER_PACKAGES):
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", *PEER_PACKAGES]
        subprocess.run(pip, check=True)
        ready.write_text("\n".join(PEER_PACKAGES))
    return python


def kiosk_side(normalized: np.ndarray, repeat: int) -> dict[str, list[float]]:
    """Seconds of Kiosk's network (in a process of its own) and its deep watershed."""
    in_process = InProcess()
    try:
        network = runs(in_process, repeat + 1)[1:]  # the first builds the graph
    finally:
        in_process.close()
    with embedded_model_server(REPO / "models", (NUCLEAR_MODEL.name,)) as server:
        served = ServedModel(server.target, NUCLEAR_MODEL.name, None, NUCLEAR_MODEL)
        maps = NUCLEAR_MODEL.foreground_only(served(normalized[None, ..., None]))
    maps = {head: m[0] for head, m in maps.items()}
    NUCLEAR_MODEL.postprocess_stacked(maps)
    return {
        "network": network,
        "postprocess": runs(lambda: NUCLEAR_MODEL.postprocess_stacked(maps), repeat),
    }


def peer_side(normalized: np.ndarray, labels: np.ndarray, repeat: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="kiosk-peer-") as tmp:
        np.save(Path(tmp) / "image.npy", normalized.astype(np.float32))
        np.save(Path(tmp) / "labels.npy", labels.astype(np.int32))
        done = subprocess.run(
            [str(peer_python()), str(PEER_SIDE), tmp, str(repeat)],
            check=True,
            capture_output=True,
            text=True,
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("PYTHON")},
                "TF_CPP_MIN_LOG_LEVEL": "2",
            },
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    image, labels = generate((SIDE, SIDE), seed=5, dtype="uint16")
    method = SegmentationSettings().pipeline_options(NUCLEAR_MODEL)["normalize_method"]
    normalized = normalize(image[..., None], method)[..., 0]
    kiosk = kiosk_side(normalized, args.repeat)
    peer = peer_side(normalized, labels, args.repeat)
    stardist = peer["seconds"]
    rows = [["part", "Kiosk, s", "StarDist 2D, s", "StarDist / Kiosk"]]
    ratios = {}
    for part in ("network", "postprocess"):
        ratios[part] = median(stardist[part]) / median(kiosk[part])
        rows.append(
            [part, spread_text(kiosk[part]), spread_text(stardist[part]), f"{ratios[part]:.1f}x"]
        )
    kiosk_total = median(kiosk["network"]) + median(kiosk["postprocess"])
    peer_total = median(stardist["network"]) + median(stardist["postprocess"])
    ratios["pipeline"] = peer_total / kiosk_total
    rows.append(
        [
            "both (sum of medians)",
            f"{kiosk_total:.3f}",
            f"{peer_total:.3f}",
            f"{ratios['pipeline']:.1f}x",
        ]
    )
    print(f"one {SIDE}x{SIDE} generated image, {int(labels.max())} nuclei; {args.repeat} runs")
    print(table(rows))
    path = save(
        "peer_stardist",
        {
            "image": f"{SIDE}x{SIDE}",
            "nuclei": int(labels.max()),
            "peer": {
                "packages": list(PEER_PACKAGES),
                "n_rays": peer["n_rays"],
                "weights": "random",
            },
            "kiosk_seconds": kiosk,
            "stardist_seconds": stardist,
            "spread_s": {
                "kiosk": {k: spread(v) for k, v in kiosk.items()},
                "stardist": {k: spread(v) for k, v in stardist.items()},
            },
            "stardist_over_kiosk": {k: round(v, 2) for k, v in ratios.items()},
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
