"""Scaling policies as pure functions of what the queues, consumers and GPUs look like now.

A policy is anything with the :class:`ScalingPolicy` interface: ``start`` once, then ``decide``
on every :class:`Observation`. Two implement it, :class:`PaperPolicy` and :class:`BacklogPolicy`,
and ``KIOSK_SCALING_POLICY`` picks one (:func:`policy_from_settings`, the one place settings
become a policy). The same code serves three places: the local controller (``kiosk up``), the
Kubernetes controller and the cluster simulator, which runs it on simulated time. Nothing here
reads a clock: callers pass ``now``.

The DeepCell Kiosk paper's policy:

* model servers 0->1 when there is work, back to 0 after an idle grace; 1->N by an HPA on GPU
  utilisation (target 70 %);
* consumers by an HPA on the three-regime consumer metric (target 0.15).

On a cluster the paper policy does only the 0<->1 steps and Kubernetes' HPAs do 1->N, with the
same arithmetic in Prometheus recording rules (``autoscaler/rules``). The backlog policy sets
every count itself, on a cluster too.

Two of the original's defects are fixed here: demand counts in-flight items (the lengths of the
processing lists) and zip queues, and consumers also go to zero when there is no work (the
original kept one of each per queue forever).
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from kiosk.keys import job_type_of, zip_queue
from kiosk.queue import QueueStats
from kiosk.settings import AutoscalerSettings

# ------------------------------------------------------------------------------ defaults

_DEFAULTS = AutoscalerSettings.model_fields  # the paper's numbers have one home: the settings

IDLE_GRACE: float = _DEFAULTS["idle_grace"].default  # seconds without demand before going to 0
CONSUMER_TARGET: float = _DEFAULTS["consumer_target"].default  # the consumer metric's target
CONSUMER_RATIO_LIMIT: float = _DEFAULTS["consumer_ratio_limit"].default  # consumers per server
OVERLOADED_FRACTION = 0.75  # the "too much work" regime reports 0.75 * target (= 0.1125)
GPU_TARGET: float = _DEFAULTS["gpu_target"].default  # GPU utilisation (percent) to aim for
HPA_TOLERANCE = 0.1  # HPA ignores metric/target ratios within 10 % of 1
HPA_SYNC = 15.0  # seconds between HPA evaluations
SCALE_DOWN_WINDOW: float = _DEFAULTS["scale_down_window"].default  # HPA stabilisation (s)
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
      has more than ``target`` items; but never past ``target`` while there are no more items
      than consumers (the paper's rule would grow them, and a consumer without an item idles:
      one zip held by its one consumer asked for the most zip consumers);
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
    metric = min(idle_gpu, per_consumer)
    return min(metric, target) if items <= consumers else metric


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
    """An autoscaling/v2 HPA's ``behavior``, with Kubernetes' defaults. The rate limits apply
    per evaluation: call :meth:`Hpa.desired` once per HPA sync (``HPA_SYNC``)."""

    min_replicas: int = 1
    max_replicas: int = 10
    scale_up_window: float = SCALE_UP_WINDOW
    scale_down_window: float = SCALE_DOWN_WINDOW
    scale_up_pods: int = 4  # per evaluation, or...
    scale_up_percent: float = 100.0  # ... this share of the current replicas, whichever is more
    scale_down_percent: float = 100.0


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
    """Replicas wanted: model servers, and consumers per queue."""

    model_servers: int
    consumers: dict[str, int]


class ScalingPolicy(Protocol):
    """What the controller (and the simulator) drives. ``start`` once with the time and the
    queues it will see, then ``decide`` on every observation; the clock is always passed in."""

    def start(self, now: float, queues: Iterable[str]) -> None:
        """Begin counting idleness from ``now`` (a restarted controller knows nothing older)."""
        ...

    def decide(self, obs: Observation) -> Decision:
        """The replicas wanted, given what runs now."""
        ...


@dataclass(frozen=True)
class PolicyConfig:
    """Settings both policies share. Built from the environment only by :meth:`from_settings`."""

    idle_grace: float = IDLE_GRACE
    consumer_target: float = CONSUMER_TARGET
    ratio_limit: float = CONSUMER_RATIO_LIMIT
    gpu_target: float = GPU_TARGET
    tolerance: float = HPA_TOLERANCE
    max_model_servers: int = 1
    max_consumers: int = 4  # per queue, unless the queue is in max_consumers_by_queue
    max_consumers_by_queue: Mapping[str, int] = field(default_factory=dict)
    scale_down_window: float = SCALE_DOWN_WINDOW

    @classmethod
    def from_settings(cls, settings: AutoscalerSettings) -> PolicyConfig:
        """The autoscaler's settings as a policy's configuration: the one place they are read
        (``max_consumers`` 0 means the CPU count)."""
        return cls(
            idle_grace=settings.idle_grace,
            consumer_target=settings.consumer_target,
            ratio_limit=settings.consumer_ratio_limit,
            gpu_target=settings.gpu_target,
            max_model_servers=settings.max_model_servers,
            max_consumers=settings.max_consumers or os.cpu_count() or 1,
            max_consumers_by_queue=dict(settings.max_consumers_by_queue),
            scale_down_window=settings.scale_down_window,
        )

    def max_consumers_of(self, queue: str) -> int:
        """Most consumers ``queue`` may have."""
        return self.max_consumers_by_queue.get(queue, self.max_consumers)

    def hpa(self, target: float, max_replicas: int) -> Hpa:
        """An HPA with these settings' tolerance and stabilisation."""
        behavior = HpaBehavior(
            max_replicas=max_replicas,
            scale_down_window=self.scale_down_window,
        )
        return Hpa(target, behavior, self.tolerance)


