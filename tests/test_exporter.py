"""The autoscaler's exporter on its own, against a real redis-server: labels from the one queue
list, in-flight items as list lengths, the consumer metric by the policy's function, and a
Redis outage that turns into ``kiosk_exporter_up 0`` instead of a failed scrape."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from autoscaler.backends import BackendError, Replicas
from autoscaler.exporter import KioskCollector, busy_ratio_reader, serve_exporter
from autoscaler.policy import consumer_metric
from kiosk.costs import Usage
from kiosk.jobs import JobRequest, creation_fields
from kiosk.keys import all_queues, heartbeat_key, new_job_key
from kiosk.processes import free_port
from kiosk.queue import Heartbeat, JobQueue, connect
from tests.support.servers import RedisServer, wait_for

JOB_TYPES = ("segmentation", "tracking")
QUEUES = all_queues(JOB_TYPES)  # the one list: segmentation, segmentation-zip, tracking, ...
STATES = ("queued", "in_flight")


def submit(queue: JobQueue, job_type: str, name: str = "a.tif") -> str:
    request = JobRequest(job_type, name, f"uploads/{name}")
    key = new_job_key(request.queue, name)
    return queue.submit(request.queue, key, creation_fields(request, "test"))


def beat(queue: JobQueue, consumer_id: str, queue_name: str, job: str = "") -> None:
    queue.heartbeat(consumer_id, 60, Heartbeat(queue_name, "test", 1, (job,) if job else ()))


def scrape(collector: KioskCollector) -> dict[tuple[str, frozenset], float]:
    """What Prometheus would read: the text exposition, parsed back."""
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def series(samples: dict, name: str) -> dict[frozenset, float]:
    return {labels: value for (n, labels), value in samples.items() if n == name}


def labelled(**labels: str) -> frozenset:
    return frozenset(labels.items())


@pytest.fixture
def loaded(queue: JobQueue) -> JobQueue:
    """segmentation: 4 jobs, 3 in flight in TWO processing lists (c1 holds 2, c2 holds 1);
    segmentation-zip: 1 queued; tracking: 1 failed (dead letter); consumers: 3 segmentation
    (2 busy), 1 tracking-zip; plus a queue and a consumer outside the list, and a bad
    heartbeat, which must all be ignored."""
    for index in range(4):
        submit(queue, "segmentation", f"s{index}.tif")
    c1a = queue.claim("segmentation", "c1", 1)
    queue.claim("segmentation", "c1", 1)
    c2 = queue.claim("segmentation", "c2", 1)
    submit(queue, "segmentation", "z.zip")
    submit(queue, "tracking", "t.tif")
    failed = queue.claim("tracking", "c5", 1)
    queue.fail(failed, "c5", "test")
    beat(queue, "c1", "segmentation", c1a.key)
    beat(queue, "c2", "segmentation", c2.key)
    beat(queue, "c3", "segmentation")
    beat(queue, "c4", "tracking-zip")
    submit(queue, "other")
    queue.claim("other", "c9", 1)
    beat(queue, "c9", "other")
    queue.redis.set(heartbeat_key("garbled"), "not json", ex=60)
    return queue


def test_every_queue_in_the_one_list_gets_every_series_and_nothing_else(
    loaded: JobQueue,
) -> None:
    samples = scrape(KioskCollector(loaded, QUEUES))
    items = series(samples, "kiosk_queue_items")
    assert set(items) == {labelled(queue=q, state=s) for q in QUEUES for s in STATES}
    assert items[labelled(queue="segmentation", state="queued")] == 1
    # the lengths of the processing lists (2 + 1), not how many lists there are (2)
    assert items[labelled(queue="segmentation", state="in_flight")] == 3
    assert items[labelled(queue="segmentation-zip", state="queued")] == 1
    assert items[labelled(queue="tracking", state="queued")] == 0
    assert items[labelled(queue="tracking", state="in_flight")] == 0
    assert series(samples, "kiosk_dead_letter_items") == {
        labelled(queue=q): 1 if q == "tracking" else 0 for q in QUEUES
    }
    assert series(samples, "kiosk_consumers") == {
        labelled(queue=q): {"segmentation": 3, "tracking-zip": 1}.get(q, 0) for q in QUEUES
    }
    assert series(samples, "kiosk_consumers_busy") == {
        labelled(queue=q): 2 if q == "segmentation" else 0 for q in QUEUES
    }
    assert samples[("kiosk_exporter_up", frozenset())] == 1
    # no backend view and no GPU source: nothing made up for them
    for name in (
        "kiosk_model_servers",
        "kiosk_consumer_replicas",
        "kiosk_gpu_utilization_ratio",
        "kiosk_consumer_metric",
    ):
        assert not series(samples, name), name


def test_the_consumer_metric_is_the_policys_function_of_the_exported_inputs(
    loaded: JobQueue,
) -> None:
    replicas = Replicas(model_servers=2, model_servers_ready=1, consumers={"segmentation": 2})
    collector = KioskCollector(loaded, QUEUES, lambda: replicas, lambda: 0.25)
    samples = scrape(collector)
    assert series(samples, "kiosk_model_servers") == {
        labelled(state="desired"): 2,
        labelled(state="ready"): 1,
    }
    # only the queues the backend reports; the others fall back to heartbeats
    assert series(samples, "kiosk_consumer_replicas") == {labelled(queue="segmentation"): 2}
    assert samples[("kiosk_gpu_utilization_ratio", frozenset())] == 0.25
    metric = series(samples, "kiosk_consumer_metric")
    assert set(metric) == {labelled(queue=q) for q in QUEUES}
    for q in QUEUES:
        items = sum(samples[("kiosk_queue_items", labelled(queue=q, state=s))] for s in STATES)
        consumers = replicas.consumers.get(q, samples[("kiosk_consumers", labelled(queue=q))])
        expected = consumer_metric(int(items), int(consumers), 1, 25.0)
        assert metric[labelled(queue=q)] == pytest.approx(expected), q
    assert metric[labelled(queue="segmentation")] == pytest.approx(0.75)  # idle GPU 75 %
    assert metric[labelled(queue="segmentation-zip")] == pytest.approx(0.75)  # 0 consumers
    assert metric[labelled(queue="tracking")] == 0  # no work


def test_each_users_running_usage_totals_are_counters_labelled_with_their_group(
    queue: JobQueue,
) -> None:
    collector = KioskCollector(queue, QUEUES)
    assert not series(scrape(collector), "kiosk_user_cost_dollars_total")  # no jobs yet
    queue.add_usage("ada", "lab-a", Usage(10.0, 12.0, 0.5))
    queue.add_usage("ada", "lab-a", Usage(5.0, 6.0, 0.25))
    queue.add_usage("", "", Usage(1.0, 2.0, 0.125))  # a job without an owner: anonymous's
    samples = scrape(collector)
    ada, anonymous = labelled(user="ada", group="lab-a"), labelled(user="anonymous", group="")
    assert series(samples, "kiosk_user_gpu_seconds_total") == {ada: 15.0, anonymous: 1.0}
    assert series(samples, "kiosk_user_cpu_seconds_total") == {ada: 18.0, anonymous: 2.0}
    assert series(samples, "kiosk_user_cost_dollars_total") == {ada: 0.75, anonymous: 0.125}


def test_a_gpu_source_without_a_reading_counts_as_idle(loaded: JobQueue) -> None:
    replicas = Replicas(1, 1, {})
    samples = scrape(KioskCollector(loaded, QUEUES, lambda: replicas, lambda: None))
    assert not series(samples, "kiosk_gpu_utilization_ratio")
    # 4 items over 3 heartbeating consumers, GPU counted idle: min(1, 4/3)
    assert samples[("kiosk_consumer_metric", labelled(queue="segmentation"))] == 1.0


def test_failing_backend_and_gpu_sources_are_counted_not_raised(loaded: JobQueue) -> None:
    def backend() -> Replicas:
        raise BackendError("the Kubernetes API is unreachable")

    def gpu() -> float:
        raise RuntimeError("model server metrics unreachable")

    collector = KioskCollector(loaded, QUEUES, backend, gpu)
    scrape(collector)
    samples = scrape(collector)
    assert samples[("kiosk_exporter_up", frozenset())] == 1
    errors = series(samples, "kiosk_exporter_scrape_errors_total")
    assert errors == {
        labelled(source="redis"): 0,
        labelled(source="replicas"): 2,
        labelled(source="gpu"): 2,
    }
    assert not series(samples, "kiosk_model_servers")
    assert not series(samples, "kiosk_consumer_metric")
    assert series(samples, "kiosk_queue_items")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def test_redis_down_gives_up_zero_and_the_scrape_still_answers(own_redis: RedisServer) -> None:
    queue = JobQueue(connect(own_redis.url, retries=0, socket_timeout=1.0))
    collector = KioskCollector(queue, QUEUES, lambda: Replicas(1, 1, {}), lambda: 0.5)
    submit(queue, "segmentation")
    assert scrape(collector)[("kiosk_exporter_up", frozenset())] == 1

    own_redis.stop()
    samples = scrape(collector)  # must not raise
    assert samples[("kiosk_exporter_up", frozenset())] == 0
    assert samples[("kiosk_exporter_scrape_errors_total", labelled(source="redis"))] == 1
    assert not series(samples, "kiosk_queue_items")  # no made-up zeros for the rules to act on
    assert not series(samples, "kiosk_consumer_metric")
    assert series(samples, "kiosk_model_servers")  # the other sources still answer

    own_redis.start()
    wait_for(
        lambda: scrape(collector)[("kiosk_exporter_up", frozenset())] == 1,
        10,
        what="the exporter to read Redis again",
    )


def test_served_over_http_with_the_model_servers_busy_ratio_as_gpu_source(
    queue: JobQueue,
) -> None:
    # A stand-in for the model server's metrics endpoint: the real one exports this gauge.
    model_server = CollectorRegistry()
    Gauge("kiosk_model_server_busy_ratio", "stand-in", registry=model_server).set(0.4)
    stand_in, _ = start_http_server(0, "127.0.0.1", model_server)
    read = busy_ratio_reader(f"http://127.0.0.1:{stand_in.server_port}/metrics")
    collector = KioskCollector(queue, QUEUES, lambda: Replicas(1, 1, {}), read)
    server, _ = serve_exporter(0, collector, "127.0.0.1")
    try:
        assert read() == pytest.approx(0.4)
        text = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5).text
        assert 'kiosk_queue_items{queue="tracking-zip",state="in_flight"} 0.0' in text
        assert "kiosk_gpu_utilization_ratio 0.4" in text
        assert "process_cpu_seconds_total" in text  # its own registry, process collectors in it
    finally:
        server.shutdown()
        server.server_close()
        stand_in.shutdown()
        stand_in.server_close()


def test_a_queue_listed_twice_is_refused(queue: JobQueue) -> None:
    with pytest.raises(ValueError, match="twice"):
        KioskCollector(queue, ["segmentation", "segmentation"])


def test_python_m_autoscaler_exporter_serves_until_sigterm(queue: JobQueue, redis_url: str) -> None:
    submit(queue, "segmentation", "a.zip")
    port = free_port()
    env = {
        **os.environ,
        "KIOSK_REDIS_URL": redis_url,
        "KIOSK_QUEUES": ",".join(JOB_TYPES),
        "KIOSK_EXPORTER_PORT": str(port),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "autoscaler.exporter"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        text = wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text,
            20,
            0.1,
            "python -m autoscaler.exporter to serve",
        )
        assert 'kiosk_queue_items{queue="segmentation-zip",state="queued"} 1.0' in text
        assert "kiosk_exporter_up 1.0" in text
        assert "kiosk_consumer_metric{" not in text  # alone it has no replicas view
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=15)[0]
    assert process.returncode == 0, output
    assert "exporter stopped" in output
