"""The recording rules in a real Prometheus, against the Python policy.

A real ``prometheus`` scrapes the real exporter (``KioskCollector``, reading a real Redis that
the real queue API fills) and a stand-in for the GPU series, evaluates the shipped rule file
every second, and the test compares ``kiosk:consumer_metric`` per queue with
``autoscaler.policy.consumer_metric`` on the same inputs, in all its regimes, on the cluster
(DCGM) and the local (busy ratio) GPU source. Prometheus is not optional: CI installs it.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from autoscaler import rules
from autoscaler.backends import Replicas
from autoscaler.exporter import KioskCollector, serve_exporter
from autoscaler.policy import CONSUMER_TARGET, OVERLOADED_FRACTION, consumer_metric
from kiosk.jobs import JobRequest, creation_fields
from kiosk.keys import all_queues, new_job_key
from kiosk.processes import free_port
from kiosk.queue import Heartbeat, JobQueue
from tests.support.servers import wait_for

JOB_TYPES = ("segmentation", "tracking")
QUEUES = all_queues(JOB_TYPES)
OVERLOADED = OVERLOADED_FRACTION * CONSUMER_TARGET
SETTLE_TIMEOUT = 10.0  # seconds for a change to go through a scrape and a rule evaluation


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not installed: these tests run a real Prometheus. Install it "
            "(Debian/Ubuntu: `apt-get install prometheus`, which brings promtool; CI does)."
        )
    return path


# ------------------------------------------------------------------------------ the rule files


def test_the_shipped_rule_files_are_the_rendered_ones() -> None:
    for path, text in rules.rendered().items():
        assert path.read_text() == text, f"{path} is stale: run `python -m autoscaler.rules`"


def test_promtool_accepts_the_recording_rules() -> None:
    result = subprocess.run(
        [binary("promtool"), "check", "rules", str(rules.RULES_FILE)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


def test_the_adapter_exposes_the_consumer_metric_and_gpu_utilisation() -> None:
    config = yaml.safe_load(rules.ADAPTER_FILE.read_text())
    exposed = {rule["name"]["as"]: rule for rule in config["externalRules"]}
    assert set(exposed) == {"kiosk_consumer_metric", "kiosk_gpu_utilization_ratio"}
    assert exposed["kiosk_consumer_metric"]["seriesQuery"].startswith("kiosk:consumer_metric{")
    for rule in exposed.values():
        assert "<<.LabelMatchers>>" in rule["metricsQuery"]  # an HPA selects its queue


def test_other_targets_limits_and_periods_render_into_the_rules() -> None:
    text = rules.render_rules(target=0.2, ratio_limit=40, interval=30)
    assert "interval: 30s" in text
    assert ">= 40\n" in text and "0.75 * 0.2\n" in text


# ------------------------------------------------------------------------------ stand-ins


@dataclass
class View:
    """What the test sets: the backend's replicas and the GPU series."""

    replicas: Replicas = field(default_factory=lambda: Replicas(1, 1, {}))
    dcgm: list[float] | None = None  # percent per GPU: stands in for NVIDIA's DCGM exporter
    busy: float | None = None  # stands in for the model server's kiosk_model_server_busy_ratio

    def gpu_ratio(self) -> float | None:
        """Mean GPU utilisation as the rules define it: DCGM first, else the busy ratio."""
        if self.dcgm:
            return sum(self.dcgm) / len(self.dcgm) / 100
        return self.busy


class GpuStandIn(Collector):
    """There is no GPU here. This serves what NVIDIA's DCGM exporter serves on a cluster
    (``DCGM_FI_DEV_GPU_UTIL``, percent per GPU), or what the embedded model server serves
    locally (``kiosk_model_server_busy_ratio``, a gauge of the same name), as the view says."""

    def __init__(self, view: View) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        if self.view.dcgm is not None:
            dcgm = GaugeMetricFamily(
                "DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", labels=["gpu", "modelName"]
            )
            for index, value in enumerate(self.view.dcgm):
                dcgm.add_metric([str(index), "Tesla T4"], value)
            yield dcgm
        if self.view.busy is not None:
            yield GaugeMetricFamily(
                "kiosk_model_server_busy_ratio", "stand-in", value=self.view.busy
            )


# ------------------------------------------------------------------------------ Prometheus


