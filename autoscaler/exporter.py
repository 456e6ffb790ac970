"""The autoscaler's Prometheus exporter: queue demand, consumers, model servers and the consumer
metric, read from Redis when Prometheus scrapes.

Everything is read at scrape time (two SCANs and one pipeline), so Prometheus sees the queues
as they are, not as a loop last saw them, and nothing runs between scrapes. Labels come from
the one queue list (``all_queues(settings.queues)``, zip queues included): every queue gets
every Redis series, zeros included, so a queue never drops out of a rule. In-flight items are the
*lengths* of the processing lists (the original counted the lists).

The controller can serve this collector with its backend's view of the replicas;
``python -m autoscaler.exporter`` runs it alone (no replicas view: on a cluster the recording
rules then take the model servers from kube-state-metrics). Recording rules built on these
series live in :mod:`autoscaler.rules`.

A Redis outage does not break a scrape: the Redis series are left out and
``kiosk_exporter_up`` is 0, so the rules yield nothing and HPAs hold still instead of acting on
zeros.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from threading import Thread
from typing import TypeVar
from wsgiref.simple_server import WSGIServer

import httpx
import redis
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from autoscaler.backends import Replicas
from autoscaler.policy import CONSUMER_TARGET, consumer_metric
from kiosk.keys import (
    PROCESSING_PREFIX,
    all_queues,
    dead_letter_list,
    heartbeat_key,
    parse_processing_list,
)
from kiosk.logs import setup_logging
from kiosk.queue import Heartbeat, JobQueue
from kiosk.settings import AutoscalerSettings
from kiosk.signals import StopSignals

log = logging.getLogger("exporter")
T = TypeVar("T")

# Metric names: the recording rules (autoscaler.rules) and the tests use these constants.
QUEUE_ITEMS = "kiosk_queue_items"
DEAD_LETTER_ITEMS = "kiosk_dead_letter_items"
CONSUMERS = "kiosk_consumers"
CONSUMERS_BUSY = "kiosk_consumers_busy"
MODEL_SERVERS = "kiosk_model_servers"
CONSUMER_REPLICAS = "kiosk_consumer_replicas"
GPU_UTILIZATION = "kiosk_gpu_utilization_ratio"
CONSUMER_METRIC = "kiosk_consumer_metric"
EXPORTER_UP = "kiosk_exporter_up"
SCRAPE_ERRORS = "kiosk_exporter_scrape_errors"  # exposed as ..._total
SCRAPE_SECONDS = "kiosk_exporter_scrape_duration_seconds"
USER_GPU_SECONDS = "kiosk_user_gpu_seconds"  # exposed as ..._total, as the next two
USER_CPU_SECONDS = "kiosk_user_cpu_seconds"
USER_COST = "kiosk_user_cost_dollars"
# What the model server exports (model_server.metrics): the local GPU stand-in.
BUSY_RATIO = "kiosk_model_server_busy_ratio"

SCAN_COUNT = 1000  # keys per SCAN step: fewer round trips on a large keyspace
TICK = 0.25  # seconds between looks at the stop flags


@dataclass(frozen=True)
class QueueReading:
    """One queue as Redis showed it during one scrape."""

    queued: int
    in_flight: int  # sum of the lengths of the queue's processing lists
    dead_letters: int
    consumers: int  # live heartbeats that name this queue
    busy: int  # ... of which hold a job


def read_queues(queue: JobQueue, queues: Sequence[str]) -> dict[str, QueueReading]:
    """Every queue's lengths and live consumers in two SCANs and one pipelined round trip
    (``JobQueue.stats`` scans once per queue; a scrape should cost Redis as little as it can).
    Queues outside ``queues`` are ignored, so labels only ever come from the one list."""
    client = queue.redis
    known = set(queues)
    held: list[tuple[str, str]] = []
    for key in client.scan_iter(match=f"{PROCESSING_PREFIX}*", count=SCAN_COUNT, _type="list"):
        parsed = parse_processing_list(key)
        if parsed is not None and parsed[0] in known:
            held.append((parsed[0], key))
    beats = list(client.scan_iter(match=heartbeat_key("*"), count=SCAN_COUNT, _type="string"))
    with client.pipeline(transaction=False) as pipe:
        for name in queues:
            pipe.llen(name)
        for name in queues:
            pipe.llen(dead_letter_list(name))
        for _, key in held:
            pipe.llen(key)
        if beats:
            pipe.mget(beats)
        replies = pipe.execute()
    n = len(queues)
    queued = dict(zip(queues, replies[:n], strict=True))
    dead = dict(zip(queues, replies[n : 2 * n], strict=True))
    in_flight = dict.fromkeys(queues, 0)
    for (name, _), length in zip(held, replies[2 * n : 2 * n + len(held)], strict=True):
        in_flight[name] += int(length)
    consumers = dict.fromkeys(queues, 0)
    busy = dict.fromkeys(queues, 0)
    for beat in map(Heartbeat.from_json, replies[-1] if beats else []):
        if beat is not None and beat.queue in known:
            consumers[beat.queue] += 1
            busy[beat.queue] += beat.busy
    return {
        name: QueueReading(
            int(queued[name]), in_flight[name], int(dead[name]), consumers[name], busy[name]
        )
        for name in queues
    }


class KioskCollector(Collector):
    """Prometheus collector over the Redis queues (and, when given, the backend's replicas and a
    GPU-utilisation source), read at scrape time.

    ``replicas``: the controller's backend view (None from the callable: unknown this scrape).
    ``gpu_utilization``: mean GPU utilisation 0..1 (None: no reading now). The consumer metric
    is exported only when both are given, since it needs both.
    """

    def __init__(
        self,
        queue: JobQueue,
        queues: Sequence[str],
        replicas: Callable[[], Replicas | None] | None = None,
        gpu_utilization: Callable[[], float | None] | None = None,
    ) -> None:
        if len(set(queues)) != len(queues):
            raise ValueError(f"queues are listed twice in {list(queues)}")
        self.queue = queue
        self.queues = list(queues)
        self.replicas = replicas
        self.gpu_utilization = gpu_utilization
        self._lock = threading.Lock()
        self._errors = dict.fromkeys(self._sources(), 0)
        self._redis_ok = True

    def _sources(self) -> list[str]:
        sources = ["redis"]
        if self.replicas is not None:
            sources.append("replicas")
        if self.gpu_utilization is not None:
            sources.append("gpu")
        return sources

    # ------------------------------------------------------------------ the families

    def _families(self) -> dict[str, GaugeMetricFamily | CounterMetricFamily]:
        """Empty families, for ``describe`` and as the containers ``collect`` fills."""
        families: list[GaugeMetricFamily | CounterMetricFamily] = [
            GaugeMetricFamily(
                QUEUE_ITEMS,
                "Jobs on a queue: state=queued wait on the queue's list, state=in_flight are "
                "held by consumers (the summed lengths of its processing lists).",
                labels=["queue", "state"],
            ),
            GaugeMetricFamily(
                DEAD_LETTER_ITEMS,
                "Failed-job copies on the queue's dead-letter list.",
                labels=["queue"],
            ),
            GaugeMetricFamily(
                CONSUMERS,
                "Consumers of the queue with a live heartbeat.",
                labels=["queue"],
            ),
            GaugeMetricFamily(
                CONSUMERS_BUSY,
                "Consumers of the queue whose last heartbeat names a job they hold.",
                labels=["queue"],
            ),
            GaugeMetricFamily(
                MODEL_SERVERS,
                "Model server replicas as the autoscaler's backend reports them: "
                "state=desired asked for, state=ready serving.",
                labels=["state"],
            ),
            GaugeMetricFamily(
                CONSUMER_REPLICAS,
                "Consumer replicas of the queue as the autoscaler's backend reports them.",
                labels=["queue"],
            ),
            GaugeMetricFamily(
                GPU_UTILIZATION,
                "Mean utilisation of the model servers' GPUs, 0..1, as the autoscaler reads it "
                "(locally the model server's busy ratio).",
            ),
            GaugeMetricFamily(
                CONSUMER_METRIC,
                f"The paper's consumer metric (HPA target {CONSUMER_TARGET:g}) by "
                "autoscaler.policy.consumer_metric, from this scrape's inputs: items = "
                "kiosk_queue_items (queued + in_flight); consumers = kiosk_consumer_replicas "
                "where reported, else kiosk_consumers; model servers = "
                'kiosk_model_servers{state="ready"}; GPU = kiosk_gpu_utilization_ratio (0 '
                "while there is no reading). The recording rule kiosk:consumer_metric "
                "computes the same in Prometheus.",
                labels=["queue"],
            ),
            CounterMetricFamily(
                USER_GPU_SECONDS,
                "Estimated GPU seconds of a user's jobs, every attempt (kiosk.costs): the "
                "seconds they waited on the model server.",
                labels=["user", "group"],
            ),
            CounterMetricFamily(
                USER_CPU_SECONDS,
                "Consumer seconds of a user's jobs, every attempt and stage.",
                labels=["user", "group"],
            ),
            CounterMetricFamily(
                USER_COST,
                "Estimated dollars of a user's jobs, from the consumers' price table.",
                labels=["user", "group"],
            ),
            GaugeMetricFamily(
                EXPORTER_UP,
                "1 when this scrape read Redis, 0 when Redis could not be read (the queue "
                "series are then left out).",
            ),
            CounterMetricFamily(
                SCRAPE_ERRORS,
                "Scrapes in which a source failed: redis, replicas (the backend) or gpu.",
                labels=["source"],
            ),
            GaugeMetricFamily(
                SCRAPE_SECONDS,
                "Wall time this collector took to read its sources for the scrape.",
            ),
        ]
        return {family.name: family for family in families}

    def describe(self) -> Iterator[Metric]:
        """The families without reading anything, so registering touches no Redis."""
        yield from self._families().values()

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        f = self._families()
        readings = self._read_redis()
        usage = self._call("redis", self.queue.usage_totals) if readings is not None else None
        replicas = self._call("replicas", self.replicas)
        gpu = self._call("gpu", self.gpu_utilization)

        if readings is not None:
            for name, r in readings.items():
                f[QUEUE_ITEMS].add_metric([name, "queued"], r.queued)
                f[QUEUE_ITEMS].add_metric([name, "in_flight"], r.in_flight)
                f[DEAD_LETTER_ITEMS].add_metric([name], r.dead_letters)
                f[CONSUMERS].add_metric([name], r.consumers)
                f[CONSUMERS_BUSY].add_metric([name], r.busy)
        for user, (group, used) in sorted((usage or {}).items()):
            f[USER_GPU_SECONDS].add_metric([user, group], used.gpu_seconds)
            f[USER_CPU_SECONDS].add_metric([user, group], used.cpu_seconds)
            f[USER_COST].add_metric([user, group], used.cost)
        if replicas is not None:
            f[MODEL_SERVERS].add_metric(["desired"], replicas.model_servers)
            f[MODEL_SERVERS].add_metric(["ready"], replicas.model_servers_ready)
            for name in self.queues:
                if name in replicas.consumers:
                    f[CONSUMER_REPLICAS].add_metric([name], replicas.consumers[name])
        if gpu is not None:
            f[GPU_UTILIZATION].add_metric([], gpu)
        if readings is not None and replicas is not None and self.gpu_utilization is not None:
            for name, r in readings.items():
                consumers = replicas.consumers.get(name, r.consumers)
                value = consumer_metric(
                    r.queued + r.in_flight,
                    consumers,
                    replicas.model_servers_ready,
                    100.0 * (gpu or 0.0),
                )
                f[CONSUMER_METRIC].add_metric([name], value)

        f[EXPORTER_UP].add_metric([], 1 if readings is not None else 0)
        with self._lock:
            for source, count in self._errors.items():
                f[SCRAPE_ERRORS].add_metric([source], count)
        f[SCRAPE_SECONDS].add_metric([], time.perf_counter() - started)
        yield from f.values()

    # ------------------------------------------------------------------ sources

    def _read_redis(self) -> dict[str, QueueReading] | None:
        try:
            readings = read_queues(self.queue, self.queues)
        except (redis.RedisError, OSError) as exc:
            self._failed("redis", exc, warn=self._redis_ok)
            self._redis_ok = False
            return None
        if not self._redis_ok:
            log.info("Redis is readable again")
        self._redis_ok = True
        return readings

    def _call(self, source: str, fn: Callable[[], T | None] | None) -> T | None:
        """A source's value, or None when it has none or failed (a failure is counted and
        logged, never raised into the scrape)."""
        if fn is None:
            return None
        try:
            return fn()
        except Exception as exc:  # a backend or HTTP error must not fail the whole scrape
            self._failed(source, exc, warn=True)
            return None

    def _failed(self, source: str, exc: BaseException, *, warn: bool) -> None:
        with self._lock:
            self._errors[source] += 1
        (log.warning if warn else log.debug)("scrape: %s unavailable (%s)", source, exc)


def busy_ratio_reader(url: str, timeout: float = 2.0) -> Callable[[], float | None]:
    """A GPU-utilisation source for the local shape: the model server's
    ``kiosk_model_server_busy_ratio`` read from its metrics URL; None when it does not
    export one (for example, it is still starting)."""

    def read() -> float | None:
        response = httpx.get(url, timeout=timeout)
        response.raise_for_status()
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name == BUSY_RATIO:
                    return float(sample.value)
        return None

    return read


def serve_exporter(
    port: int,
    collector: Collector,
    addr: str = "0.0.0.0",
    registry: CollectorRegistry | None = None,
) -> tuple[WSGIServer, Thread]:
    """Serve ``collector`` at ``http://addr:port/metrics`` from a daemon thread, in a registry
    of its own (with the process collectors) unless one is given. Port 0 picks a free port:
    read it from ``server.server_port``. Stop with ``server.shutdown()``."""
    if registry is None:
        registry = CollectorRegistry()
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(standard)
    registry.register(collector)
    return start_http_server(port, addr, registry)


def main() -> int:
    """Run the exporter alone until SIGTERM or Ctrl-C."""
    settings = AutoscalerSettings()
    setup_logging(settings.log_level, "exporter")
    if not settings.exporter_port:
        log.error("KIOSK_EXPORTER_PORT is 0 (off): set a port for the exporter to listen on")
        return 2
    queues = all_queues(settings.queues)
    # One retry (a pooled connection that a Redis restart broke) and short timeouts: a scrape
    # must answer, with kiosk_exporter_up 0 if need be, before Prometheus's 10 s timeout.
    queue = JobQueue.from_settings(settings, retries=1, socket_timeout=2.0)
    gpu = (
        busy_ratio_reader(settings.model_server_metrics_url)
        if settings.model_server_metrics_url
        else None
    )
    server, _ = serve_exporter(settings.exporter_port, KioskCollector(queue, queues, None, gpu))
    log.info("exporting %s on port %d", ", ".join(queues) or "no queues", server.server_port)
    signals = StopSignals().install()
    while not signals.count:
        time.sleep(TICK)
    server.shutdown()
    server.server_close()
    log.info("exporter stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