class IdleClock:
    """When work was last seen: per pipeline (a job type's queue and its zip queue together,
    since a zip queue that fans out faster than zips arrive looks empty at most looks while its
    images are still being worked on) and for the whole system (key "")."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def start(self, now: float, queues: Iterable[str]) -> None:
        """A (re)started controller cannot know when work was last seen: count from now, so a
        restart waits a whole idle grace before scaling anything to zero, never less."""
        for name in ["", *(job_type_of(q) for q in queues)]:
            self._last.setdefault(name, now)

    def note(self, obs: Observation) -> None:
        for name, stats in obs.queues.items():
            if stats.demand > 0:
                self._last[job_type_of(name)] = obs.now
                self._last[""] = obs.now

    def idle_for(self, queue: str, now: float) -> float:
        """Seconds since the pipeline of ``queue`` had work ("" for any queue)."""
        return now - self._last.get(job_type_of(queue), -math.inf)


class PaperPolicy:
    """The paper's policy, every step of it in one place: 0<->1 for model servers and
    consumers, an HPA on GPU utilisation for model servers and one on the consumer metric per
    queue. On a cluster only the 0<->1 steps run here (``hpas=False``): the HPAs are
    Kubernetes' own, fed by the same arithmetic in Prometheus rules."""

    def __init__(self, config: PolicyConfig | None = None, *, hpas: bool = True) -> None:
        self.config = c = config or PolicyConfig()
        self.hpas = hpas
        self.idle = IdleClock()
        self._gpu_hpa = c.hpa(c.gpu_target, c.max_model_servers)
        self._consumer_hpas: dict[str, Hpa] = {}

    def start(self, now: float, queues: Iterable[str]) -> None:
        self.idle.start(now, queues)

    def model_servers(self, obs: Observation) -> int:
        """0<->1 by demand, then the GPU-utilisation HPA while at least one is asked for (as
        Kubernetes' HPA, it keeps scaling while earlier replicas are still starting)."""
        starting = obs.model_servers_ready < obs.model_servers
        replicas = zero_to_one(
            obs.model_servers,
            total_demand(obs.queues.values()),
            self.idle.idle_for("", obs.now),
            starting=starting,
            idle_grace=self.config.idle_grace,
        )
        if self.hpas and replicas > 0 and obs.model_servers > 0:
            replicas = self._gpu_hpa.desired(obs.now, replicas, obs.gpu_utilization)
            if starting:
                replicas = max(replicas, obs.model_servers)  # never drop one still starting
        return replicas

    def consumers(self, obs: Observation) -> dict[str, int]:
        """Per queue: 0<->1 by that queue's demand, then the consumer-metric HPA, which counts
        ready model servers (as the Prometheus rule does: a starting one takes no requests)."""
        out = {}
        for name, stats in obs.queues.items():
            current = obs.consumers.get(name, 0)
            replicas = zero_to_one(
                current,
                stats.demand,
                self.idle.idle_for(name, obs.now),
                idle_grace=self.config.idle_grace,
            )
            if self.hpas and replicas > 0 and current > 0:
                metric = consumer_metric(
                    stats.demand,
                    current,
                    obs.model_servers_ready,
                    obs.gpu_utilization,
                    target=self.config.consumer_target,
                    ratio_limit=self.config.ratio_limit,
                )
                c = self.config
                hpa = self._consumer_hpas.get(name) or self._consumer_hpas.setdefault(
                    name, c.hpa(c.consumer_target, c.max_consumers_of(name))
                )
                replicas = hpa.desired(obs.now, replicas, metric)
            out[name] = replicas
        return out

    def decide(self, obs: Observation) -> Decision:
        """Model servers and consumers for this observation (with ``hpas=False`` only 0<->1)."""
        self.idle.note(obs)
        return Decision(self.model_servers(obs), self.consumers(obs))


# ------------------------------------------------------------------------------ a backlog policy