class Prometheus:
    """A real Prometheus on a free port, scraping and evaluating every second."""

    def __init__(self, directory: Path, targets: dict[str, int]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        shipped = rules.RULES_FILE.read_text()
        interval = f"    interval: {rules.promql_number(rules.HPA_SYNC)}s\n"
        assert shipped.count(interval) == 1
        rule_file = directory / "kiosk-rules.yaml"
        rule_file.write_text(shipped.replace(interval, "    interval: 1s\n"))  # else 15 s
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(rule_file)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                for job, port in targets.items()
            ],
        }
        config_file = directory / "prometheus.yml"
        config_file.write_text(json.dumps(config))  # JSON is YAML
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / "prometheus.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    binary("prometheus"),
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.http = httpx.Client(base_url=self.url, timeout=5)
        wait_for(self._ready, 20, 0.05, "Prometheus to start")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"prometheus exited:\n{self.log_path.read_text()[-3000:]}")
        return self.http.get("/-/ready").status_code == 200

    def vector(self, expr: str) -> dict[str, float]:
        """An instant query, by queue label ("" for series without one)."""
        reply = self.http.get("/api/v1/query", params={"query": expr}).json()
        assert reply["status"] == "success", reply
        return {r["metric"].get("queue", ""): float(r["value"][1]) for r in reply["data"]["result"]}

    def stop(self) -> None:
        self.http.close()
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(15)


@pytest.fixture
def view() -> View:
    return View()


@pytest.fixture
def prometheus(
    queue: JobQueue, view: View, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Prometheus]:
    """Prometheus scraping the exporter (fed from the test's Redis) and the GPU stand-in."""
    exporter, _ = serve_exporter(
        0,
        KioskCollector(queue, QUEUES, lambda: view.replicas, view.gpu_ratio),
        "127.0.0.1",
    )
    stand_in_registry = CollectorRegistry()
    stand_in_registry.register(GpuStandIn(view))
    stand_in, _ = start_http_server(0, "127.0.0.1", stand_in_registry)
    prom = Prometheus(
        tmp_path / "prometheus",
        {"kiosk-exporter": exporter.server_port, "gpu": stand_in.server_port},
    )
    yield prom
    prom.stop()
    for server in (exporter, stand_in):
        server.shutdown()
        server.server_close()
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print(f"\n----- prometheus log -----\n{prom.log_path.read_text()[-6000:]}")


# ------------------------------------------------------------------------------ the comparison


def submit(queue: JobQueue, job_type: str, name: str) -> str:
    request = JobRequest(job_type, name, f"uploads/{name}")
    key = new_job_key(request.queue, name)
    return queue.submit(request.queue, key, creation_fields(request, "test"))


def beat(queue: JobQueue, consumer_id: str, queue_name: str) -> None:
    queue.heartbeat(consumer_id, 120, Heartbeat(queue_name, "test", 1))


def policy(queue: JobQueue, view: View) -> dict[str, float]:
    """The Python policy on the same inputs, read through the queue API (not the exporter):
    demand = queued + in flight, consumers = replicas where the backend reports them, else live
    heartbeats, ready model servers, GPU percent (0 without a reading)."""
    beats = [beat.queue for beat in queue.live_consumers().values()]
    gpu = view.gpu_ratio()
    return {
        s.queue: consumer_metric(
            s.demand,
            view.replicas.consumers.get(s.queue, beats.count(s.queue)),
            view.replicas.model_servers_ready,
            100.0 * (gpu or 0.0),
        )
        for s in queue.stats(QUEUES)
    }


def close(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], abs_tol=1e-9) for k in a)


def settle(
    prom: Prometheus, expected: dict[str, float], gpu: float | None, what: str
) -> dict[str, float]:
    """Wait until the rule (and the exporter's own gauge) give ``expected`` for every queue,
    and the GPU rule gives ``gpu``; fail with what Prometheus last said."""
    want_gpu = {} if gpu is None else {"": gpu}
    checks: dict[str, Callable[[], dict[str, float]]] = {
        "kiosk:consumer_metric": lambda: prom.vector("kiosk:consumer_metric"),
        "kiosk_consumer_metric (exporter)": lambda: prom.vector("kiosk_consumer_metric"),
        "kiosk:gpu_utilization:ratio": lambda: prom.vector("kiosk:gpu_utilization:ratio"),
    }
    wanted = [expected, expected, want_gpu]
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        seen = {name: read() for name, read in checks.items()}
        if all(close(got, want) for got, want in zip(seen.values(), wanted, strict=True)):
            return seen["kiosk:consumer_metric"]
        if time.monotonic() > deadline:
            inputs = {
                expr: prom.vector(expr)
                for expr in (
                    "kiosk:queue_items:sum",
                    "kiosk:consumers:max",
                    "kiosk:model_servers:ready",
                )
            }
            pytest.fail(
                f"{what}: Prometheus did not settle on the policy's values in "
                f"{SETTLE_TIMEOUT:g}s.\nexpected {expected}, GPU {want_gpu}\n"
                f"saw {seen}\nrule inputs {inputs}"
            )
        time.sleep(0.2)


