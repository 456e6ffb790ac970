"""Redis failover under load: what survives SIGKILL of the master, and how long writes stop.

Each round starts a master, two replicas and three Sentinels (real processes on loopback
ports), submits jobs from two threads through the queue protocol while three consumer threads
claim and finish them, and SIGKILLs the master once ``--kill-after`` submissions were
acknowledged (tests/support/sentinel.py, the drill tests/test_redis_failover.py runs). It
reports jobs submitted, acknowledged (KIOSK_REDIS_MIN_REPLICAS replicas had them), done, lost
(acknowledged and not done), completed twice, run twice, and the failover time: from the kill
to the first write the new master accepts.

    python -m benchmark.redis_failover [--rounds 3] [--jobs 500] [--min-replicas 1]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmark.report import median, save, table
from tests.support.sentinel import FailoverDrill, FailoverReport, SentinelCluster

FIGURES = (
    "submitted",
    "acknowledged",
    "refused",
    "done",
    "lost",
    "completed_twice",
    "run_twice",
    "unreplicated_writes",
    "failover_seconds",
    "first_acknowledged_submit_after_kill_seconds",
)


def one_round(args: argparse.Namespace) -> FailoverReport:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = SentinelCluster(Path(tmp), down_after_ms=args.down_after_ms).start()
        try:
            drill = FailoverDrill(
                cluster,
                jobs=args.jobs,
                kill_after=args.kill_after,
                min_replicas=args.min_replicas,
            )
            return drill.run()
        finally:
            cluster.stop()


def cell(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--kill-after", type=int, default=150)
    parser.add_argument("--min-replicas", type=int, default=1)
    parser.add_argument("--down-after-ms", type=int, default=1000)
    args = parser.parse_args()

    reports = [one_round(args).as_dict() for _ in range(args.rounds)]
    rows = [["round", *FIGURES]]
    for i, report in enumerate(reports, 1):
        rows.append([str(i), *(cell(report[f]) for f in FIGURES)])
    print(table(rows))
    failover = median([r["failover_seconds"] for r in reports])
    print(f"\nmedian failover: {failover:.2f} s (Sentinel down-after {args.down_after_ms} ms)")
    path = save(
        "redis_failover",
        {
            "jobs": args.jobs,
            "kill_after": args.kill_after,
            "min_replicas": args.min_replicas,
            "down_after_ms": args.down_after_ms,
            "median_failover_seconds": failover,
            "rounds": reports,
        },
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
