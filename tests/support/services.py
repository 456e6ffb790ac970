"""Kiosk services as real processes, with their logs kept for failing tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.jobtypes import PLUGINS, QUEUES
from tests.support.servers import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]


def service_env(redis_url: str, bucket_dir: Path, **overrides: str) -> dict[str, str]:
    """Environment for services under test: fast heartbeats and sweeps, test job types."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        "KIOSK_REDIS_URL": redis_url,
        "KIOSK_BUCKET": f"file://{bucket_dir}",
        "KIOSK_QUEUES": QUEUES,
        "KIOSK_JOB_TYPE_PLUGINS": PLUGINS,
        "KIOSK_HEARTBEAT_INTERVAL": "0.3",
        "KIOSK_HEARTBEAT_TTL": "1.5",
        "KIOSK_CLAIM_TIMEOUT": "0.5",
        "KIOSK_JANITOR_INTERVAL": "0.3",
        "KIOSK_SHUTDOWN_GRACE": "10",
        "KIOSK_LOG_LEVEL": "INFO",
    }
    env.update(overrides)
    return env


class Service:
    """One process, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._terminated = False
        self.process = subprocess.Popen(
            [sys.executable, *args],
            env=env,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        """SIGTERM once (a second one means "hand back now" to a consumer)."""
        if self.alive() and not self._terminated:
            self._terminated = True
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 20) -> int | None:
        if self.alive():
            self.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def consumer(queue: str, env: dict[str, str], log_dir: Path, index: int = 0) -> Service:
    return Service(f"consumer-{queue}-{index}", ["-m", "consumers", queue], env, log_dir)


def janitor(env: dict[str, str], log_dir: Path) -> Service:
    return Service("janitor", ["-m", "kiosk.janitor"], env, log_dir)


def with_public_url(env: dict[str, str]) -> dict[str, str]:
    """Pick the frontend's port; every service must agree on the URL clients reach it at."""
    port = free_port()
    return {
        **env,
        "KIOSK_HOST": "127.0.0.1",
        "KIOSK_PORT": str(port),
        "KIOSK_PUBLIC_URL": f"http://127.0.0.1:{port}",
    }


def frontend(env: dict[str, str], log_dir: Path) -> tuple[Service, str]:
    """Start the frontend on the port named in ``env`` (see :func:`with_public_url`)."""
    url = env["KIOSK_PUBLIC_URL"]
    service = Service("frontend", ["-m", "frontend"], env, log_dir)

    def healthy() -> bool:
        return httpx.get(f"{url}/api/health-check", timeout=1).status_code == 200

    wait_for(healthy, 30, what="the frontend")
    return service, url


def model_server(
    bucket_dir: Path, log_dir: Path, models: Path | None = None
) -> tuple[Service, str, str]:
    """The embedded model server serving the bundled models (or ``models``) from its own
    bucket; returns it, its gRPC target and its HTTP base URL once /healthz says every model
    is loaded."""
    from kiosk.storage.local import LocalBucket
    from local.stack import BUNDLED_MODELS, install_models

    install_models(models or BUNDLED_MODELS, LocalBucket(bucket_dir))
    grpc_port, http_port = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        "KIOSK_BUCKET": f"file://{bucket_dir}",
        "KIOSK_MODEL_SERVER_PORT": str(grpc_port),
        "KIOSK_MODEL_SERVER_HTTP_PORT": str(http_port),
    }
    service = Service("model-server", ["-m", "model_server"], env, log_dir)

    def healthy() -> bool:
        if not service.alive():
            return True  # stop waiting: reported below
        return httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=1).status_code == 200

    wait_for(healthy, 120, interval=0.2, what="the model server")
    if not service.alive():
        raise RuntimeError(f"the model server exited:\n{service.log()[-3000:]}")
    return service, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}"
