"""The cluster simulator over the paper's grid: the real policies on simulated time.

For every combination of image count, GPU count and upload speed, each policy from
``autoscaler.policy`` runs the same simulated cluster (``benchmark.simulator``): zips arriving
at the upload speed, consumers and model servers starting, GPU nodes taking 2-4 minutes,
preemptions, the cluster autoscaler removing empty nodes after 10 minutes. The table gives the
time to finish, node-hours and cost side by side; the lower bound is the data-transfer bound
(images / min(upload rate, GPUs * fastest GPU)).

The paper's headline to reproduce: 10^6 images on up to 8 V100s at 2.4 Gbps in ~5.5 h for
~$250 (its cost counts nodes, storage and inter-zone egress over two zones). The goal for a
better policy: <= 5.5 h and <= $100 under the same assumptions.

    python -m benchmark.cluster_sim [--images 10000,100000,1000000] [--gpus 1,4,8]
        [--upload-mbps 240,2400] [--policy paper,backlog] [--gpu-type V100|T4] [--seed N]
        [--stage-times benchmark/results/zip_throughput.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from itertools import product
from pathlib import Path

from benchmark.report import RESULTS, save, table
from benchmark.simulator.model import ClusterParams, Scenario, StageTimes
from benchmark.simulator.model import stage_times_from_file as load_stage_times
from benchmark.simulator.report import HEADER, plot, record, row, total_cost
from benchmark.simulator.run import POLICIES, Result, simulate

PAPER = {"images": 1_000_000, "gpus": 8, "upload_mbps": 2400.0, "hours": 5.5, "cost": 250.0}
PAPER_RUN = (PAPER["images"], PAPER["gpus"], PAPER["upload_mbps"])
GOAL = {"hours": 5.5, "cost": 100.0}


def parse_ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


def parse_floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=parse_ints, default=[10_000, 100_000, 1_000_000])
    p.add_argument("--gpus", type=parse_ints, default=[1, 4, 8], help="max model servers (GPUs)")
    p.add_argument("--upload-mbps", type=parse_floats, default=[240.0, 2400.0])
    p.add_argument("--policy", type=lambda s: s.split(","), default=list(POLICIES))
    p.add_argument("--gpu-type", choices=["V100", "T4"], default="V100")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stage-times", type=Path, help="zip_throughput.json: measured stage times")
    p.add_argument("--max-consumers", type=int, help="per queue (default 150 per GPU)")
    p.add_argument("--preemptions-per-node-hour", type=float, default=0.005)
    p.add_argument("--on-demand", action="store_true", help="no preemptible nodes")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    unknown = sorted(set(args.policy) - set(POLICIES))
    if unknown:
        p.error(f"unknown policy {unknown}; known: {sorted(POLICIES)}")
    return args


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    cluster = ClusterParams(
        gpu_type=args.gpu_type,
        preemptible=not args.on_demand,
        preemptions_per_node_hour=args.preemptions_per_node_hour,
    )
    stages = load_stage_times(args.stage_times) if args.stage_times else StageTimes()
    return [
        Scenario(
            images=images,
            gpus=gpus,
            upload_mbps=mbps,
            policy=policy,
            max_consumers=args.max_consumers,
            seed=args.seed,
            cluster=cluster,
            stages=stages,
        )
        for images, gpus, mbps, policy in product(
            args.images, args.gpus, args.upload_mbps, args.policy
        )
    ]


def plot_all(results: list[Result], folder: Path) -> list[Path]:
    """One PNG per scenario at the largest image count, plus the smallest run at full size."""
    by_scenario: dict[tuple[int, int, float], list[Result]] = {}
    for r in results:
        s = r.scenario
        by_scenario.setdefault((s.images, s.gpus, s.upload_mbps), []).append(r)
    largest = max(k[0] for k in by_scenario)
    smallest = min(by_scenario)
    chosen = [k for k in by_scenario if k[0] == largest]
    small = max((k for k in by_scenario if k[0] == smallest[0]), key=lambda k: (k[1], k[2]))
    if small not in chosen:
        chosen.append(small)
    paths = []
    for images, gpus, mbps in sorted(chosen):
        name = f"images{images}_gpus{gpus}_{mbps:g}mbps.png"
        paths.append(plot(by_scenario[(images, gpus, mbps)], folder / name))
    return paths


def headline(results: list[Result]) -> dict[str, object]:
    """The paper's scenario: how close each policy comes to the paper, and to the goal."""
    out: dict[str, object] = {"paper": PAPER, "goal": GOAL, "policies": {}}
    for r in results:
        s = r.scenario
        if (s.images, s.gpus, s.upload_mbps) != PAPER_RUN:
            continue
        one, two = total_cost(r, 1), total_cost(r, 2)
        out["policies"][s.policy] = {  # type: ignore[index]
            "time_to_finish_h": round(r.finished_h, 2),
            "node_cost_usd": round(r.cost, 2),
            "total_two_zones_usd": round(two, 2),
            "total_one_zone_usd": round(one, 2),
            "meets_goal": r.finished_h <= GOAL["hours"] and one <= GOAL["cost"],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    grid = scenarios(args)
    results: list[Result] = []
    started = time.perf_counter()
    for scenario in grid:
        result = simulate(scenario)
        results.append(result)
        print(
            f"  {scenario.label}: {result.finished_h:.2f} h, ${result.cost:.2f} "
            f"({result.events:,} events, {result.wall_s:.1f} s)",
            file=sys.stderr,
        )
    print(table([HEADER, *(row(r) for r in results)]))
    head = headline(results)
    for policy, numbers in head["policies"].items():  # type: ignore[union-attr]
        print(
            f"\n10^6 images, 8 GPUs, 2.4 Gbps, {policy}: {numbers['time_to_finish_h']} h, "
            f"${numbers['node_cost_usd']} nodes, ${numbers['total_two_zones_usd']} with the "
            f"paper's data costs over two zones (paper: ~5.5 h, ~$250), "
            f"${numbers['total_one_zone_usd']} in one zone; goal (<= 5.5 h, <= $100 with "
            f"data costs in one zone): {'met' if numbers['meets_goal'] else 'not met'}"
        )
    first = grid[0]
    payload = {
        "description": "Discrete-event cluster simulation running autoscaler.policy; "
        "see benchmark/simulator/model.py for every assumption.",
        "cluster": asdict(first.cluster),
        "stage_times": asdict(first.stages),
        "data_costs": asdict(first.data),
        "headline": head,
        "runs": [record(r) for r in results],
        "simulated_in_s": round(time.perf_counter() - started, 1),
    }
    path = save("cluster_sim", payload, args.out)
    print(f"\nwrote {path}", file=sys.stderr)
    if not args.no_plots:
        for png in plot_all(results, args.out / "cluster_sim"):
            print(f"wrote {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
