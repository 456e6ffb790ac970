"""Scaling policy as pure functions of what the queues, consumers and GPUs look like now.

One definition serves three places: the local controller (``kiosk up``), the Kubernetes
controller (the 0<->1 steps; HPAs do 1->N on a cluster with the same arithmetic in Prometheus
recording rules, ``autoscaler/rules``) and the cluster simulator, which runs this code on
simulated time. Nothing here reads a clock: callers pass ``now``.

The paper's policy (REFERENCE §2):

* model servers 0->1 when there is work, back to 0 after an idle grace; 1->N by an HPA on GPU
  utilisation (target 70 %);
* consumers by an HPA on the three-regime consumer metric (target 0.15).

Two of the original's defects are fixed here: demand counts in-flight items (the lengths of the
processing lists) and zip queues, and consumers also go to zero when there is no work (the
original kept one of each per queue forever).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kiosk.queue import QueueStats

# ------------------------------------------------------------------------------ defaults

IDLE_GRACE = 300.0  # seconds without demand before model servers (and consumers) go to 0
CONSUMER_TARGET = 0.15  # the consumer metric's HPA target
CONSUMER_RATIO_LIMIT = 150  # consumers per model server past which the metric says "shrink"
OVERLOADED_FRACTION = 0.75  # the "too much work" regime reports 0.75 * target (= 0.1125)
GPU_TARGET = 70.0  # GPU utilisation (percent) the model-server HPA aims for
HPA_TOLERANCE = 0.1  # HPA ignores metric/target ratios within 10 % of 1
HPA_SYNC = 15.0  # seconds between HPA evaluations
SCALE_DOWN_WINDOW = 300.0  # HPA scale-down stabilisation window (seconds)
SCALE_UP_WINDOW = 0.0


# ------------------------------------------------------------------------------ demand


QueueDemand = QueueStats  # a queue's queued and in-flight items; ``.demand`` is their sum


def total_demand(queues: Iterable[QueueDemand]) -> int:
    """All work in the system: queued plus in flight, over every queue (zip queues included)."""
    return sum(q.demand for q in queues)


# ------------------------------------------------------------------------------ 0 <-> 1


def zero_to_one(
    current: int,
    demand: int,
    idle_for: float,
    *,
    starting: bool = False,
    idle_grace: float = IDLE_GRACE,
) -> int:
    """Replicas for something that scales to zero: 1 as soon as there is work, 0 once it has
    had none for ``idle_grace`` seconds, otherwise unchanged (1->N belongs to an HPA).

    ``starting``: some replica is not ready yet (a GPU node can take minutes to appear). It is
    never taken away then, so work that arrives during a cold start is not stranded by a
    scale-down racing the start-up (kserve#1247).
    """
    if demand > 0:
        return max(current, 1)
    if current == 0 or starting:
        return current
    return 0 if idle_for >= idle_grace else current


# ------------------------------------------------------------------------------ consumer metric


def consumer_metric(
    items: int,
    consumers: int,
    model_servers: int,
    gpu_utilization: float,
    *,
    target: float = CONSUMER_TARGET,
    ratio_limit: float = CONSUMER_RATIO_LIMIT,
) -> float:
    """The paper's three-regime consumer metric, for an HPA with target ``target``.

    * no work, or no model server to send it to: 0 (the HPA shrinks consumers);
    * some work: min(idle GPU fraction, items per consumer) while consumers per model server
      stay under ``ratio_limit``: grows consumers while GPUs have headroom and each consumer
      has more than ``target`` items;
    * too many consumers per model server: ``0.75 * target``, a gentle shrink.

    ``items`` is the queue's demand (queued + in flight); ``gpu_utilization`` is the mean
    GPU utilisation of the model servers in percent (0-100).
    """
    if items <= 0 or model_servers <= 0:
        return 0.0
    if consumers / model_servers >= ratio_limit:
        return OVERLOADED_FRACTION * target
    idle_gpu = (100.0 - min(max(gpu_utilization, 0.0), 100.0)) / 100.0
    per_consumer = items / consumers if consumers > 0 else float(items)
    return min(idle_gpu, per_consumer)


# ------------------------------------------------------------------------------ HPA


def hpa_proposal(
    current: int, metric: float, target: float, *, tolerance: float = HPA_TOLERANCE
) -> int:
    """Kubernetes' HPA rule: ceil(current * metric / target), unchanged within the tolerance.
    A target scaled to zero stays there (the HPA is off while replicas are 0)."""
    if current <= 0:
        return 0
    ratio = metric / target
    if abs(ratio - 1.0) <= tolerance:
        return current
    return max(0, math.ceil(current * ratio - 1e-9))


@dataclass(frozen=True)
class HpaBehavior:
    """An autoscaling/v2 HPA's ``behavior``, with Kubernetes' defaults."""

    min_replicas: int = 1
    max_replicas: int = 10
    scale_up_window: float = SCALE_UP_WINDOW
    scale_down_window: float = SCALE_DOWN_WINDOW
    scale_up_pods: int = 4  # per period, or...
    scale_up_percent: float = 100.0  # ... this share of the current replicas, whichever is more
    scale_down_percent: float = 100.0
    period: float = HPA_SYNC


@dataclass
class Hpa:
    """One HorizontalPodAutoscaler: the proposal, then the stabilisation windows (the highest
    recommendation of the scale-down window, the lowest of the scale-up window) and the rate
    limits. Keeps its own recommendation history; give it ``now`` on every call."""

    target: float
    behavior: HpaBehavior = field(default_factory=HpaBehavior)
    tolerance: float = HPA_TOLERANCE
    _history: deque[tuple[float, int]] = field(default_factory=deque, repr=False)

    def desired(self, now: float, current: int, metric: float) -> int:
        if current <= 0:
            self._history.clear()
            return 0
        b = self.behavior
        proposal = hpa_proposal(current, metric, self.target, tolerance=self.tolerance)
        proposal = min(max(proposal, b.min_replicas), b.max_replicas)
        self._history.append((now, proposal))
        horizon = now - max(b.scale_up_window, b.scale_down_window)
        while self._history and self._history[0][0] < horizon:
            self._history.popleft()
        up = [r for t, r in self._history if t >= now - b.scale_up_window] or [proposal]
        down = [r for t, r in self._history if t >= now - b.scale_down_window] or [proposal]
        if proposal > current:
            wanted = min(up)
            limit = current + max(b.scale_up_pods, math.ceil(current * b.scale_up_percent / 100))
            return max(current, min(wanted, limit, b.max_replicas))
        if proposal < current:
            wanted = max(down)
            limit = current - math.floor(current * b.scale_down_percent / 100)
            return min(current, max(wanted, limit, b.min_replicas))
        return current


# ------------------------------------------------------------------------------ the whole policy


@dataclass(frozen=True)
class Observation:
    """What a controller sees at one moment."""

    now: float
    queues: Mapping[str, QueueDemand]
    consumers: Mapping[str, int]  # replicas per queue
    model_servers: int  # replicas asked for
    model_servers_ready: int
    gpu_utilization: float  # percent, mean over ready model servers


@dataclass(frozen=True)
class Decision:
    model_servers: int
    consumers: dict[str, int]


@dataclass(frozen=True)
class PolicyConfig:
    idle_grace: float = IDLE_GRACE
    consumer_target: float = CONSUMER_TARGET
    ratio_limit: float = CONSUMER_RATIO_LIMIT
    gpu_target: float = GPU_TARGET
    tolerance: float = HPA_TOLERANCE
    max_model_servers: int = 1
    max_consumers: int = 4  # per queue
    scale_down_window: float = SCALE_DOWN_WINDOW
    hpa_period: float = HPA_SYNC


class PaperPolicy:
    """The paper's policy, every step of it in one place: 0<->1 for model servers and
    consumers, an HPA on GPU utilisation for model servers and one on the consumer metric per
    queue. On a cluster only the 0<->1 steps run here (``hpas=False``): the HPAs are
    Kubernetes' own, fed by the same arithmetic in Prometheus rules."""

    def __init__(self, config: PolicyConfig | None = None, *, hpas: bool = True) -> None:
        self.config = c = config or PolicyConfig()
        self.hpas = hpas
        self._last_work: dict[str, float] = {}  # queue (or "" for any) -> last time with demand
        self._gpu_hpa = Hpa(
            c.gpu_target,
            HpaBehavior(
                max_replicas=c.max_model_servers,
                scale_down_window=c.scale_down_window,
                period=c.hpa_period,
            ),
            c.tolerance,
        )
        self._consumer_hpas: dict[str, Hpa] = {}

    def start(self, now: float, queues: Iterable[str]) -> None:
        """A (re)started controller cannot know when work was last seen: count from now, so a
        restart waits a whole idle grace before scaling anything to zero, never less."""
        for name in ["", *queues]:
            self._last_work.setdefault(name, now)

    def idle_for(self, queue: str, now: float) -> float:
        return now - self._last_work.get(queue, -math.inf)

    def _note_work(self, obs: Observation) -> None:
        for name, stats in obs.queues.items():
            if stats.demand > 0:
                self._last_work[name] = obs.now
                self._last_work[""] = obs.now

    def model_servers(self, obs: Observation) -> int:
        """0<->1 by demand, then the GPU-utilisation HPA while at least one is up."""
        self._note_work(obs)
        demand = total_demand(obs.queues.values())
        starting = obs.model_servers_ready < obs.model_servers
        replicas = zero_to_one(
            obs.model_servers,
            demand,
            self.idle_for("", obs.now),
            starting=starting,
            idle_grace=self.config.idle_grace,
        )
        if self.hpas and replicas > 0 and obs.model_servers > 0 and not starting:
            replicas = self._gpu_hpa.desired(obs.now, replicas, obs.gpu_utilization)
        return replicas

    def consumers(self, obs: Observation, model_servers: int | None = None) -> dict[str, int]:
        """Per queue: 0<->1 by that queue's demand, then the consumer-metric HPA."""
        self._note_work(obs)
        servers = obs.model_servers if model_servers is None else model_servers
        out = {}
        for name, stats in obs.queues.items():
            current = obs.consumers.get(name, 0)
            replicas = zero_to_one(
                current,
                stats.demand,
                self.idle_for(name, obs.now),
                idle_grace=self.config.idle_grace,
            )
            if self.hpas and replicas > 0 and current > 0:
                metric = consumer_metric(
                    stats.demand,
                    current,
                    servers,
                    obs.gpu_utilization,
                    target=self.config.consumer_target,
                    ratio_limit=self.config.ratio_limit,
                )
                hpa = self._consumer_hpas.setdefault(
                    name,
                    Hpa(
                        self.config.consumer_target,
                        HpaBehavior(
                            max_replicas=self.config.max_consumers,
                            scale_down_window=self.config.scale_down_window,
                            period=self.config.hpa_period,
                        ),
                        self.config.tolerance,
                    ),
                )
                replicas = hpa.desired(obs.now, replicas, metric)
            out[name] = replicas
        return out

    def decide(self, obs: Observation) -> Decision:
        servers = self.model_servers(obs)
        return Decision(servers, self.consumers(obs, servers))