@dataclass(frozen=True)
class BacklogConfig:
    """``BacklogPolicy``'s settings beyond ``PolicyConfig``: what one model server can do and
    how much work justifies one more."""

    images_per_server_s: float = 7.5  # one model server's inference speed (paper: 5-10)
    gpu_target: float = 90.0  # utilisation (percent) the server count is planned for
    min_backlog_per_server: float = 300.0  # seconds of work that justify one more server
    consumer_cycle_s: float = 1.0  # prior, low on purpose: too few consumers get measured
    consumer_headroom: float = 1.25  # consumers are cheap next to an underfed GPU
    measure_below: float = 90.0  # measure the cycle only while GPUs have headroom (percent)
    rate_window: float = 60.0  # seconds: time constant of the smoothed rates
    images_per_zip: int = 100  # a zip item is worth this many images downstream
    zips_per_consumer: float = 2.0


class BacklogPolicy:
    """Size model servers from the work there is, and consumers from what the servers can take.

    The paper's policy only learns that it needs more GPUs once the ones it has are busy, and
    while any is still starting (2-4 min on a cluster) it does not scale again, so a big
    submission climbs 1 -> 2 -> 3 -> 5 -> 8 one cold start at a time. Its consumer metric
    targets 85 % GPU utilisation (it shrinks consumers once idle GPU < 15 %), and because a
    saturated GPU reads as "no idle GPU" (metric 0) its HPA cuts consumers to the minimum
    after the 5-min window, starves the GPUs and grows them back: a saw-tooth.

    Here, every sync:

    * **model servers** = the most of: the smoothed arrival rate over what one server does
      at ``gpu_target``; the backlog (queued + in flight, zips counted as their images) over
      ``min_backlog_per_server`` seconds of one server's work; and the paper's own
      utilisation rule (``ready * util / target``) as a floor. All servers for a backlog are
      asked for at once (HPA rate limits apply), also while earlier ones are starting; a
      starting server is never taken away (kserve#1247).
    * **consumers** of an image queue = what keeps the planned servers fed:
      ``servers * speed * cycle * headroom`` (Little's law), ``cycle`` being a consumer's
      seconds per image, measured as in-flight / served while at least as much work waits on
      the queue as consumers hold (consumers set the pace, not arrivals) and the GPUs are below
      ``measure_below`` (queueing at the GPU does not inflate it), and never more than the
      images there are (its zip queue's counted in). Zip queues get one consumer per
      ``zips_per_consumer`` items; a queue and its zip queue are idle only together.
    * 0 <-> 1 and the idle grace are ``zero_to_one``'s, and every count goes through an
      ``Hpa`` (target 1 on wanted/current), so scale-down stabilisation, tolerance and rate
      limits are Kubernetes'. On a cluster too these counts are the autoscaler's own: it
      patches the Deployments' scale subresource, and the chart renders no HPAs for them.

    The arrival rate is d(images)/dt plus what the GPUs served (util * ready * speed), so it
    needs the servers' speed (``images_per_server_s``); a wrong value is corrected by the
    utilisation floor and the backlog term.
    """

    def __init__(
        self, config: PolicyConfig | None = None, backlog: BacklogConfig | None = None
    ) -> None:
        self.config = c = config or PolicyConfig()
        self.backlog = backlog or BacklogConfig()
        self.idle = IdleClock()
        self._servers_hpa = c.hpa(1.0, c.max_model_servers)
        self._consumer_hpas: dict[str, Hpa] = {}
        self._previous: tuple[float, float] | None = None  # (now, images in the system)
        self.arrival_rate = 0.0  # images/s, smoothed
        self.utilization = 0.0  # percent, smoothed
        self.cycle_s = self.backlog.consumer_cycle_s

    def start(self, now: float, queues: Iterable[str]) -> None:
        self.idle.start(now, queues)

    def pipeline_demand(self, obs: Observation, queue: str) -> int:
        """Items on a queue and on the other queue of its pipeline: a zip queue whose zips are
        fanned out faster than they arrive is seen empty at most syncs while its images are
        still being worked on, so idleness is judged for the pipeline as a whole."""
        base = job_type_of(queue)
        return sum(q.demand for name, q in obs.queues.items() if job_type_of(name) == base)

    def images(self, queues: Iterable[QueueDemand]) -> float:
        """Work in the system in images: a zip item counts as ``images_per_zip``."""
        per_zip = self.backlog.images_per_zip
        return float(sum(q.demand * (per_zip if _is_zip(q.queue) else 1) for q in queues))

    def _served(self, obs: Observation) -> float:
        """Images/s the ready model servers inferred over the last interval."""
        busy = min(max(obs.gpu_utilization, 0.0), 100.0) / 100.0
        return busy * obs.model_servers_ready * self.backlog.images_per_server_s

    def _learn(self, obs: Observation) -> None:
        """Update the smoothed arrival rate and the consumer cycle time."""
        b = self.backlog
        images = self.images(obs.queues.values())
        served = self._served(obs)
        if self._previous is not None:
            then, before = self._previous
            dt = obs.now - then
            if dt > 0:
                weight = 1.0 - math.exp(-dt / b.rate_window)
                arrived = max(0.0, (images - before) / dt + served)
                self.arrival_rate += weight * (arrived - self.arrival_rate)
                self.utilization += weight * (obs.gpu_utilization - self.utilization)
                work = [q for q in obs.queues.values() if not _is_zip(q.queue)]
                waiting = sum(q.queued for q in work)
                held = sum(q.in_flight for q in work)
                backlogged = waiting >= held > 0  # consumers, not arrivals, set the pace
                # Utilisation from a server not yet ready serves nothing: no cycle to learn.
                if backlogged and served > 0 and 5.0 < obs.gpu_utilization < b.measure_below:
                    self.cycle_s += weight * (held / served - self.cycle_s)
        self._previous = (obs.now, images)

    def servers_wanted(self, obs: Observation) -> int:
        """Model servers for the work in sight (at least 1; at most the configured maximum)."""
        b = self.backlog
        speed = b.images_per_server_s
        by_rate = self.arrival_rate / (speed * b.gpu_target / 100.0)
        by_backlog = self.images(obs.queues.values()) / (speed * b.min_backlog_per_server)
        by_util = obs.model_servers_ready * self.utilization / b.gpu_target
        wanted = math.ceil(max(by_rate, by_backlog, by_util, 1.0) - 1e-9)
        return min(wanted, self.config.max_model_servers)

    def model_servers(self, obs: Observation) -> int:
        demand = total_demand(obs.queues.values())
        starting = obs.model_servers_ready < obs.model_servers
        replicas = zero_to_one(
            obs.model_servers,
            demand,
            self.idle.idle_for("", obs.now),
            starting=starting,
            idle_grace=self.config.idle_grace,
        )
        if replicas <= 0:
            return 0
        wanted = self.servers_wanted(obs)
        if starting:
            wanted = max(wanted, obs.model_servers)
        return self._servers_hpa.desired(obs.now, replicas, wanted / replicas)

    def consumers_wanted(self, obs: Observation, name: str, servers: int) -> int:
        """Consumers one queue needs now (before the HPA's stabilisation and limits)."""
        b = self.backlog
        stats = obs.queues[name]
        if _is_zip(name):
            wanted = math.ceil(stats.demand / b.zips_per_consumer)
        else:
            upstream = obs.queues.get(zip_queue(name))
            images = stats.demand + (upstream.demand * b.images_per_zip if upstream else 0)
            feed = servers * b.images_per_server_s * self.cycle_s * b.consumer_headroom
            wanted = min(math.ceil(feed), images)
        return max(1, min(wanted, self.config.max_consumers_of(name)))

    def consumers(self, obs: Observation, model_servers: int | None = None) -> dict[str, int]:
        servers = obs.model_servers if model_servers is None else model_servers
        out = {}
        for name in obs.queues:
            work = self.pipeline_demand(obs, name)
            current = obs.consumers.get(name, 0)
            replicas = zero_to_one(
                current, work, self.idle.idle_for(name, obs.now), idle_grace=self.config.idle_grace
            )
            if replicas > 0 and work > 0:
                hpa = self._consumer_hpas.get(name) or self._consumer_hpas.setdefault(
                    name, self.config.hpa(1.0, self.config.max_consumers_of(name))
                )
                wanted = self.consumers_wanted(obs, name, servers)
                replicas = hpa.desired(obs.now, replicas, wanted / replicas)
            out[name] = replicas
        return out

    def decide(self, obs: Observation) -> Decision:
        """Model servers first, then the consumers that keep that many fed."""
        self.idle.note(obs)
        self._learn(obs)
        servers = self.model_servers(obs)
        return Decision(servers, self.consumers(obs, servers))


def _is_zip(queue: str) -> bool:
    return queue != job_type_of(queue)


# ------------------------------------------------------------------------------ from the settings


def policy_from_settings(settings: AutoscalerSettings) -> ScalingPolicy:
    """The policy ``KIOSK_SCALING_POLICY`` names, configured from ``settings``.

    ``paper`` on the Kubernetes backend runs only its 0<->1 steps: the chart's HPAs do 1->N.
    ``backlog`` sets every count itself on either backend (the chart then renders no HPAs for
    model servers and consumers), as ``paper`` does on the local backend.
    """
    config = PolicyConfig.from_settings(settings)
    if settings.scaling_policy == "backlog":
        return BacklogPolicy(config)
    return PaperPolicy(config, hpas=settings.autoscaler_backend == "local")
