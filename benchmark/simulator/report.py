"""What a run cost and how it went: the side-by-side table, the JSON record, and PNG plots of
the queue, the consumers and the GPUs over time (matplotlib's Agg backend, no display)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmark.simulator.model import HOUR
from benchmark.simulator.run import Result

HEADER = [
    "images",
    "GPUs",
    "upload",
    "policy",
    "time h",
    "bound h",
    "GPU node-h",
    "CPU node-h",
    "nodes $",
    "+data 1 zone $",
    "+data 2 zones $",
    "peak consumers",
]


def total_cost(result: Result, zones: int) -> float:
    """Nodes plus the paper's data costs (storage, operations, egress, inter-zone egress) for
    a cluster spread over ``zones`` zones."""
    s = result.scenario
    data = replace(s.data, zones=zones)
    return result.cost + sum(data.costs(s.images, result.finished_s, s.zip_images).values())


def row(result: Result) -> list[str]:
    s = result.scenario
    gpu_hours, cpu_hours = result.node_hours.values()
    upload = (
        f"{s.upload_mbps / 1000:g} Gbps" if s.upload_mbps >= 1000 else f"{s.upload_mbps:g} Mbps"
    )
    return [
        f"{s.images:,}",
        str(s.gpus),
        upload,
        s.policy,
        f"{result.finished_h:.2f}",
        f"{s.transfer_bound_seconds() / HOUR:.2f}",
        f"{gpu_hours:.1f}",
        f"{cpu_hours:.1f}",
        f"{result.cost:.2f}",
        f"{total_cost(result, 1):.2f}",
        f"{total_cost(result, 2):.2f}",
        str(result.peak["consumers"]),
    ]


def record(result: Result) -> dict[str, Any]:
    """One run for the JSON file (no time series: the plots carry those)."""
    out = result.summary()
    out["total_cost_usd"] = {
        "one_zone": round(total_cost(result, 1), 2),
        "two_zones": round(total_cost(result, 2), 2),
    }
    return out


_COLOURS = {"paper": "#d55e00", "backlog": "#0072b2"}


def plot(results: Sequence[Result], path: Path, dpi: int = 100, max_points: int = 1500) -> Path:
    """Queue, consumers and GPUs over time for one scenario, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    for result in results:
        s = result.series
        step = max(1, len(s.t) // max_points)  # a 40-h run has 10^4 syncs; the eye needs fewer
        hours = [t / HOUR for t in s.t[::step]]
        colour = _COLOURS.get(result.scenario.policy)
        label = f"{result.scenario.policy}: {result.finished_h:.2f} h, ${result.cost:.0f} nodes"
        axes[0].plot(hours, s.queued_images[::step], color=colour, lw=1, label=label)
        axes[1].plot(hours, s.consumers_running[::step], color=colour, lw=1)
        axes[1].plot(hours, s.consumers_asked[::step], color=colour, lw=0.6, ls=":")
        axes[2].plot(hours, s.gpus_ready[::step], color=colour, lw=1.2)
        axes[2].plot(hours, s.gpus_asked[::step], color=colour, lw=0.6, ls=":")
        axes[2].plot(hours, s.gpu_nodes[::step], color=colour, lw=0.6, ls="--")
    first = results[0].scenario
    axes[0].set_title(
        f"{first.images:,} images, up to {first.gpus} GPUs, {first.upload_mbps:g} Mbps upload",
        fontsize=10,
    )
    axes[0].set_ylabel("images queued")
    axes[0].legend(fontsize=8, loc="upper right")
    axes[1].set_ylabel("consumers")
    axes[2].set_ylabel("GPUs")
    axes[2].set_xlabel("hours")
    styles = {"running": "-", "asked": ":", "nodes": "--"}
    for ax, names in ((axes[1], ["running", "asked"]), (axes[2], ["running", "asked", "nodes"])):
        lines = [Line2D([], [], color="0.3", lw=1, ls=styles[n]) for n in names]
        ax.legend(lines, names, fontsize=7, loc="upper right")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
