"""Wire the model server together and run it until SIGTERM or Ctrl-C.

Ports are bound before TensorFlow is imported, so a port clash is reported at once; models
load in the background while the server already answers (UNAVAILABLE for a model still
loading, which clients wait out, and GetModelStatus/healthz say what is happening).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from kiosk.allocator import keep_freed_memory
from kiosk.logs import setup_logging
from kiosk.settings import ModelServerSettings
from kiosk.signals import StopSignals
from kiosk.storage import open_bucket
from model_server.health import health_handler
from model_server.http import HttpEndpoint
from model_server.manager import ModelManager
from model_server.metrics import ServerMetrics
from model_server.repository import ModelRepository
from model_server.runtimes import load_servable
from model_server.service import ModelServerService

log = logging.getLogger("model_server")

STOP_GRACE = 10.0  # seconds requests in flight get to finish after SIGTERM
TICK = 0.2


def grpc_workers(settings: ModelServerSettings) -> int:
    """Threads for gRPC calls: each waits on its batch, so a full batch needs that many."""
    return max(16, 2 * settings.max_batch_size * settings.inference_workers) + 8


def grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve(settings: ModelServerSettings, signals: StopSignals | None = None) -> int:
    """Run the model server until signalled; the exit status (2: could not start)."""
    setup_logging(settings.log_level, "model-server")
    keep_freed_memory()
    signals = signals or StopSignals().install()
    try:
        repository = ModelRepository(open_bucket(settings.bucket), settings.model_cache_dir)
    except Exception as exc:  # a bad URL, or no credentials for gs://
        log.error("cannot open the bucket %s: %s", settings.bucket, exc)
        return 2
    metrics = ServerMetrics()
    stopping = threading.Event()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # keep TensorFlow's C++ INFO lines quiet
    manager = ModelManager(
        repository,
        functools.partial(load_servable, runtime=settings.model_runtime),
        metrics,
        models=settings.models,
        poll_interval=settings.model_poll_interval,
        max_batch_size=settings.max_batch_size,
        batch_timeout=settings.batch_timeout,
        inference_workers=settings.inference_workers,
    )

    def ready() -> bool:
        return not stopping.is_set() and manager.ready()[0]

    server = grpc.server(
        ThreadPoolExecutor(grpc_workers(settings), thread_name_prefix="grpc"),
        handlers=[*ModelServerService(manager, metrics).handlers(), health_handler(ready)],
        options=[
            ("grpc.max_receive_message_length", -1),  # as TF Serving: no size limit
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share
        ],
    )
    address = grpc_address(settings.model_server_host, settings.model_server_port)
    try:
        server.add_insecure_port(address)
    except RuntimeError as exc:
        log.error(
            "cannot listen for gRPC on %s (%s): is another model server running?", address, exc
        )
        return 2
    http: HttpEndpoint | None = None
    if settings.model_server_http_port:
        try:
            http = HttpEndpoint(
                settings.model_server_host, settings.model_server_http_port, manager, metrics, ready
            )
        except OSError as exc:
            log.error(
                "cannot listen for HTTP on %s:%d: %s",
                settings.model_server_host,
                settings.model_server_http_port,
                exc,
            )
            return 2
        http.start()
    server.start()
    log.info(
        "serving models from %s (%s) over gRPC on %s%s; batches of up to %d items, waiting up "
        "to %g ms",
        repository.where,
        ", ".join(settings.models) or "every model there",
        address,
        f" and HTTP on port {http.port}" if http else "",
        settings.max_batch_size,
        settings.batch_timeout * 1000,
    )
    if settings.model_runtime == "tensorflow":
        _import_tensorflow()  # now, rather than on the first version's load
    manager.start()
    while not signals.count:
        time.sleep(TICK)
    log.info("stopping: requests in flight get up to %g s to finish", STOP_GRACE)
    stopping.set()
    stopped = server.stop(STOP_GRACE)
    while not stopped.wait(TICK):
        if signals.count > 1:
            server.stop(0)  # a second signal: stop now
    manager.stop()
    if http is not None:
        http.stop()
    log.info("model server stopped")
    return 0


def _import_tensorflow() -> None:
    from model_server.model import log_devices

    log_devices()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model_server",
        description="Serve SavedModels from {bucket}/models/NAME/VERSION/ over TF Serving's "
        "gRPC API. Every option defaults to its KIOSK_* environment variable.",
    )
    parser.add_argument("--host", help="address to listen on (KIOSK_MODEL_SERVER_HOST)")
    parser.add_argument("--port", type=int, help="gRPC port (KIOSK_MODEL_SERVER_PORT)")
    parser.add_argument(
        "--http-port", type=int, help="HTTP port, 0 for none (KIOSK_MODEL_SERVER_HTTP_PORT)"
    )
    parser.add_argument("--bucket", help="file://DIR or gs://NAME (KIOSK_BUCKET)")
    parser.add_argument("--models", help="model names, comma-separated (KIOSK_MODELS)")
    return parser


def settings_from(**overrides: Any) -> ModelServerSettings:
    """Settings from the environment with the given (non-None) values on top."""
    names = {"host": "model_server_host", "port": "model_server_port"}
    names["http_port"] = "model_server_http_port"
    values = {names.get(k, k): v for k, v in overrides.items() if v is not None}
    return ModelServerSettings(**values)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from(**vars(args))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return serve(settings)
