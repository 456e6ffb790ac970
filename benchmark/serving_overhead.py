"""What serving costs: one 1 MP Predict through ``kiosk serve`` against the same model called in
a process of its own, for the float32 wire and the lean one.

Three ways to run the bundled nuclear model on one 1024 x 1024 image, taking turns each round so
that a slow spell hits them all:

* in-process: the SavedModel's ``serving_default`` called with numpy in the same process
  (``benchmark.in_process_model``, the model server's own loader): the model and nothing else;
* served, float32: a Predict to the embedded model server (``python -m model_server``) on
  ``serving_default``, every output (what consumers asked for before the lean wire);
* served, lean: a Predict on the ``lean`` signature, float16 in, the three heads out as float16
  (what consumers ask for now).

Each figure is the median (min-max) of ``--repeat`` calls after a warm-up; the ratios are served
over in-process from the same run (target for the lean wire: at most 1.15x). It also records the
model server's cold start (process start to the first answer: what the first job after a
0 -> 1 waits for) and its resident memory (VmRSS) serving the model, beside the in-process
model's.

    python -m benchmark.serving_overhead [--repeat 15]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np

from benchmark.report import median, save, table
from benchmark.support import memory_mib, spread, spread_text
from consumers.segmentation import NUCLEAR_MODEL
from evaluation import REPO
from evaluation.served import BUNDLED_MODELS, embedded_model_server
from kiosk.serving.client import DEFAULT_SIGNATURE, ServingClient

SIDE = 1024
TARGET = 1.15
"""Served lean Predict over the in-process call, at most."""


class InProcess:
    """``benchmark.in_process_model`` in a child process: the model called without a wire."""

    def __init__(self) -> None:
        path = BUNDLED_MODELS / NUCLEAR_MODEL.name / "1"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmark.in_process_model", str(path)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the in-process model did not start")

    def __call__(self) -> float:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{DEFAULT_SIGNATURE} {SIDE} 1 float32\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    contract = NUCLEAR_MODEL
    image = np.random.default_rng(0).random((1, SIDE, SIDE, 1), dtype=np.float32)
    in_process = InProcess()
    try:
        started = time.perf_counter()
        with embedded_model_server(BUNDLED_MODELS, [contract.name]) as server:
            client = ServingClient(server.target)
            client.predict(contract.name, {contract.input: image[:, :64, :64]})
            cold_start = time.perf_counter() - started

            def served(lean: bool) -> float:
                signature = contract.lean_signature if lean else None
                start = time.perf_counter()
                client.predict(
                    contract.name,
                    contract.inputs(image, lean=lean),
                    signature_name=signature or DEFAULT_SIGNATURE,
                    output_filter=contract.output_names if lean else None,
                )
                return time.perf_counter() - start

            ways = {
                "in_process": in_process,
                "served_float32": lambda: served(False),
                "served_lean": lambda: served(True),
            }
            for call in ways.values():
                call()
                call()  # warm-up: graphs built, channel open
            runs: dict[str, list[float]] = {name: [] for name in ways}
            for _ in range(args.repeat):
                for name, call in ways.items():
                    runs[name].append(call())
            memory = {
                "model_server": memory_mib(server.process.pid),
                "in_process_model": memory_mib(in_process.process.pid),
            }
    finally:
        in_process.close()
    base = median(runs["in_process"])
    ratios = {name: round(median(r) / base, 3) for name, r in runs.items()}
    rows = [["way", "seconds, median (min-max)", "over in-process"]]
    rows += [[name, spread_text(r), f"{ratios[name]:.2f}x"] for name, r in runs.items()]
    print(f"one {SIDE}x{SIDE} Predict of {contract.name}, {args.repeat} rounds")
    print(table(rows))
    print(f"target: served_lean <= {TARGET}x in-process")
    print(
        f"model server: {cold_start:.1f} s from start to first answer, "
        f"{memory['model_server']['VmRSS']:.0f} MiB resident "
        f"(peak {memory['model_server']['VmHWM']:.0f}); the model in a process of its own: "
        f"{memory['in_process_model']['VmRSS']:.0f} MiB"
    )
    path = save(
        "serving_overhead",
        {
            "repeat": args.repeat,
            "image": f"1x{SIDE}x{SIDE}x1",
            "baseline": "the same model called in a process of its own, in the same run",
            "target": TARGET,
            "runs_s": runs,
            "spread_s": {name: spread(r) for name, r in runs.items()},
            "ratios": ratios,
            "model_server_cold_start_s": round(cold_start, 2),
            "memory_mib": memory,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
