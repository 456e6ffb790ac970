"""The two scaling policies on the same zip through a real, autoscaled `kiosk up`.

For each policy (``KIOSK_SCALING_POLICY=paper`` and ``backlog``) a fresh `kiosk up` with the
autoscaler's local backend and the embedded model server starts, takes a small warm-up zip and
scales back to zero; then the same zip of ``--images`` generated uint16 TIFFs is submitted from
zero replicas. Measured from the start of the upload:

* **wall time to done**: until the parent job's ``finished_at``;
* **process-seconds** of the model server and of the consumers: the number of those processes
  alive, integrated over time until everything is back to zero (the idle grace,
  ``--idle-grace``, is in both sides alike), and the CPU seconds they spent.

The figures of interest are ratios backlog / paper measured in the same run. The policies take
turns (paper first in odd repeats, backlog first in even ones) so a slow spell of the machine
falls on both; medians over ``--repeats``.

    python -m benchmark.scaling_policies [--images 100] [--size 512] [--repeats 2]
        [--idle-grace 10] [--max-consumers 0]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmark.report import save, table
from benchmark.support import (
    add_model_args,
    check_model,
    generated_images,
    kiosk_up,
    process_tree,
    spread_text,
)
from benchmark.zip_throughput import run_zip, write_zip
from local.client import KioskClient

POLICIES = ("paper", "backlog")
SEED_BASE = 700_000
WARMUP_SEED_BASE = 750_000
KINDS = {"model_server": "-m model_server", "consumers": "-m consumers"}


def _scaled(root: int) -> dict[int, tuple[str, float]]:
    """Model-server and consumer processes below ``root``: pid -> (kind, CPU seconds so far)."""
    found: dict[int, tuple[str, float]] = {}
    for pid, info in process_tree(root).items():
        command = " ".join(info.argv)
        for kind, needle in KINDS.items():
            if needle in command:
                found[pid] = (kind, info.cpu_seconds)
    return found


class ProcessMeter(threading.Thread):
    """Integrates how many model servers and consumers run, and keeps the CPU each spent."""

    def __init__(self, root: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.seconds = dict.fromkeys(KINDS, 0.0)
        self.cpu: dict[int, tuple[str, float]] = {}
        self.running = dict.fromkeys(KINDS, 0)
        self.peak = dict.fromkeys(KINDS, 0)
        self.stopped = threading.Event()

    def run(self) -> None:
        last = time.monotonic()
        while not self.stopped.is_set():
            now_seen = _scaled(self.root)
            now = time.monotonic()
            counts = dict.fromkeys(KINDS, 0)
            for pid, (kind, cpu) in now_seen.items():
                counts[kind] += 1
                self.cpu[pid] = (kind, cpu)
            for kind in KINDS:
                self.seconds[kind] += counts[kind] * (now - last)
                self.peak[kind] = max(self.peak[kind], counts[kind])
            self.running, last = counts, now
            self.stopped.wait(self.interval)

    def idle(self) -> bool:
        return not any(self.running.values())

    def cpu_seconds(self) -> dict[str, float]:
        out = dict.fromkeys(KINDS, 0.0)
        for kind, cpu in self.cpu.values():
            out[kind] += cpu
        return out


def wait_until_idle(meter: ProcessMeter, timeout: float) -> float:
    """Seconds until no model server or consumer runs (after a first sample)."""
    started = time.monotonic()
    time.sleep(2 * meter.interval)
    while not meter.idle():
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"model server or consumers still running after {timeout:.0f} s")
        time.sleep(meter.interval)
    return time.monotonic() - started


def one_run(policy: str, args: argparse.Namespace, plate: Path, warmup: Path) -> dict[str, Any]:
    env = {
        "KIOSK_SCALING_POLICY": policy,
        "KIOSK_IDLE_GRACE": str(args.idle_grace),
        "KIOSK_MAX_CONSUMERS": str(args.max_consumers),
    }
    limit = args.idle_grace + 120
    with (
        kiosk_up(args.models_dir, consumers=0, extra_env=env) as stack,
        KioskClient(stack.url) as client,
    ):
        warm = ProcessMeter(stack.process.pid)
        warm.start()
        run_zip(client, warmup)
        wait_until_idle(warm, limit)
        warm.stopped.set()
        meter = ProcessMeter(stack.process.pid)
        meter.start()
        done = run_zip(client, plate)
        wait_until_idle(meter, limit)
        meter.stopped.set()
        meter.join(5)
        log = (stack.data_dir / "logs" / "autoscaler.log").read_text(errors="replace")
    if f"{policy} policy" not in log:
        raise RuntimeError(f"the autoscaler did not run the {policy} policy:\n{log[-2000:]}")
    cpu = meter.cpu_seconds()
    return {
        "policy": policy,
        "seconds_to_done": round(done["seconds"], 2),
        "model_server_process_s": round(meter.seconds["model_server"], 1),
        "consumer_process_s": round(meter.seconds["consumers"], 1),
        "model_server_cpu_s": round(cpu["model_server"], 1),
        "consumer_cpu_s": round(cpu["consumers"], 1),
        "most_consumers": meter.peak["consumers"],
    }


FIGURES = (
    "seconds_to_done",
    "model_server_process_s",
    "consumer_process_s",
    "model_server_cpu_s",
    "consumer_cpu_s",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each policy")
    parser.add_argument(
        "--idle-grace", type=float, default=10.0, help="KIOSK_IDLE_GRACE, seconds (both sides)"
    )
    parser.add_argument(
        "--max-consumers", type=int, default=0, help="KIOSK_MAX_CONSUMERS (0: the CPU count)"
    )
    add_model_args(parser)
    args = parser.parse_args()
    model_path = check_model(args.models_dir)

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        plate, warmup = Path(tmp) / "plate.zip", Path(tmp) / "warmup.zip"
        images = generated_images(args.images, args.size, SEED_BASE)
        zip_bytes = write_zip(plate, [im for im, _ in images])
        write_zip(warmup, [im for im, _ in generated_images(2, args.size, WARMUP_SEED_BASE)])
        for repeat in range(args.repeats):
            order = POLICIES if repeat % 2 == 0 else POLICIES[::-1]
            for policy in order:
                run = one_run(policy, args, plate, warmup)
                runs.append(run)
                print(f"repeat {repeat + 1}: {run}", flush=True)

    medians = {
        policy: {
            figure: statistics.median(r[figure] for r in runs if r["policy"] == policy)
            for figure in FIGURES
        }
        for policy in POLICIES
    }
    ratios = {
        figure: round(medians["backlog"][figure] / medians["paper"][figure], 3)
        if medians["paper"][figure]
        else None
        for figure in FIGURES
    }

    def runs_of(policy: str, figure: str) -> list[float]:
        return [r[figure] for r in runs if r["policy"] == policy]

    rows = [["figure, median (min-max)", "paper", "backlog", "backlog / paper"]]
    for figure in FIGURES:
        ratio = ratios[figure]
        rows.append(
            [
                figure,
                spread_text(runs_of("paper", figure), 1),
                spread_text(runs_of("backlog", figure), 1),
                "-" if ratio is None else f"{ratio:.2f}",
            ]
        )
    print(
        f"{args.images} images of {args.size}x{args.size} uint16 ({zip_bytes / 2**20:.1f} MiB), "
        f"{args.repeats} run(s) per policy, idle grace {args.idle_grace:g} s"
    )
    print(table(rows))
    path = save(
        "scaling_policies",
        {
            "images": args.images,
            "image_size": args.size,
            "zip_mib": round(zip_bytes / 2**20, 2),
            "idle_grace_s": args.idle_grace,
            "max_consumers": args.max_consumers,
            "model": model_path,
            "baseline": "the paper policy on the same zip in the same run",
            "medians": medians,
            "ratios_backlog_over_paper": ratios,
            "runs": runs,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
