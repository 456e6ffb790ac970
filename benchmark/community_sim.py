"""The cluster simulator with a community of users: first come, first served against Kiosk's
fair share, on the paper's scenarios.

24 users (3 heavy, 6 medium, 15 light; ``benchmark.simulator.model.Community``) submit zips and
single images in bursts, adding up to the scenario's images at its upload speed on average. Each
scenario runs twice on the same arrivals, the same cluster and the same scaling policy: once with
the queues first come first served (the original Kiosk), once with fair share between users
(Kiosk's claim). For each class of users: the wait from upload to results, median and 95th
percentile over their submissions; and Jain's fairness index over each user's images started
divided by their max-min fair share at that moment (1.0: perfectly fair).

    python -m benchmark.community_sim [--images 10000,100000,1000000] [--gpus 1,4,8]
        [--upload-mbps 240,2400] [--policy paper|backlog] [--seed N] [--out DIR] [--no-plots]
"""

from __future__ import annotations

import argparse
import sys
import time
from itertools import product
from pathlib import Path
from typing import Any

from benchmark.cluster_sim import PAPER_RUN, parse_floats, parse_ints
from benchmark.report import RESULTS, save, table
from benchmark.simulator.model import QUEUE_ORDERS, Community, Scenario
from benchmark.simulator.run import POLICIES, Result, simulate
from kiosk.pace import in_words

CLASSES = ("light", "medium", "heavy")
HEADER = [
    "images",
    "GPUs",
    "upload",
    "order",
    "time h",
    *(f"{c} wait median / p95" for c in CLASSES),
    "Jain",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=parse_ints, default=[10_000, 100_000, 1_000_000])
    p.add_argument("--gpus", type=parse_ints, default=[1, 4, 8], help="max model servers (GPUs)")
    p.add_argument("--upload-mbps", type=parse_floats, default=[240.0, 2400.0])
    p.add_argument("--policy", choices=sorted(POLICIES), default="paper")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    p.add_argument("--no-plots", action="store_true")
    return p.parse_args(argv)


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    community = Community()
    return [
        Scenario(
            images=images,
            gpus=gpus,
            upload_mbps=mbps,
            policy=args.policy,
            seed=args.seed,
            community=community,
            order=order,
        )
        for images, gpus, mbps, order in product(
            args.images, args.gpus, args.upload_mbps, QUEUE_ORDERS
        )
    ]


def duration(seconds: float) -> str:
    """Seconds as a person reads them, minutes to a tenth: 42 s, 7.5 min, 3.2 h."""
    return in_words(seconds, minute_digits=1)


def row(result: Result, fairness: dict[str, Any]) -> list[str]:
    s = result.scenario
    upload = (
        f"{s.upload_mbps / 1000:g} Gbps" if s.upload_mbps >= 1000 else f"{s.upload_mbps:g} Mbps"
    )
    waits = []
    for name in CLASSES:
        wait = fairness["classes"][name]["wait_s"]
        waits.append(f"{duration(wait['median'])} / {duration(wait['p95'])}")
    return [
        f"{s.images:,}",
        str(s.gpus),
        upload,
        s.order,
        f"{result.finished_h:.2f}",
        *waits,
        f"{fairness['jain_index']:.2f}",
    ]


def plot(results: list[tuple[Result, dict[str, Any]]], path: Path) -> Path:
    """Top: each user's wait (median, a line to the p95), FIFO beside fair share, in the paper's
    scenario. Bottom: Jain's index in every scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    colours = {"fifo": "#d55e00", "fair": "#0072b2"}
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 8))
    headline = [(r, f) for r, f in results if _key(r) == PAPER_RUN] or results[-2:]
    for result, fairness in headline:
        order = result.scenario.order
        users = sorted(
            fairness["users"].items(), key=lambda kv: (CLASSES.index(kv[1]["class"]), kv[0])
        )
        shift = -0.15 if order == "fifo" else 0.15
        xs = [i + shift for i in range(len(users))]
        med = [u["wait_s"]["median"] / 60 for _, u in users]
        p95 = [u["wait_s"]["p95"] / 60 for _, u in users]
        top.vlines(xs, med, p95, color=colours[order], lw=1)
        top.scatter(xs, med, color=colours[order], s=16, label=f"{order}: median, line to p95")
        top.set_xticks(range(len(users)))
        top.set_xticklabels(
            [f"{name} ({u['images']:,})" for name, u in users], rotation=90, fontsize=7
        )
    s = headline[0][0].scenario
    top.set_yscale("log")
    top.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    top.set_ylabel("wait from upload to results, min")
    top.set_title(
        f"{s.images:,} images, up to {s.gpus} GPUs, {s.upload_mbps:g} Mbps: "
        "each user (images submitted)",
        fontsize=9,
    )
    top.legend(fontsize=8, loc="lower right")
    top.grid(alpha=0.3, which="both", axis="y")
    labels = sorted({_key(r) for r, _ in results})
    width = 0.4
    for i, order in enumerate(QUEUE_ORDERS):
        jain = {_key(r): f["jain_index"] for r, f in results if r.scenario.order == order}
        xs = [k + (i - 0.5) * width for k in range(len(labels))]
        bottom.bar(xs, [jain.get(k, 0) for k in labels], width, color=colours[order], label=order)
    bottom.set_xticks(range(len(labels)))
    bottom.set_xticklabels(
        [f"{i:.0e}".replace("+0", "") + f", {g} GPU, {m / 1000:g} Gbps" for i, g, m in labels],
        rotation=30,
        ha="right",
        fontsize=7,
    )
    bottom.set_ylim(0, 1.05)
    bottom.set_ylabel("Jain's index (1 = fair)")
    bottom.set_title("Jain's fairness index of claims, every scenario", fontsize=9)
    bottom.legend(fontsize=8, loc="lower right")
    bottom.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _key(result: Result) -> tuple[int, int, float]:
    s = result.scenario
    return (s.images, s.gpus, s.upload_mbps)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    results: list[tuple[Result, dict[str, Any]]] = []
    for scenario in scenarios(args):
        result = simulate(scenario)
        fairness = result.users()
        results.append((result, fairness))
        print(
            f"  {scenario.label}: {result.finished_h:.2f} h, Jain {fairness['jain_index']:.2f} "
            f"({result.events:,} events, {result.wall_s:.1f} s)",
            file=sys.stderr,
        )
    print(table([HEADER, *(row(r, f) for r, f in results)]))
    payload = {
        "description": "The cluster simulator with a community of users, FIFO against fair "
        "share; see benchmark/simulator/model.py (Community) and fairness.py for definitions.",
        "community": [c.__dict__ for c in Community().classes],
        "runs": [r.summary() for r, _ in results],
        "simulated_in_s": round(time.perf_counter() - started, 1),
    }
    path = save("community_sim", payload, args.out)
    print(f"\nwrote {path}", file=sys.stderr)
    if not args.no_plots:
        print(f"wrote {plot(results, args.out / 'community_sim.png')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
