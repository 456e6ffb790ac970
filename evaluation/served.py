"""The embedded model server as a subprocess on free ports, and the model reached through it
exactly as the segmentation consumer reaches it; shared by the quality report, training checks
and the benchmarks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from consumers.processing.contract import ModelContract
from consumers.segmentation import NUCLEAR_MODEL
from evaluation import REPO, EvaluationError
from kiosk.processes import free_port

BUNDLED_MODELS = REPO / "models"
SERVER_READY_TIMEOUT = 180.0


def _healthy(http_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


@dataclass
class ModelServer:
    """An embedded model server subprocess: its gRPC target and where its log is."""

    target: str
    http_port: int
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def stage_models(models_dir: Path, bucket_dir: Path, models: Sequence[str]) -> None:
    """Copy ``models_dir/{name}/`` into a file bucket's ``models/`` for the model server."""
    for name in models:
        source = models_dir / name
        if not any(p.is_dir() and p.name.isdigit() for p in source.glob("*")):
            raise EvaluationError(
                f"no model {name!r} in {models_dir}: expected {source}/VERSION/saved_model.pb "
                "(pass --models-dir, or --model-server to use a running model server)"
            )
        shutil.copytree(source, bucket_dir / "models" / name)


@contextmanager
def embedded_model_server(
    models_dir: Path,
    models: Sequence[str] = ("NuclearSegmentation",),
    *,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = SERVER_READY_TIMEOUT,
) -> Iterator[ModelServer]:
    """Start ``python -m model_server`` on free ports, serving a temp copy of models.

    Yields once /healthz says every model is loaded; SIGTERM (then SIGKILL) on the way out.
    ``env`` adds to (and overrides) the server's environment.
    """
    with tempfile.TemporaryDirectory(prefix="kiosk-eval-") as tmp:
        root = Path(tmp)
        stage_models(models_dir, root / "bucket", models)
        port, http_port = free_port(), free_port()
        server_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KIOSK_")},
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            "KIOSK_BUCKET": f"file://{root / 'bucket'}",
            "KIOSK_MODELS": ",".join(models),
            "KIOSK_MODEL_SERVER_HOST": "127.0.0.1",
            "KIOSK_MODEL_SERVER_PORT": str(port),
            "KIOSK_MODEL_SERVER_HTTP_PORT": str(http_port),
            "KIOSK_MODEL_CACHE_DIR": str(root / "model-cache"),
            **(env or {}),
        }
        log_path = root / "model-server.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "model_server"],
                env=server_env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        server = ModelServer(f"127.0.0.1:{port}", http_port, process, log_path)
        try:
            deadline = time.monotonic() + ready_timeout
            while not _healthy(http_port):
                if process.poll() is not None:
                    raise EvaluationError(
                        f"the model server exited with code {process.returncode} while "
                        f"starting:\n{server.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise EvaluationError(
                        f"the model server was not ready after {ready_timeout:.0f}s:\n"
                        f"{server.log_tail()}"
                    )
                time.sleep(0.2)
            yield server
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)


class ServedModel:
    """The pipeline's model callable over gRPC, as the segmentation consumer calls it; it
    remembers which version answered."""

    def __init__(
        self,
        target: str,
        model: str,
        version: int | None = None,
        contract: ModelContract = NUCLEAR_MODEL,
        *,
        lean: bool = False,
    ) -> None:
        from kiosk.serving.client import DEFAULT_SIGNATURE, ServingClient

        self.client = ServingClient(target)
        self.model = model
        self.contract = contract
        self.version = version
        self.answered: int | None = None
        self.lean = lean and contract.lean_signature is not None
        """Ask for the contract's float16 signature, as consumers do by default."""
        self.signature = (contract.lean_signature if self.lean else None) or DEFAULT_SIGNATURE

    def __call__(self, batch: np.ndarray) -> Mapping[str, np.ndarray]:
        prediction = self.client.predict(
            self.model,
            self.contract.inputs(batch, lean=self.lean),
            version=self.version,
            signature_name=self.signature,
            check=True,
        )
        self.answered = prediction.model_version
        return prediction.outputs
