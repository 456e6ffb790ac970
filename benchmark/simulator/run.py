"""The loop: every HPA sync (15 s simulated) build an ``Observation`` from the simulated
cluster, hand it to the policy from ``autoscaler.policy`` (the code production runs) and apply
its ``Decision``; Kubernetes, the cluster autoscaler and the work do the rest in between.

What the policy sees, per queue (``segmentation-zip`` for the zips as uploaded,
``segmentation`` for their images once fanned out): items queued, items in flight (held by a
consumer, or by a dead one until the janitor puts them back); consumers asked for; model
servers asked for and ready; GPU utilisation, the fraction of the last interval the ready
model servers spent inferring, in percent (the DCGM exporter's DCGM_FI_DEV_GPU_UTIL).

A run ends when every image is done and the cluster has scaled back to no nodes (nodes are
paid until the cluster autoscaler removes them); the time to finish is the moment the last
image is done.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import autoscaler.policy as policy_module
from autoscaler.policy import Observation, PolicyConfig, QueueDemand, ScalingPolicy
from benchmark.simulator.cluster import ConsumerDeployment, ModelServerDeployment, NodePool
from benchmark.simulator.events import EventLoop
from benchmark.simulator.fairness import ShareLedger, community_report
from benchmark.simulator.model import HOUR, Scenario
from benchmark.simulator.work import GpuRouter, SegmentationPool, ZipPool
from benchmark.simulator.workload import (
    CommunityUploader,
    Submission,
    Uploader,
    community_uploads,
)

QUEUE = "segmentation"
ZIP_QUEUE = "segmentation-zip"


def policy_config(scenario: Scenario) -> PolicyConfig:
    """A scenario's limits as the policy's settings: max GPUs, max consumers per queue."""
    return PolicyConfig(
        max_model_servers=scenario.gpus,
        max_consumers=scenario.consumer_cap,
    )


def _paper(scenario: Scenario) -> ScalingPolicy:
    return policy_module.PaperPolicy(policy_config(scenario))


def _backlog(scenario: Scenario) -> ScalingPolicy:
    backlog = policy_module.BacklogConfig(
        images_per_server_s=scenario.cluster.mean_gpu_speed,
        images_per_zip=scenario.zip_images,
    )
    return policy_module.BacklogPolicy(policy_config(scenario), backlog)


# Looked up in autoscaler.policy at call time, so the simulator runs whatever is there.
POLICIES: dict[str, Callable[[Scenario], ScalingPolicy]] = {"paper": _paper, "backlog": _backlog}


def make_policy(scenario: Scenario) -> ScalingPolicy:
    try:
        return POLICIES[scenario.policy](scenario)
    except KeyError:
        raise ValueError(f"unknown policy {scenario.policy!r}; known: {sorted(POLICIES)}") from None


@dataclass
class Series:
    """What the cluster looked like at each HPA sync."""

    t: list[float] = field(default_factory=list)
    queued_images: list[int] = field(default_factory=list)  # on either queue, in images
    in_flight: list[int] = field(default_factory=list)
    done: list[int] = field(default_factory=list)
    consumers_asked: list[int] = field(default_factory=list)  # both queues
    consumers_running: list[int] = field(default_factory=list)
    zip_consumers: list[int] = field(default_factory=list)
    gpus_asked: list[int] = field(default_factory=list)
    gpus_ready: list[int] = field(default_factory=list)
    gpu_nodes: list[int] = field(default_factory=list)
    cpu_nodes: list[int] = field(default_factory=list)
    gpu_utilization: list[float] = field(default_factory=list)


@dataclass
class Result:
    scenario: Scenario
    finished_s: float  # last image done
    ended_s: float  # last node removed
    node_hours: dict[str, float]
    hourly_price: dict[str, float]
    node_cost: dict[str, float]
    node_cost_on_demand: float
    data_cost: dict[str, float]
    preemptions: int
    requeued: int
    gpu_images: int
    peak: dict[str, int]
    events: int
    wall_s: float
    series: Series
    submissions: list[Submission] = field(default_factory=list)
    claims: ShareLedger = field(default_factory=ShareLedger)  # images started, per user

    def users(self) -> dict[str, Any]:
        """Waits, starts and fairness per user (see ``fairness.community_report``)."""
        community = self.scenario.community
        class_of = community.class_of if community is not None else (lambda owner: owner)
        return community_report(self.submissions, class_of, self.claims)

    @property
    def cost(self) -> float:
        """Node cost: the sum over node types of node-hours times price."""
        return sum(self.node_cost.values())

    @property
    def finished_h(self) -> float:
        return self.finished_s / HOUR

    def summary(self) -> dict[str, Any]:
        s = self.scenario
        return {
            "images": s.images,
            "gpus": s.gpus,
            "upload_mbps": s.upload_mbps,
            "policy": s.policy,
            "gpu_type": s.cluster.gpu_type,
            "seed": s.seed,
            "max_consumers": s.consumer_cap,
            "stage_times": s.stages.source,
            "time_to_finish_h": round(self.finished_h, 3),
            "transfer_bound_h": round(s.transfer_bound_seconds() / HOUR, 3),
            "cluster_empty_h": round(self.ended_s / HOUR, 3),
            "node_hours": {k: round(v, 2) for k, v in self.node_hours.items()},
            "price_per_node_hour": self.hourly_price,
            "node_cost_usd": {k: round(v, 2) for k, v in self.node_cost.items()},
            "cost_usd": round(self.cost, 2),
            "cost_if_on_demand_usd": round(self.node_cost_on_demand, 2),
            "data_cost_usd": {k: round(v, 2) for k, v in self.data_cost.items()},
            "preemptions": self.preemptions,
            "requeued_jobs": self.requeued,
            "peak": self.peak,
            "events": self.events,
            "wall_s": round(self.wall_s, 2),
            **(
                {"users": s.community.users, "queue_order": s.order, "fairness": self.users()}
                if s.community is not None
                else {}
            ),
        }


class Simulation:
    """One scenario on simulated time. ``policy`` defaults to the scenario's."""

    def __init__(self, scenario: Scenario, policy: ScalingPolicy | None = None) -> None:
        self.scenario = s = scenario
        c = s.cluster
        self.loop = loop = EventLoop()
        seeds = random.Random(s.seed)
        # Separate streams, so that one policy's choices do not shift another's node timings.
        streams = [random.Random(seeds.random()) for _ in range(5)]
        rng_cpu, rng_gpu, rng_work, rng_speed, rng_upload = streams
        self.cpu_pool = NodePool(
            loop,
            rng_cpu,
            "cpu",
            capacity=c.consumers_per_node,
            start=c.cpu_node_start,
            hourly_price=c.cpu_node_price(),
            preemptible=c.preemptible,
            preemptions_per_hour=c.preemptions_per_node_hour,
            max_life=c.preemptible_max_life,
            unneeded_after=c.node_unneeded_after,
        )
        self.gpu_pool = NodePool(
            loop,
            rng_gpu,
            "gpu",
            capacity=1,
            start=c.gpu_node_start,
            hourly_price=c.gpu_node_price(),
            preemptible=c.preemptible,
            preemptions_per_hour=c.preemptions_per_node_hour,
            max_life=c.preemptible_max_life,
            unneeded_after=c.node_unneeded_after,
        )
        self.router = GpuRouter(loop, c.grpc_retry)
        self.seg = SegmentationPool(
            loop, rng_work, s.stages, c.requeue_delay, self.router, self._images_done, s.order
        )
        self.zip = ZipPool(loop, rng_work, s.stages, c.requeue_delay, self._fan_out, s.order)
        self.consumers = {
            QUEUE: ConsumerDeployment(loop, self.cpu_pool, QUEUE, c.consumer_start, self.seg),
            ZIP_QUEUE: ConsumerDeployment(
                loop, self.cpu_pool, ZIP_QUEUE, c.consumer_start, self.zip
            ),
        }
        self.servers = ModelServerDeployment(
            loop,
            self.gpu_pool,
            "model-server",
            c.model_server_start,
            self.router,
            self._gpu_speed,
            c.gpu_batch,
        )
        self._rng_speed = rng_speed
        self._speeds: list[float] = []
        self.uploader: Uploader | CommunityUploader
        if s.community is None:
            self.uploader = Uploader(loop, s.workload, self.zip.push, rng_upload)
        else:
            w = s.workload
            plans = community_uploads(s.community, w.images, w.seconds_per_image, rng_upload)
            self.uploader = CommunityUploader(loop, plans, self._deliver)
        self.policy = policy if policy is not None else make_policy(s)
        self.series = Series()
        self.finished_at: float | None = None
        self._busy_mark: dict[int, tuple[float, float]] = {}  # server id -> (time, busy s)
        self._last_tick = 0.0

    def _gpu_speed(self, node_index: int) -> float:
        """Images/s of the n-th GPU node, drawn in node order from the run's speed stream."""
        while len(self._speeds) <= node_index:
            self._speeds.append(self._rng_speed.uniform(*self.scenario.cluster.gpu_speed))
        return self._speeds[node_index]

    # ---- observation
    def gpu_utilization(self) -> float:
        """Mean over ready model servers of the busy share of the time since the last sync."""
        now = self.loop.now
        shares = []
        for server in self.servers.ready_servers():
            since, busy = self._busy_mark.get(id(server), (server.ready_at, 0.0))
            since = max(since, server.ready_at)
            now_busy = server.busy_seconds(now)
            if now > since:
                shares.append(min(1.0, (now_busy - busy) / (now - since)))
        for server in self.servers.servers:
            self._busy_mark[id(server)] = (now, server.busy_seconds(now))
        return 100.0 * sum(shares) / len(shares) if shares else 0.0

    def observe(self) -> Observation:
        return Observation(
            now=self.loop.now,
            queues={
                ZIP_QUEUE: QueueDemand(ZIP_QUEUE, self.zip.queued(), self.zip.in_flight()),
                QUEUE: QueueDemand(QUEUE, self.seg.queued(), self.seg.in_flight()),
            },
            consumers={name: d.replicas for name, d in self.consumers.items()},
            model_servers=self.servers.replicas,
            model_servers_ready=self.servers.ready,
            gpu_utilization=self.gpu_utilization(),
        )

    # ---- the work
    def _deliver(self, sub: Submission) -> None:
        """A zip goes to the zip queue; a single image straight to the image queue."""
        if sub.zipped:
            self.zip.push(sub)
        else:
            self.seg.push(sub, sub.images)

    def _fan_out(self, sub: Submission) -> None:
        self.seg.push(sub, sub.images)

    # ---- the loop
    def _images_done(self, n: int) -> None:
        if self.seg.done >= self.scenario.images and self.finished_at is None:
            self.finished_at = self.loop.now

    def tick(self) -> None:
        obs = self.observe()
        decision = self.policy.decide(obs)
        self.servers.scale(decision.model_servers)
        for name, deployment in self.consumers.items():
            deployment.scale(decision.consumers.get(name, deployment.replicas))
        self._record(obs)
        self._maybe_stop()

    def _record(self, obs: Observation) -> None:
        s = self.series
        s.t.append(obs.now)
        s.queued_images.append(self.seg.queued() + self.zip.queued_images())
        s.in_flight.append(self.seg.in_flight())
        s.done.append(self.seg.done)
        s.consumers_asked.append(sum(d.replicas for d in self.consumers.values()))
        s.consumers_running.append(sum(d.ready for d in self.consumers.values()))
        s.zip_consumers.append(self.consumers[ZIP_QUEUE].ready)
        s.gpus_asked.append(self.servers.replicas)
        s.gpus_ready.append(self.servers.ready)
        s.gpu_nodes.append(self.gpu_pool.live)
        s.cpu_nodes.append(self.cpu_pool.live)
        s.gpu_utilization.append(round(obs.gpu_utilization, 1))

    def _scan(self) -> None:
        self.cpu_pool.scan()
        self.gpu_pool.scan()
        self._maybe_stop()

    def _maybe_stop(self) -> None:
        if self.finished_at is not None and self.cpu_pool.live == 0 and self.gpu_pool.live == 0:
            self.loop.stop()

    def run(self, max_seconds: float | None = None) -> Result:
        s, c = self.scenario, self.scenario.cluster
        if max_seconds is None:
            slowest = min(s.workload.images_per_second, s.gpus * c.gpu_speed[0])
            max_seconds = 10 * s.images / slowest + 6 * HOUR
        started = time.perf_counter()
        self.policy.start(self.loop.now, self.consumers)
        self.uploader.start()
        self.loop.every(c.hpa_sync, self.tick)
        self.loop.every(c.autoscaler_scan, self._scan)
        self.loop.run(until=max_seconds)
        if self.finished_at is None:
            raise RuntimeError(
                f"{s.label}: {self.seg.done} of {s.images} images done after "
                f"{max_seconds / HOUR:.1f} simulated hours"
            )
        return self._result(time.perf_counter() - started)

    def _result(self, wall: float) -> Result:
        s, c = self.scenario, self.scenario.cluster
        assert self.finished_at is not None
        end = self.loop.now
        gpu_name = f"{c.gpu_host}+{c.gpu_type}"
        hours = {
            gpu_name: self.gpu_pool.node_seconds(end) / HOUR,
            c.consumer_node: self.cpu_pool.node_seconds(end) / HOUR,
        }
        price = {gpu_name: c.gpu_node_price(), c.consumer_node: c.cpu_node_price()}
        list_price = {gpu_name: c.gpu_node_price(False), c.consumer_node: c.cpu_node_price(False)}
        on_demand = sum(hours[k] * list_price[k] for k in hours)
        series = self.series
        return Result(
            scenario=s,
            finished_s=self.finished_at,
            ended_s=end,
            node_hours=hours,
            hourly_price=price,
            node_cost={k: hours[k] * price[k] for k in hours},
            node_cost_on_demand=on_demand,
            data_cost=s.data.costs(s.images, self.finished_at, s.zip_images),
            preemptions=self.cpu_pool.preemptions + self.gpu_pool.preemptions,
            requeued=self.seg.requeued + self.zip.requeued,
            gpu_images=sum(sv.images for sv in self.servers.servers),
            peak={
                "gpus": max(series.gpus_ready, default=0),
                "consumers": max(series.consumers_running, default=0),
                "cpu_nodes": max(series.cpu_nodes, default=0),
                "gpu_nodes": max(series.gpu_nodes, default=0),
            },
            events=self.loop.processed,
            wall_s=wall,
            series=series,
            submissions=self.uploader.submissions,
            claims=self.seg.lines.claims,
        )


def simulate(scenario: Scenario, policy: ScalingPolicy | None = None) -> Result:
    """Run one scenario to the end and return what it took."""
    return Simulation(scenario, policy).run()
