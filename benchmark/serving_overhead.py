"""What serving costs: one 1 MP Predict through ``kiosk serve`` against the same model called in
a process of its own, for the float32 wire and the lean one; and the model server's two runtimes,
ONNX Runtime (what it runs the bundled models with) and TensorFlow, side by side.

Ways to run the bundled nuclear model on one 1024 x 1024 image, taking turns each round so that
a slow spell hits them all:

* in-process: the model called with numpy in a process of its own, loaded with the model
  server's own loader and runtime (``benchmark.in_process_model``): the model and nothing else;
* served, float32: a Predict to the embedded model server on ``serving_default``, every output
  (what consumers asked for before the lean wire);
* served, lean: a Predict on the ``lean`` signature, float16 in, the three heads out as float16
  (what consumers ask for now);
* served, lean, TensorFlow: the same to a second model server with ``KIOSK_MODEL_RUNTIME=
  tensorflow``.

Each figure is the median (min-max) of ``--repeat`` calls after a warm-up; the ratios are over
in-process from the same run (target for the lean wire: at most 1.15x). For each runtime it also
records the model server's cold start (process start to the first answer: what the first job
after a 0 -> 1 waits for) and its resident memory (VmRSS) serving the model.

    python -m benchmark.serving_overhead [--repeat 15]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from contextlib import ExitStack

import numpy as np

from benchmark.report import median, save, table
from benchmark.support import memory_mib, spread, spread_text
from consumers.segmentation import NUCLEAR_MODEL
from evaluation import REPO
from evaluation.served import BUNDLED_MODELS, embedded_model_server
from kiosk.allocator import keep_memory_flat
from kiosk.serving.client import DEFAULT_SIGNATURE, ServingClient

SIDE = 1024
TARGET = 1.15
"""Served lean Predict over the in-process call, at most."""
RUNTIMES = ("onnx", "tensorflow")


class InProcess:
    """``benchmark.in_process_model`` in a child process: the model called without a wire."""

    def __init__(self, runtime: str = "auto") -> None:
        path = BUNDLED_MODELS / NUCLEAR_MODEL.name / "1"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmark.in_process_model", str(path), runtime],
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


def timed_predict(client: ServingClient, image: np.ndarray, lean: bool) -> float:
    contract = NUCLEAR_MODEL
    signature = contract.lean_signature if lean else None
    start = time.perf_counter()
    client.predict(
        contract.name,
        contract.inputs(image, lean=lean),
        signature_name=signature or DEFAULT_SIGNATURE,
        output_filter=contract.output_names if lean else None,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    keep_memory_flat()  # this process plays the consumer: its allocator as theirs
    contract = NUCLEAR_MODEL
    image = np.random.default_rng(0).random((1, SIDE, SIDE, 1), dtype=np.float32)
    in_process = InProcess()
    cold_start: dict[str, float] = {}
    try:
        with ExitStack() as stack:
            clients = {}
            servers = {}
            for runtime in RUNTIMES:
                started = time.perf_counter()
                server = stack.enter_context(
                    embedded_model_server(
                        BUNDLED_MODELS, [contract.name], env={"KIOSK_MODEL_RUNTIME": runtime}
                    )
                )
                client = ServingClient(server.target)
                client.predict(contract.name, {contract.input: image[:, :64, :64]})
                cold_start[runtime] = time.perf_counter() - started
                clients[runtime], servers[runtime] = client, server
            onnx, tf = clients["onnx"], clients["tensorflow"]
            ways = {
                "in_process": in_process,
                "served_float32": lambda: timed_predict(onnx, image, lean=False),
                "served_lean": lambda: timed_predict(onnx, image, lean=True),
                "served_lean_tensorflow": lambda: timed_predict(tf, image, lean=True),
            }
            for call in ways.values():
                call()
                call()  # warm-up: graphs built, channel open
            runs: dict[str, list[float]] = {name: [] for name in ways}
            for _ in range(args.repeat):
                for name, call in ways.items():
                    runs[name].append(call())
            memory = {
                **{f"model_server_{r}": memory_mib(s.process.pid) for r, s in servers.items()},
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
    rows = [["model server runtime", "start to first answer s", "resident MiB (peak)"]]
    for runtime in RUNTIMES:
        rss = memory[f"model_server_{runtime}"]
        rows.append(
            [runtime, f"{cold_start[runtime]:.1f}", f"{rss['VmRSS']:.0f} ({rss['VmHWM']:.0f})"]
        )
    print(table(rows))
    print(
        f"ONNX Runtime over TensorFlow: lean Predict "
        f"{median(runs['served_lean']) / median(runs['served_lean_tensorflow']):.2f}x, "
        f"cold start {cold_start['onnx'] / cold_start['tensorflow']:.2f}x, resident memory "
        f"{memory['model_server_onnx']['VmRSS'] / memory['model_server_tensorflow']['VmRSS']:.2f}x"
    )
    path = save(
        "serving_overhead",
        {
            "repeat": args.repeat,
            "image": f"1x{SIDE}x{SIDE}x1",
            "baseline": "the same model, same runtime, called in a process of its own, in the "
            "same run",
            "target": TARGET,
            "runs_s": runs,
            "spread_s": {name: spread(r) for name, r in runs.items()},
            "ratios": ratios,
            "model_server_cold_start_s": {k: round(v, 2) for k, v in cold_start.items()},
            "memory_mib": memory,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
