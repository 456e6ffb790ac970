"""Check a Google Cloud project's quotas against a Kiosk cluster at its largest.

``k8s/gke.sh quota`` runs this with the preset's sizes and the JSON of
``gcloud compute regions describe REGION --format=json`` (and, when it has them,
``gcloud compute project-info describe --format=json`` and
``gcloud compute accelerator-types list --filter=zone:ZONE --format=json``). It prints one line
per quota with what the cluster needs and what is free, then says which quotas are short and
where to ask for more; the exit status is 1 when any is short, 2 when the input is unusable.

Standard library only: it runs with whatever python3 the operator has.

What is counted (every node pool at its maximum; TF Serving runs on one GPU type at a time, so
CPUs, disks and addresses count the largest GPU pool once, while each GPU type's own quota is
checked for its pool):

* GPUs per type: preemptible and spot GPUs use ``PREEMPTIBLE_NVIDIA_*_GPUS`` where the project
  has that quota, else the standard ``NVIDIA_*_GPUS``; ``GPUS_ALL_REGIONS`` (project-wide, 0 in
  new projects) covers all of them.
* vCPUs: N1 and E2 machines count against ``CPUS`` (other families against ``{FAMILY}_CPUS``),
  preemptible ones against ``PREEMPTIBLE_CPUS`` where that quota is set; ``CPUS_ALL_REGIONS``
  project-wide.
* ``IN_USE_ADDRESSES``: every node has an external address, plus one for a load balancer in
  front of the portal.
* Boot disks: ``DISKS_TOTAL_GB`` for pd-standard, ``SSD_TOTAL_GB`` for pd-balanced and pd-ssd;
  the persistent volumes (Prometheus, Redis: GKE's default class is pd-balanced) on
  ``SSD_TOTAL_GB``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

QUOTA_PAGE = "https://console.cloud.google.com/iam-admin/quotas?project={project}"
SMALL_MACHINES = {"micro": 2, "small": 2, "medium": 2}  # e2-micro/small/medium: 2 shared vCPUs
STANDARD_CPU_FAMILIES = {"n1", "e2", "f1", "g1"}  # the families the CPUS quota covers


@dataclass(frozen=True)
class Need:
    metric: str
    amount: int
    scope: str  # "region" or "project"
    what: str  # what needs it, in words
    fallback: str | None = None  # used when `metric` has no limit (preemptible quotas)


@dataclass(frozen=True)
class Check:
    """One quota as the cluster would draw on it: every need that lands on ``metric``."""

    metric: str
    scope: str
    amount: int
    what: str
    limit: float
    usage: float
    note: str = ""

    @property
    def free(self) -> float:
        return max(0.0, self.limit - self.usage)

    @property
    def short(self) -> bool:
        return self.free < self.amount


def gpu_metric(accelerator: str) -> str:
    """nvidia-tesla-v100 -> NVIDIA_V100_GPUS, nvidia-l4 -> NVIDIA_L4_GPUS."""
    name = accelerator.lower()
    for prefix in ("nvidia-tesla-", "nvidia-"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    return f"NVIDIA_{name.upper().replace('-', '_')}_GPUS"


def vcpus(machine_type: str) -> int:
    """vCPUs of a predefined machine type: n1-highmem-2 -> 2, e2-medium -> 2."""
    last = machine_type.rsplit("-", 1)[-1]
    if last in SMALL_MACHINES:
        return SMALL_MACHINES[last]
    if not last.isdigit():
        raise ValueError(
            f"cannot tell the vCPUs of machine type {machine_type!r}: use a predefined type "
            "such as n1-highmem-2"
        )
    return int(last)


def cpu_metric(machine_type: str) -> str:
    family = machine_type.split("-", 1)[0].lower()
    return "CPUS" if family in STANDARD_CPU_FAMILIES else f"{family.upper()}_CPUS"


def disk_metric(disk_type: str) -> str:
    return "DISKS_TOTAL_GB" if disk_type == "pd-standard" else "SSD_TOTAL_GB"


def needs(args: argparse.Namespace) -> list[Need]:
    """What the cluster takes at its largest, pool by pool (``checks`` adds them up by quota)."""
    preemptible = args.provisioning in ("preemptible", "spot")
    gpu_types = args.gpu_types.split()
    gpu_nodes = args.max_gpus if gpu_types else 0
    out: list[Need] = []
    for accelerator in gpu_types:
        metric = gpu_metric(accelerator)
        out.append(
            Need(
                f"PREEMPTIBLE_{metric}" if preemptible else metric,
                args.max_gpus,
                "region",
                f"{accelerator} pool ({args.max_gpus} x 1 GPU)",
                fallback=metric if preemptible else None,
            )
        )
    if gpu_types:
        out.append(Need("GPUS_ALL_REGIONS", gpu_nodes, "project", "the GPU pool in use"))

    cpus: dict[tuple[str, bool], list[tuple[int, str]]] = {}

    def add_cpus(machine: str, nodes: int, pool_preemptible: bool, what: str) -> None:
        if nodes > 0:
            key = (cpu_metric(machine), pool_preemptible)
            cpus.setdefault(key, []).append((nodes * vcpus(machine), what))

    add_cpus(args.default_machine_type, args.default_max_nodes, False, "default pool")
    add_cpus(args.consumer_machine_type, args.consumer_max_nodes, preemptible, "consumer pool")
    add_cpus(args.gpu_machine_type, gpu_nodes, preemptible, "GPU hosts")
    total_cpus = 0
    for (metric, pool_preemptible), parts in cpus.items():
        amount = sum(n for n, _ in parts)
        total_cpus += amount
        what = " + ".join(f"{w} {n}" for n, w in parts)
        if pool_preemptible:
            out.append(Need(f"PREEMPTIBLE_{metric}", amount, "region", what, fallback=metric))
        else:
            out.append(Need(metric, amount, "region", what))
    out.append(Need("CPUS_ALL_REGIONS", total_cpus, "project", "all pools"))

    nodes = args.default_max_nodes + args.consumer_max_nodes + gpu_nodes
    out.append(Need("IN_USE_ADDRESSES", nodes + 1, "region", f"{nodes} nodes + 1 load balancer"))
    out.append(
        Need(
            disk_metric(args.disk_type),
            nodes * args.disk_size_gb,
            "region",
            f"{nodes} boot disks x {args.disk_size_gb} GB {args.disk_type}",
        )
    )
    if args.volumes_gb:
        out.append(
            Need(
                "SSD_TOTAL_GB",
                args.volumes_gb,
                "region",
                "volumes: Prometheus 20 GB + Redis 10 GB (standard-rwo, pd-balanced)",
            )
        )
    return out


def quotas(document: dict, source: str) -> dict[str, tuple[float, float]]:
    """metric -> (limit, usage) from a regions/project-info describe document."""
    if not isinstance(document, dict) or not isinstance(items := document.get("quotas"), list):
        raise ValueError(f"{source}: no 'quotas' list (is this `gcloud ... --format=json`?)")
    out = {}
    for q in items:
        out[str(q["metric"])] = (float(q.get("limit", 0.0)), float(q.get("usage", 0.0)))
    return out


def resolve(need: Need, table: dict[str, tuple[float, float]]) -> tuple[str, str]:
    """The quota a need draws on here, and why when it is not the one it names: preemptible
    and spot VMs use the standard quota where the preemptible one is not set."""
    limit, _ = table.get(need.metric, (0.0, 0.0))
    if need.fallback and limit <= 0:
        return need.fallback, f"{need.metric} unset here: preemptible VMs use {need.fallback}"
    if need.metric not in table:
        return need.metric, "no such quota here"
    return need.metric, ""


def checks(wanted: list[Need], table: dict[str, tuple[float, float]], scope: str) -> list[Check]:
    """Needs of one scope grouped by the quota they draw on (two pools on CPUS add up)."""
    grouped: dict[str, list[tuple[Need, str]]] = {}
    for need in wanted:
        if need.scope == scope:
            metric, note = resolve(need, table)
            grouped.setdefault(metric, []).append((need, note))
    out = []
    for metric, items in grouped.items():
        limit, usage = table.get(metric, (0.0, 0.0))
        notes = sorted({note for _, note in items if note})
        out.append(
            Check(
                metric,
                scope,
                sum(need.amount for need, _ in items),
                "; ".join(need.what for need, _ in items),
                limit,
                usage,
                "; ".join(notes),
            )
        )
    return out


def load(path: str) -> dict:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        document = json.loads(text)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    if not isinstance(document, (dict, list)):
        raise ValueError(f"{path}: not a JSON object")
    return document


def fmt(x: float) -> str:
    return str(int(x)) if math.isfinite(x) and x == int(x) else f"{x:g}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="k8s/quota.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--region-json", required=True, help="gcloud compute regions describe (JSON)")
    p.add_argument("--project-json", help="gcloud compute project-info describe (JSON)")
    p.add_argument("--accelerators-json", help="gcloud compute accelerator-types list (JSON)")
    p.add_argument("--project", default="PROJECT")
    p.add_argument("--zone", required=True)
    p.add_argument("--gpu-types", default="")
    p.add_argument("--max-gpus", type=int, default=1)
    p.add_argument("--gpu-machine-type", default="n1-highmem-2")
    p.add_argument("--consumer-machine-type", default="n1-highmem-2")
    p.add_argument("--consumer-max-nodes", type=int, default=0)
    p.add_argument("--default-machine-type", default="n1-standard-4")
    p.add_argument("--default-max-nodes", type=int, default=1)
    p.add_argument("--provisioning", choices=["preemptible", "spot", "standard"])
    p.add_argument("--disk-type", default="pd-standard")
    p.add_argument("--disk-size-gb", type=int, default=50)
    p.add_argument("--volumes-gb", type=int, default=30, help="persistent volumes (pd-balanced)")
    args = p.parse_args(argv)
    if args.provisioning is None:
        args.provisioning = "preemptible"

    try:
        wanted = needs(args)
        region_doc = load(args.region_json)
        region = quotas(region_doc, args.region_json)
        project = quotas(load(args.project_json), args.project_json) if args.project_json else None
        offered = None
        if args.accelerators_json:
            listing = load(args.accelerators_json)
            if not isinstance(listing, list):
                raise ValueError(f"{args.accelerators_json}: expected a JSON list")
            offered = {str(item.get("name")) for item in listing if isinstance(item, dict)}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        print(f"quota check: {exc}", file=sys.stderr)
        return 2

    region_name = region_doc.get("name", "the region")
    print(
        f"Quotas for the cluster at its largest (zone {args.zone}, region {region_name}, "
        f"project {args.project}):"
    )
    problems: list[str] = []
    results = checks(wanted, region, "region")
    if project is not None:
        results += checks(wanted, project, "project")
    for result in results:
        status = "SHORT" if result.short else "ok"
        line = (
            f"  {status:<6} {result.metric:<32} need {result.amount:<5} free {fmt(result.free):<5}"
            f" (limit {fmt(result.limit)}, in use {fmt(result.usage)}; {result.what})"
        )
        if result.note:
            line += f" [{result.note}]"
        print(line)
        if result.short:
            where = f"region {region_name}" if result.scope == "region" else "all regions"
            problems.append(
                f"{result.metric} ({where}): the cluster needs {result.amount}, "
                f"{fmt(result.free)} free of a limit of {fmt(result.limit)}"
            )
    if project is None:
        skipped = sorted({n.metric for n in wanted if n.scope == "project"})
        print(f"  ?      {', '.join(skipped)}: project-wide quotas not read (--project-json)")

    for accelerator in args.gpu_types.split():
        if offered is not None and accelerator not in offered:
            problems.append(
                f"{accelerator} is not offered in zone {args.zone}: pick a ZONE from "
                f"`gcloud compute accelerator-types list --filter=name={accelerator}`, or drop "
                "it from GPU_TYPES"
            )

    if not problems:
        print("Enough quota for this preset.")
        return 0
    print(f"\n{len(problems)} problem(s):", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    print(
        "\nAsk for more quota at "
        + QUOTA_PAGE.format(project=args.project)
        + " (filter by the metric name and the region; GPU requests, GPUS_ALL_REGIONS above all, "
        "can take a day or two), or make the preset smaller: MAX_GPUS, CONSUMER_MAX_NODES, "
        "GPU_TYPES (only the GPU types you will use).",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
