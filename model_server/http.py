"""The model server's small HTTP side: readiness, TF Serving's REST model status, metrics.

* ``GET /healthz``: 200 once every model has a version AVAILABLE, 503 (saying why) before.
* ``GET /v1/models/{name}[/versions/{v}]``: TF Serving's REST model status JSON.
* ``GET /monitoring/prometheus/metrics`` (TF Serving's path; ``/metrics`` too): Prometheus.

A stdlib server on a thread: these are probes and scrapes, not traffic.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from model_server.errors import ServingError
from model_server.manager import ModelManager
from model_server.metrics import ServerMetrics

log = logging.getLogger(__name__)

METRICS_PATHS = ("/monitoring/prometheus/metrics", "/metrics")
_MODEL_PATH = re.compile(r"^/v1/models/(?P<name>[^/]+)(?:/versions/(?P<version>\d+))?/?$")
_HTTP_STATUS = {
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
}


def model_status_json(manager: ModelManager, name: str, version: int | None) -> dict:
    """TF Serving's ``GET /v1/models/{name}`` body."""
    return {
        "model_version_status": [
            {
                "version": str(status.version),
                "state": status.state.value,
                "status": {
                    "error_code": status.error.code.name if status.error else "OK",
                    "error_message": status.error.message if status.error else "",
                },
            }
            for status in manager.status(name, version)
        ]
    }


class HttpEndpoint:
    """Serves the routes above on ``host:port`` from a daemon thread."""

    def __init__(
        self,
        host: str,
        port: int,
        manager: ModelManager,
        metrics: ServerMetrics,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                endpoint.route(self)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("%s " + format, self.address_string(), *args)

        self.manager = manager
        self.metrics = metrics
        self._ready = ready
        server_cls = _ThreadingHTTPServerV6 if ":" in host else ThreadingHTTPServer
        self.server = server_cls((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="model-server-http", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def route(self, request: BaseHTTPRequestHandler) -> None:
        path = request.path.split("?", 1)[0]
        if path in METRICS_PATHS:
            send(
                request, HTTPStatus.OK, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST
            )
        elif path == "/healthz":
            ok, models = self.manager.ready()
            ok = ok and (self._ready is None or self._ready())
            send_json(
                request,
                HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
                {
                    "ready": ok,
                    "models": models,
                },
            )
        elif match := _MODEL_PATH.match(path):
            version = match["version"]
            try:
                body = model_status_json(
                    self.manager, unquote(match["name"]), int(version) if version else None
                )
            except ServingError as exc:
                status = _HTTP_STATUS.get(exc.code, HTTPStatus.INTERNAL_SERVER_ERROR)
                send_json(request, status, {"error": exc.message})
            else:
                send_json(request, HTTPStatus.OK, body)
        else:
            send_json(
                request,
                HTTPStatus.NOT_FOUND,
                {"error": f"no route {path}: try /healthz, /v1/models/NAME or {METRICS_PATHS[0]}"},
            )


class _ThreadingHTTPServerV6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def send_json(request: BaseHTTPRequestHandler, status: HTTPStatus, body: object) -> None:
    send(request, status, json.dumps(body, indent=2).encode() + b"\n", "application/json")


def send(request: BaseHTTPRequestHandler, status: HTTPStatus, body: bytes, kind: str) -> None:
    request.send_response(status)
    request.send_header("Content-Type", kind)
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    request.wfile.write(body)
