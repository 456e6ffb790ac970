"""StarDist 2D's side of ``benchmark.peer_stardist``, run in the peer's own environment
(``stardist``, ``csbdeep``, ``tensorflow-cpu``, ``tf-keras`` from the registry; nothing of
Kiosk's is imported).

Reads ``image.npy`` (normalised float32, Y x X) and ``labels.npy`` (the image's exact nuclei)
from the folder given, and prints one JSON object of seconds per run:

* ``network``: the default ``Config2D`` network (32 rays, U-Net of depth 3) with random
  weights predicting the image: StarDist's speed class, not its quality (no trained weights
  can be had offline);
* ``postprocess``: StarDist's own post-processing (non-maximum suppression of star-convex
  polygons, then polygons to labels) on the probability and ray distances a perfect network
  would give for these nuclei (``edt_prob`` and ``star_dist`` of the true labels). A random
  network's maps would hand the suppression every pixel as a candidate, which says nothing of
  its cost on real images.

    python benchmark/peer/stardist_side.py DIR REPEAT
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from stardist import edt_prob, star_dist
    from stardist.geometry import polygons_to_label
    from stardist.models import Config2D, StarDist2D
    from stardist.nms import non_maximum_suppression

    folder, repeat = Path(sys.argv[1]), int(sys.argv[2])
    image = np.load(folder / "image.npy")
    labels = np.load(folder / "labels.npy")
    config = Config2D(n_channel_in=1)
    with tempfile.TemporaryDirectory() as basedir:
        model = StarDist2D(config, name="random-weights", basedir=basedir)
        prob = edt_prob(labels)
        dist = star_dist(labels, config.n_rays)

        def network() -> None:
            model.keras_model.predict(image[None, ..., None], verbose=0)

        def postprocess() -> int:
            points, probs, dists = non_maximum_suppression(
                dist, prob, prob_thresh=0.5, nms_thresh=0.4
            )
            return int(polygons_to_label(dists, points, image.shape, probs).max())

        network()  # warm-up: the first call builds the graph
        found = postprocess()
        seconds: dict[str, list[float]] = {"network": [], "postprocess": []}
        for _ in range(repeat):
            for name, call in (("network", network), ("postprocess", postprocess)):
                start = time.perf_counter()
                call()
                seconds[name].append(time.perf_counter() - start)
    print(json.dumps({"seconds": seconds, "objects": found, "n_rays": config.n_rays}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
