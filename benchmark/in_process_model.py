"""A model run in this process, timed on request: the in-process side of
``benchmark.serving_overhead``.

It loads a model version with the model server's own loader and runtime choice (so it is a
model-server-like process, the only kind that imports TensorFlow or ONNX Runtime) and answers
lines on stdin: ``SIGNATURE SIDE CHANNELS DTYPE`` runs that signature once on a random (1, SIDE,
SIDE, CHANNELS) input of DTYPE and prints the seconds, numpy outputs included.

    python -m benchmark.in_process_model models/NuclearSegmentation/1 [auto|onnx|tensorflow]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import cast

import numpy as np

from kiosk.allocator import keep_freed_memory
from kiosk.settings import ModelRuntime


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from model_server.runtimes import load_servable

    keep_freed_memory()  # the model server's allocator: the same on both sides

    runtime = cast("ModelRuntime", sys.argv[2] if len(sys.argv) > 2 else "auto")
    servable = load_servable(Path(sys.argv[1]), runtime)
    rng = np.random.default_rng(0)
    print("ready", flush=True)
    for line in sys.stdin:
        signature, side, channels, dtype = line.split()
        shape = (1, int(side), int(side), int(channels))
        image = rng.random(shape, dtype=np.float32).astype(dtype)
        input_name = next(iter(servable.signature_defs[signature].inputs))
        start = time.perf_counter()
        servable.run(signature, {input_name: image})
        print(f"{time.perf_counter() - start:.6f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
