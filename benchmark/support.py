"""Shared parts of the model benchmarks: the model to use, a model server, a whole local stack
(`kiosk up`) and reading a process's memory.

Why here: deep_watershed, zip_throughput and consumer_memory all need the real model behind a
real model server, and the same way of saying "no model yet" when it is missing. The model
server is the one the evaluation command starts (evaluation.served.embedded_model_server).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

from evaluation import REPO
from evaluation.served import BUNDLED_MODELS, ModelServer, embedded_model_server
from evaluation.synthetic import generate
from kiosk.processes import free_port

__all__ = [
    "MODEL",
    "KioskUp",
    "ModelServer",
    "add_model_args",
    "check_model",
    "generated_images",
    "kiosk_up",
    "mapped_files",
    "memory_mib",
    "model_server",
    "runs",
    "spread",
    "spread_text",
    "timed",
]

MODEL = "NuclearSegmentation"
STACK_READY_TIMEOUT = 300.0  # Redis, janitor, the model server (TensorFlow), frontend, consumers


def runs(fn: Callable[[], object], repeat: int) -> list[float]:
    """Seconds of each of ``repeat`` calls."""
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` calls: the middle run, not a noisy mean."""
    return median(runs(fn, repeat))


def spread(values: list[float]) -> dict[str, float]:
    """min, median and max of some runs: what a README figure shows."""
    return {"min": min(values), "median": median(values), "max": max(values)}


def spread_text(values: list[float], digits: int = 3) -> str:
    """``median (min-max)``."""
    s = spread(values)
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def service_env(redis_url: str, bucket_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of a Kiosk service a benchmark starts: this machine's, without any
    KIOSK_* of its own, pointed at the benchmark's Redis and bucket, plus ``settings``."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("KIOSK_")},
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        "KIOSK_REDIS_URL": redis_url,
        "KIOSK_BUCKET": f"file://{bucket_dir}",
        **settings,
    }


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=BUNDLED_MODELS,
        help="models as NAME/VERSION/saved_model.pb (default: the bundled models/)",
    )


def check_model(models_dir: Path, model: str = MODEL) -> str:
    """The model's newest version directory, or exit with what to do."""
    versions = sorted(
        (d for d in (models_dir / model).glob("[0-9]*") if (d / "saved_model.pb").is_file()),
        key=lambda d: int(d.name),
    )
    if not versions:
        raise SystemExit(
            f"no {model} SavedModel under {models_dir}: pass --models-dir DIR with "
            f"DIR/{model}/VERSION/saved_model.pb"
        )
    return str(versions[-1])


@contextmanager
def model_server(models_dir: Path, model: str = MODEL) -> Iterator[ModelServer]:
    """The embedded model server on free ports, serving ``model`` from ``models_dir``."""
    with embedded_model_server(models_dir, (model,)) as server:
        yield server


def generated_images(
    count: int, size: int, seed_base: int, **kwargs: Any
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, labels) pairs from evaluation.synthetic, as a camera gives them (uint16).

    ``kwargs`` go to ``generate``; fixing ``coverage`` and ``mean_diameter`` keeps the work
    per megapixel comparable between image sizes.
    """
    kwargs.setdefault("dtype", "uint16")
    return [generate((size, size), seed=seed_base + i, **kwargs) for i in range(count)]


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak so far) of a process, in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


@dataclass(frozen=True)
class ProcessInfo:
    parent: int
    argv: list[str]
    cpu_seconds: float  # user + system so far


def process_tree(root: int) -> dict[int, ProcessInfo]:
    """``root`` and every process below it, read from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    table: dict[int, ProcessInfo] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        words = [a.decode(errors="replace") for a in argv if a] or [stat.split()[1]]
        cpu = (int(fields[11]) + int(fields[12])) / ticks
        table[int(entry.name)] = ProcessInfo(int(fields[1]), words, cpu)
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, info in table.items() if info.parent == parent]
        tree.update(children)
        frontier.extend(children)
    return {pid: table[pid] for pid in tree & table.keys()}


def process_tree_cpu(root: int) -> dict[str, float]:
    """CPU seconds so far of ``root`` and every process below it, by command line (``python -m
    consumers segmentation`` ...), to show which service spent the CPU."""
    totals: dict[str, float] = {}
    for info in process_tree(root).values():
        name = " ".join(info.argv[1:5]) or info.argv[0]
        totals[name] = totals.get(name, 0.0) + info.cpu_seconds
    return totals


def mapped_files(pid: int, needle: str) -> list[str]:
    """Files mapped into a process whose path contains ``needle`` (e.g. a shared library)."""
    found = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and needle in parts[5]:
            found.add(parts[5])
    return sorted(found)


@dataclass
class KioskUp:
    """A running `kiosk up`: where its frontend is and where its data and logs are."""

    url: str
    data_dir: Path
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


@contextmanager
def kiosk_up(
    models_dir: Path,
    consumers: int = 1,
    queues: str = "segmentation",
    extra_env: dict[str, str] | None = None,
) -> Iterator[KioskUp]:
    """`python -m local up` with the embedded model server, in a temp data directory.

    Yields once it says it is running (every service started and ready); stops it as Ctrl-C
    does (SIGINT), which stops the services in order.
    """
    with tempfile.TemporaryDirectory(prefix="kiosk-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KIOSK_")},
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            "KIOSK_EMBEDDED_MODEL_SERVER": "true",
            "KIOSK_MODELS_DIR": str(models_dir),
            **(extra_env or {}),
        }
        argv = [sys.executable, "-m", "local", "up", "--port", str(port)]
        argv += ["--data-dir", str(data_dir), "--queues", queues, "--consumers", str(consumers)]
        log_path = Path(tmp) / "kiosk-up.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
            )
        stack = KioskUp(f"http://127.0.0.1:{port}", data_dir, process, log_path)
        try:
            deadline = time.monotonic() + STACK_READY_TIMEOUT
            while "Kiosk is running" not in log_path.read_text(errors="replace"):
                if process.poll() is not None:
                    raise RuntimeError(
                        f"kiosk up exited with {process.returncode}:\n{stack.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(f"kiosk up was not ready in time:\n{stack.log_tail()}")
                time.sleep(0.25)
            yield stack
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(120)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
