"""Prometheus metrics of the model server, served at ``/monitoring/prometheus/metrics``.

``kiosk_model_server_busy_ratio`` is the fraction of recent wall time in which any inference
ran: on a workstation without DCGM it stands in for GPU utilisation, which is what the
autoscaler scales model servers on. It is server-wide (like a GPU's utilisation), while
``kiosk_model_server_busy_seconds_total{model}`` splits the same time by model.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

BUSY_WINDOW = 10.0  # seconds of history behind the busy ratio
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class BusyTracker:
    """Wall time during which at least one inference ran, over a sliding window."""

    def __init__(self, window: float = BUSY_WINDOW, clock: Callable[[], float] = time.monotonic):
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._active = 0
        self._busy_since = 0.0
        self._spans: deque[tuple[float, float]] = deque()

    def begin(self) -> None:
        with self._lock:
            self._active += 1
            if self._active == 1:
                self._busy_since = self._clock()

    def end(self) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0:
                now = self._clock()
                self._spans.append((self._busy_since, now))
                self._prune(now)

    def ratio(self) -> float:
        """Busy fraction of the last ``window`` seconds (of the uptime, while that is shorter)."""
        with self._lock:
            now = self._clock()
            self._prune(now)
            start = now - self.window
            busy = sum(end - max(begin, start) for begin, end in self._spans)
            if self._active:
                busy += now - max(self._busy_since, start)
            span = min(self.window, now - self._started)
            return 0.0 if span <= 0 else min(1.0, max(0.0, busy / span))

    def _prune(self, now: float) -> None:
        while self._spans and self._spans[0][1] <= now - self.window:
            self._spans.popleft()


class ServerMetrics:
    """Every metric the model server exports, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None, busy_window: float = BUSY_WINDOW):
        if registry is None:
            registry = CollectorRegistry()
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                registry.register(collector)
        self.registry = registry
        self.busy = BusyTracker(busy_window)
        self.requests = Counter(
            "kiosk_model_server_requests",
            "gRPC requests answered, by model, method and gRPC status code.",
            ["model", "method", "code"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "kiosk_model_server_request_duration_seconds",
            "Wall time of a gRPC request, from arrival to reply (queueing and batching included).",
            ["model", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "kiosk_model_server_batch_size",
            "Items (size along axis 0) in one inference, after server-side batching.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.inference_seconds = Histogram(
            "kiosk_model_server_inference_duration_seconds",
            "Wall time of one inference (one batch) on the model.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.busy_seconds = Counter(
            "kiosk_model_server_busy_seconds",
            "Seconds spent running inferences, by model.",
            ["model"],
            registry=registry,
        )
        self.busy_ratio = Gauge(
            "kiosk_model_server_busy_ratio",
            f"Fraction of the last {busy_window:g} s in which an inference ran "
            "(the stand-in for GPU utilisation).",
            registry=registry,
        )
        self.busy_ratio.set_function(self.busy.ratio)
        self.wire_bytes = Counter(
            "kiosk_model_server_predict_bytes",
            "Tensor bytes of Predict requests (in) and replies (out), by model and signature: "
            "what the lean float16 signature saves.",
            ["model", "signature", "direction"],
            registry=registry,
        )
        self.loaded_versions = Gauge(
            "kiosk_model_server_loaded_versions",
            "Model versions loaded and AVAILABLE, by model.",
            ["model"],
            registry=registry,
        )

    def request(self, model: str, method: str, code: str, seconds: float) -> None:
        self.requests.labels(model, method, code).inc()
        self.request_seconds.labels(model, method).observe(seconds)

    def predict_bytes(self, model: str, signature: str, inbound: int, outbound: int) -> None:
        self.wire_bytes.labels(model, signature, "in").inc(inbound)
        self.wire_bytes.labels(model, signature, "out").inc(outbound)

    @contextmanager
    def inference(self, model: str) -> Iterator[None]:
        """Time one inference: busy ratio, busy seconds and the inference histogram."""
        self.busy.begin()
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self.busy.end()
            self.inference_seconds.labels(model).observe(seconds)
            self.busy_seconds.labels(model).inc(seconds)