def test_the_consumer_metric_rule_is_the_policy_in_all_its_regimes(
    prometheus: Prometheus, queue: JobQueue, view: View
) -> None:
    # --- no work (local shape: the model server's busy ratio): 0 everywhere
    view.busy = 0.3
    view.replicas = Replicas(1, 1, {"segmentation": 2})
    expected = policy(queue, view)
    assert expected == dict.fromkeys(QUEUES, 0.0)
    settle(prometheus, expected, 0.3, "no work")

    # --- some work (cluster shape: DCGM, two GPUs at 40 % and 60 %: 50 % busy, 0.5 idle)
    view.busy = None
    view.dcgm = [40.0, 60.0]
    view.replicas = Replicas(1, 1, {"segmentation": 4})
    for index in range(6):
        submit(queue, "segmentation", f"s{index}.tif")
    queue.claim("segmentation", "c1", 1)
    queue.claim("segmentation", "c1", 1)  # c1's processing list now holds 2
    queue.claim("segmentation", "c2", 1)
    submit(queue, "tracking", "t.tif")
    for index in range(4):
        beat(queue, f"t{index}", "tracking")  # no replicas reported: heartbeats count
    submit(queue, "segmentation", "batch.zip")
    queue.claim("segmentation-zip", "z1", 1)  # in flight, and nobody heartbeats on that queue
    expected = policy(queue, view)
    assert expected == {
        "segmentation": 0.5,  # 6 items / 4 consumers = 1.5: the idle GPU fraction is lower
        "segmentation-zip": 0.5,  # 1 item, no consumer (counts as 1): idle GPU again
        "tracking": 0.15,  # 1 item, 4 consumers: no more items than consumers, the target
        "tracking-zip": 0.0,  # no work
    }
    settle(prometheus, expected, 0.5, "some work")
    items = prometheus.vector('kiosk_queue_items{state="in_flight"}')
    # lengths of the processing lists (2 + 1), zip queues included
    assert items == {"segmentation": 3, "segmentation-zip": 1, "tracking": 0, "tracking-zip": 0}
    assert prometheus.vector("kiosk:queue_items:sum") == {
        "segmentation": 6,
        "segmentation-zip": 1,
        "tracking": 1,
        "tracking-zip": 0,
    }

    # --- work but no ready model server (a cold start): 0 everywhere
    view.replicas = Replicas(1, 0, {"segmentation": 4})
    expected = policy(queue, view)
    assert expected == dict.fromkeys(QUEUES, 0.0)
    settle(prometheus, expected, 0.5, "no model server ready")

    # --- too much work (local shape again): consumers per model server at the ratio limit
    view.dcgm = None
    view.busy = 0.2
    view.replicas = Replicas(2, 2, {"segmentation": 300, "segmentation-zip": 299})
    for index in range(4, 300):
        beat(queue, f"t{index}", "tracking")  # 300 heartbeats over 2 model servers
    expected = policy(queue, view)
    assert expected == pytest.approx(
        {
            "segmentation": OVERLOADED,  # 300 / 2 = 150: at the limit
            "segmentation-zip": 1 / 299,  # 149.5: just under it, items per consumer
            "tracking": OVERLOADED,  # by heartbeats
            "tracking-zip": 0.0,
        }
    )
    settle(prometheus, expected, 0.2, "too much work")

    # --- no GPU series at all: the rule and the policy both count the GPU as idle
    view.busy = None
    view.replicas = Replicas(1, 1, {})
    expected = policy(queue, view)
    assert expected == {
        "segmentation": 1.0,  # 6 items, no replicas reported, no heartbeats: all idle GPU
        "segmentation-zip": 1.0,
        "tracking": OVERLOADED,
        "tracking-zip": 0.0,
    }
    settle(prometheus, expected, None, "no GPU reading")
