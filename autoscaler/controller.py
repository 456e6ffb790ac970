"""The autoscaler's loop: look at the queues, ask the policy, tell the backend.

Every ``autoscaler_interval`` seconds: queue stats from Redis, replicas from the backend, GPU
utilisation (locally, the model server's busy ratio), then the decision of the policy (any
:class:`~autoscaler.policy.ScalingPolicy`) applied where it differs from what runs. Which steps
are the policy's is the policy's business: the paper policy on a cluster does only 0<->1 and
leaves 1->N to the HPAs. A Redis or platform error skips one tick and nothing else: the next tick
starts from what the platform reports, so neither errors nor restarts make replicas flap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

import redis

from autoscaler.backends import Backend, BackendError, Replicas
from autoscaler.policy import Decision, Observation, ScalingPolicy
from kiosk.queue import Heartbeat, JobQueue

log = logging.getLogger(__name__)


class Controller:
    def __init__(
        self,
        backend: Backend,
        queue: JobQueue,
        queues: Sequence[str],
        policy: ScalingPolicy,
        *,
        gpu_utilization: Callable[[], float | None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.queue = queue
        self.queues = list(queues)
        self.policy = policy
        self.gpu_utilization = gpu_utilization
        self.clock = clock
        self.last_replicas: Replicas | None = None
        self.last_gpu: float | None = None
        self._marked: dict[str, frozenset[str]] = {}  # queue -> busy hosts last marked
        policy.start(clock(), self.queues)

    def tick(self) -> Decision | None:
        """One look and one decision; None when Redis or the platform did not answer."""
        try:
            stats = self.queue.stats(self.queues)
            consumers = self.queue.live_consumers()
            replicas = self.backend.replicas()
        except (redis.RedisError, BackendError) as exc:
            log.warning("cannot see the queues or replicas (%s); trying again next tick", exc)
            return None
        gpu = self._read_gpu()
        self.last_replicas, self.last_gpu = replicas, gpu
        observation = Observation(
            now=self.clock(),
            queues={s.queue: s for s in stats},
            consumers=replicas.consumers,
            model_servers=replicas.model_servers,
            model_servers_ready=replicas.model_servers_ready,
            gpu_utilization=100.0 * (gpu or 0.0),
        )
        decision = self.policy.decide(observation)
        try:
            self._apply(decision, replicas, consumers)
        except BackendError as exc:
            log.warning("scaling failed (%s); trying again next tick", exc)
            return None
        return decision

    def _read_gpu(self) -> float | None:
        """GPU utilisation 0..1, or None while nothing reports one (no model server yet)."""
        try:
            return self.gpu_utilization()
        except Exception as exc:  # a metrics page that is down or garbled: count it as unknown
            log.debug("no GPU utilisation this tick (%s)", exc)
            return None

    def _apply(
        self, decision: Decision, replicas: Replicas, consumers: Mapping[str, Heartbeat]
    ) -> None:
        if decision.model_servers != replicas.model_servers:
            log.info("model servers %d -> %d", replicas.model_servers, decision.model_servers)
            self.backend.scale_model_servers(decision.model_servers)
        for queue_name, wanted in decision.consumers.items():
            current = replicas.consumers.get(queue_name, 0)
            busy = frozenset(
                beat.host for beat in consumers.values() if beat.queue == queue_name and beat.busy
            )
            if wanted != current:
                log.info("consumers of %s %d -> %d", queue_name, current, wanted)
                self.backend.scale_consumers(queue_name, wanted, busy)
            elif wanted > 1 and self._marked.get(queue_name) != busy:
                # An HPA may scale these down between our ticks: keep busy ones marked.
                self.backend.mark_deletion_costs(queue_name, busy)
                self._marked[queue_name] = busy

    def run(self, interval: float, stopped: Callable[[], bool]) -> None:
        """Tick every ``interval`` seconds until ``stopped()``."""
        while not stopped():
            started = self.clock()
            self.tick()
            deadline = started + interval
            while not stopped() and self.clock() < deadline:
                time.sleep(min(0.2, max(0.0, deadline - self.clock())))
