"""What a job cost: its GPU and CPU seconds from the stage times its consumer recorded, priced
by a table of node prices. The cluster simulator prices its runs from the same table.

A job's GPU seconds are the seconds its consumer waited on the model server (the prediction
stage): an upper bound of its share of a GPU node, since the model server batches concurrent
requests. Its CPU seconds are the seconds a consumer spent on it, every stage included (a
consumer is held for the prediction too), and a consumer holds ``1 / consumers_per_node`` of a
CPU node. Estimates per job, where the original kiosk-client costed a whole run afterwards from
its nodes' lifetimes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kiosk.keys import ANONYMOUS, JobField

HOUR = 3600.0


@dataclass(frozen=True)
class Price:
    """Dollars per node-hour, on demand and preemptible (2019 GCE list prices, as the paper
    costed its runs)."""

    on_demand: float
    preemptible: float

    def hourly(self, preemptible: bool) -> float:
        return self.preemptible if preemptible else self.on_demand


VM_PRICES: dict[str, Price] = {"n1-highmem-2": Price(0.1184, 0.025)}
GPU_PRICES: dict[str, Price] = {"T4": Price(0.95, 0.29), "V100": Price(2.48, 0.74)}

CPU_STAGE_FIELDS = (
    JobField.DOWNLOAD_TIME,
    JobField.PREPROCESS_TIME,
    JobField.PREDICTION_TIME,
    JobField.POSTPROCESS_TIME,
    JobField.UPLOAD_TIME,
)
GPU_STAGE_FIELDS = (JobField.PREDICTION_TIME,)
USAGE_FIELDS = (JobField.GPU_SECONDS, JobField.CPU_SECONDS, JobField.COST)


@dataclass(frozen=True)
class PriceTable:
    gpu_node_hourly: float
    """A GPU node: its host VM plus the GPU."""
    cpu_node_hourly: float
    consumers_per_node: int = 5

    @classmethod
    def of(
        cls,
        gpu_type: str = "V100",
        node_type: str = "n1-highmem-2",
        preemptible: bool = True,
        consumers_per_node: int = 5,
    ) -> PriceTable:
        if gpu_type not in GPU_PRICES:
            raise ValueError(f"unknown GPU type {gpu_type!r}; known: {', '.join(GPU_PRICES)}")
        if node_type not in VM_PRICES:
            raise ValueError(f"unknown machine type {node_type!r}; known: {', '.join(VM_PRICES)}")
        vm = VM_PRICES[node_type].hourly(preemptible)
        return cls(vm + GPU_PRICES[gpu_type].hourly(preemptible), vm, consumers_per_node)


@dataclass(frozen=True)
class Usage:
    gpu_seconds: float = 0.0
    cpu_seconds: float = 0.0
    cost: float = 0.0
    """Dollars."""

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.gpu_seconds + other.gpu_seconds,
            self.cpu_seconds + other.cpu_seconds,
            self.cost + other.cost,
        )

    def fields(self) -> dict[str, str]:
        return {
            JobField.GPU_SECONDS: f"{self.gpu_seconds:.6f}",
            JobField.CPU_SECONDS: f"{self.cpu_seconds:.6f}",
            JobField.COST: f"{self.cost:.10g}",
        }


def stage_usage(timings: Mapping[JobField, float], prices: PriceTable) -> Usage:
    """The usage of some stage times (one attempt's)."""
    gpu = sum(timings.get(f, 0.0) for f in GPU_STAGE_FIELDS)
    cpu = sum(timings.get(f, 0.0) for f in CPU_STAGE_FIELDS)
    cost = (
        gpu * prices.gpu_node_hourly + cpu * prices.cpu_node_hourly / prices.consumers_per_node
    ) / HOUR
    return Usage(gpu, cpu, cost)


def recorded_usage(fields: Mapping[str, str]) -> Usage:
    """The usage a job hash records (0 where it records none, e.g. a job still waiting)."""

    def number(name: JobField) -> float:
        try:
            return float(fields.get(name) or 0.0)
        except ValueError:
            return 0.0

    return Usage(*(number(f) for f in USAGE_FIELDS))


@dataclass(frozen=True)
class UsageRow:
    """What one user's (or one group's) jobs used."""

    name: str
    group: str
    jobs: int
    usage: Usage


def summarize(jobs: Iterable[Mapping[str, str]]) -> tuple[list[UsageRow], list[UsageRow]]:
    """Usage per user and per group (each sorted by cost, the largest first) over some job
    hashes. A zip's images and a movie's frames are jobs of their own, owned by the zip's or
    the movie's submitter, so every job counts once; jobs from before users count as the
    anonymous user's."""
    users: dict[str, tuple[str, int, Usage]] = {}
    groups: dict[str, tuple[int, Usage]] = {}
    for fields in jobs:
        used = recorded_usage(fields)
        owner = fields.get(JobField.OWNER) or ANONYMOUS
        group = fields.get(JobField.GROUP, "")
        _, count, total = users.get(owner, (group, 0, Usage()))
        users[owner] = (group, count + 1, total + used)
        if group:
            count, total = groups.get(group, (0, Usage()))
            groups[group] = (count + 1, total + used)
    by_user = [UsageRow(name, g, n, u) for name, (g, n, u) in users.items()]
    by_group = [UsageRow(name, name, n, u) for name, (n, u) in groups.items()]
    return (
        sorted(by_user, key=lambda r: (-r.usage.cost, r.name)),
        sorted(by_group, key=lambda r: (-r.usage.cost, r.name)),
    )
