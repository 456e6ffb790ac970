"""``python -m autoscaler``: the controller loop with its metrics exporter.

``KIOSK_AUTOSCALER_BACKEND=kubernetes`` (in the chart) scales Deployments; ``local`` (what
``kiosk up`` runs) owns the model server and consumer processes. ``KIOSK_SCALING_POLICY`` picks
the policy (``autoscaler.policy.policy_from_settings``): ``paper`` leaves 1->N to the HPAs on a
cluster and runs all of it locally; ``backlog`` sets every count itself on both. SIGTERM or
Ctrl-C stops it; the local backend first stops its consumers (each finishes or hands back its
job), then the model server.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from autoscaler.backends import Backend
from autoscaler.controller import Controller
from autoscaler.exporter import KioskCollector, busy_ratio_reader, serve_exporter
from autoscaler.policy import policy_from_settings
from kiosk.keys import all_queues
from kiosk.logs import setup_logging
from kiosk.queue import JobQueue
from kiosk.settings import AutoscalerSettings, ConsumerSettings, ModelServerSettings, StackSettings
from kiosk.signals import StopSignals

if TYPE_CHECKING:
    from autoscaler.backends.local import LocalBackend

log = logging.getLogger("autoscaler")

# The autoscaler's own settings, not passed on to the processes it starts.
AUTOSCALER_ONLY = ("KIOSK_AUTOSCALER_BACKEND",)


def local_backend(settings: AutoscalerSettings, queue: JobQueue, queues: list[str]) -> LocalBackend:
    from autoscaler.backends.local import LocalBackend

    stack = StackSettings()
    server = ModelServerSettings()
    health = (
        f"http://127.0.0.1:{server.model_server_http_port}/healthz"
        if stack.embedded_model_server
        else None
    )
    return LocalBackend(
        queue,
        queues,
        {k: v for k, v in os.environ.items() if k not in AUTOSCALER_ONLY},
        Path(stack.data_dir) / "logs",
        model_server_health_url=health,
        stop_grace=ConsumerSettings().shutdown_grace,
    )


def kubernetes_backend(settings: AutoscalerSettings, queues: list[str]) -> Backend:
    from autoscaler.backends.kubernetes import KubernetesBackend

    return KubernetesBackend.from_settings(settings, queues)


def main() -> int:
    settings = AutoscalerSettings()
    setup_logging(settings.log_level, "autoscaler")
    signals = StopSignals().install()
    queue = JobQueue.from_settings(settings, retries=3)
    queues = all_queues(settings.queues)
    processes = (
        local_backend(settings, queue, queues) if settings.autoscaler_backend == "local" else None
    )
    backend = processes or kubernetes_backend(settings, queues)
    gpu = (
        busy_ratio_reader(settings.model_server_metrics_url)
        if settings.model_server_metrics_url
        else lambda: None
    )
    controller = Controller(
        backend, queue, queues, policy_from_settings(settings), gpu_utilization=gpu
    )
    if settings.exporter_port:
        collector = KioskCollector(
            queue, queues, lambda: controller.last_replicas, lambda: controller.last_gpu
        )
        serve_exporter(settings.exporter_port, collector)
    log.info(
        "autoscaler (%s backend, %s policy) watching %s every %.1fs; idle grace %.0fs",
        settings.autoscaler_backend,
        settings.scaling_policy,
        ", ".join(queues),
        settings.autoscaler_interval,
        settings.idle_grace,
    )
    try:
        controller.run(settings.autoscaler_interval, lambda: signals.count > 0)
    finally:
        if processes is not None:
            log.info("stopping consumers and the model server")
            started = time.monotonic()
            processes.stop_all()
            log.info("stopped in %.1fs", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
