"""A discrete-event simulation of a Kiosk cluster that runs the real ``autoscaler.policy`` code
on simulated time: uploads, consumers, model servers on GPU nodes, start-up delays,
preemptions, the cluster autoscaler, prices. ``python -m benchmark.cluster_sim`` runs the
paper's grid; ``simulate(Scenario(...))`` runs one scenario.

Modules, one job each: ``model`` (scenario, cluster, stage times, and every assumption; the
prices are ``kiosk.costs``'s, the table jobs are costed by), ``events`` (the engine),
``workload`` (uploads: one client, or a community of users), ``lines`` (waiting work: first
come first served, or fair share between users), ``work`` (consumers and GPUs), ``cluster``
(nodes, pods, the cluster autoscaler), ``run`` (the policy loop), ``fairness`` (waits, fair
shares, Jain's index), ``report`` (table, JSON, plots). ``python -m benchmark.community_sim``
runs the community, FIFO against fair share.
"""

from benchmark.simulator.model import ClusterParams, DataCosts, Scenario, StageTimes, Workload
from benchmark.simulator.run import Result, Simulation, simulate

__all__ = [
    "ClusterParams",
    "DataCosts",
    "Result",
    "Scenario",
    "Simulation",
    "StageTimes",
    "Workload",
    "simulate",
]
