"""The cluster simulator: small runs on simulated time, checked against what must hold for any
policy (every image done, the data-transfer bound, cost = node-hours x price) and against what
the paper's policy must do (0 -> 1 on work, back to 0 after the idle grace)."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import pytest

import autoscaler.policy as policy_module
from benchmark import cluster_sim
from benchmark.simulator.cluster import ConsumerDeployment, NodePool
from benchmark.simulator.events import EventLoop
from benchmark.simulator.model import (
    GPU_PRICES,
    VM_PRICES,
    ClusterParams,
    DataCosts,
    Scenario,
    StageTimes,
    Workload,
    stage_times_from_file,
)
from benchmark.simulator.run import QUEUE, ZIP_QUEUE, Simulation, simulate
from benchmark.simulator.work import GpuRouter, GpuServer, SegmentationPool
from benchmark.simulator.workload import CLIENT, Submission, Uploader

POLICIES = ["paper", "backlog"]


def small(policy: str = "paper", **kw) -> Scenario:
    base = {"images": 2_000, "gpus": 2, "upload_mbps": 2400.0, "policy": policy}
    return Scenario(**{**base, **kw})


# ------------------------------------------------------------------------------ whole runs


@pytest.mark.parametrize("policy", POLICIES)
def test_every_image_is_done_once_and_the_cluster_scales_back_to_no_nodes(policy: str):
    sim = Simulation(small(policy))
    result = sim.run()
    assert sim.seg.done == 2_000
    assert sim.seg.queued() == sim.seg.in_flight() == 0
    assert sim.zip.queued() == sim.zip.in_flight() == 0
    assert sim.cpu_pool.live == sim.gpu_pool.live == 0
    assert result.ended_s > result.finished_s > 0
    assert result.gpu_images == 2_000  # every image inferred exactly once


@pytest.mark.parametrize(
    "gpus, mbps",
    [(1, 2400.0), (4, 240.0), (4, 2400.0)],  # GPU-bound, upload-bound, both
)
@pytest.mark.parametrize("policy", POLICIES)
def test_no_run_beats_the_data_transfer_bound(policy: str, gpus: int, mbps: float):
    scenario = small(policy, images=3_000, gpus=gpus, upload_mbps=mbps)
    result = simulate(scenario)
    bound = scenario.images / min(scenario.workload.images_per_second, gpus * 10.0)
    assert scenario.transfer_bound_seconds() == pytest.approx(bound)
    assert result.finished_s >= bound


def test_gpus_go_from_zero_to_one_on_first_work_and_back_to_zero_after_the_idle_grace():
    scenario = small("paper", images=300, gpus=1)
    result = simulate(scenario)
    s = result.series
    asked = s.gpus_asked
    first = next(i for i, n in enumerate(asked) if n > 0)
    assert asked[:first] == [0] * first and asked[first] == 1
    assert s.t[first] == scenario.cluster.hpa_sync  # the first sync that sees the first zip
    back_to_zero = next(t for t, n in zip(s.t, asked, strict=True) if t > s.t[first] and n == 0)
    grace = policy_module.PolicyConfig().idle_grace
    sync = scenario.cluster.hpa_sync
    # the last sync with work is at most one sync before the last image is done
    assert result.finished_s - sync + grace <= back_to_zero <= result.finished_s + grace + sync
    # and the GPU node is paid until the cluster autoscaler removes it 10 min after that
    assert result.ended_s >= back_to_zero + scenario.cluster.node_unneeded_after


@pytest.mark.parametrize("policy", POLICIES)
def test_cost_is_node_hours_times_price(policy: str):
    sim = Simulation(small(policy))
    result = sim.run()
    c = sim.scenario.cluster
    gpu_price = VM_PRICES["n1-highmem-2"].preemptible + GPU_PRICES["V100"].preemptible
    assert gpu_price == pytest.approx(0.025 + 0.74)
    nodes = {
        pool: sum(n.removed - n.created for n in pool.gone) / 3600
        for pool in (sim.gpu_pool, sim.cpu_pool)
    }
    assert result.node_hours == pytest.approx(
        {f"{c.gpu_host}+{c.gpu_type}": nodes[sim.gpu_pool], c.consumer_node: nodes[sim.cpu_pool]}
    )
    expected = nodes[sim.gpu_pool] * gpu_price + nodes[sim.cpu_pool] * 0.025
    assert result.cost == pytest.approx(expected)
    on_demand = nodes[sim.gpu_pool] * (0.1184 + 2.48) + nodes[sim.cpu_pool] * 0.1184
    assert result.node_cost_on_demand == pytest.approx(on_demand)


@pytest.mark.parametrize("policy", POLICIES)
def test_preempted_nodes_hand_their_jobs_back_and_the_run_still_finishes(policy: str):
    cluster = ClusterParams(preemptions_per_node_hour=30.0)  # a node lives ~2 min
    sim = Simulation(small(policy, images=3_000, cluster=cluster))
    result = sim.run()
    assert sim.cpu_pool.preemptions > 0 and sim.gpu_pool.preemptions > 0
    assert result.preemptions == sim.cpu_pool.preemptions + sim.gpu_pool.preemptions
    assert result.requeued > 0
    assert sim.seg.done == 3_000  # nothing lost, nothing counted twice
    assert result.gpu_images >= 3_000  # a requeued job is inferred again


def test_on_demand_nodes_are_never_preempted():
    cluster = ClusterParams(preemptible=False, preemptions_per_node_hour=30.0)
    result = simulate(small(cluster=cluster))
    assert result.preemptions == 0


def test_the_paper_policy_is_the_one_in_autoscaler_policy(monkeypatch: pytest.MonkeyPatch):
    seen: list[policy_module.Observation] = []
    real = policy_module.PaperPolicy.decide

    def spy(self: policy_module.PaperPolicy, obs: policy_module.Observation):
        seen.append(obs)
        return real(self, obs)

    monkeypatch.setattr(policy_module.PaperPolicy, "decide", spy)
    sim = Simulation(small("paper", images=500, gpus=1))
    result = sim.run()
    assert type(sim.policy) is policy_module.PaperPolicy
    assert len(seen) == len(result.series.t) > 10
    gaps = {round(b.now - a.now, 6) for a, b in pairwise(seen)}
    assert gaps == {15.0}  # asked at every HPA sync
    assert set(seen[0].queues) == {QUEUE, ZIP_QUEUE}


def test_a_run_repeats_exactly_with_its_seed_and_not_with_another():
    one, two = simulate(small(seed=3)), simulate(small(seed=3))
    other = simulate(small(seed=4))
    assert (one.finished_s, one.cost) == (two.finished_s, two.cost)
    assert (one.finished_s, one.cost) != (other.finished_s, other.cost)


def test_the_backlog_policy_beats_the_paper_on_a_big_submission():
    """100 zips at 2.4 Gbps onto up to 4 GPUs: faster and cheaper (the grid shows the rest)."""
    paper = simulate(small("paper", images=20_000, gpus=4))
    backlog = simulate(small("backlog", images=20_000, gpus=4))
    assert backlog.finished_s < paper.finished_s
    assert backlog.cost < paper.cost


# ------------------------------------------------------------------------------ the parts


def test_the_event_loop_runs_in_time_order_and_skips_cancelled_events():
    loop, seen = EventLoop(), []
    loop.at(2.0, seen.append, "b")
    loop.at(1.0, seen.append, "a")
    loop.at(2.0, seen.append, "c")  # same time: scheduling order
    loop.at(1.5, seen.append, "x").cancel()
    loop.run()
    assert seen == ["a", "b", "c"]
    assert loop.now == 2.0
    with pytest.raises(ValueError):
        loop.at(1.0, seen.append, "past")


def test_uploads_arrive_at_the_link_speed():
    loop, zips = EventLoop(), []
    workload = Workload(images=1_050, upload_mbps=240)  # 0.05 s an image
    uploader = Uploader(loop, workload, zips.append, random.Random(0), jitter=0.1)
    uploader.start()
    loop.run()
    assert [z.images for z in zips] == [100] * 10 + [50]
    assert all(z.zipped and z.owner == CLIENT for z in zips)
    assert uploader.finished_at == pytest.approx(1_050 * 0.05, rel=0.1)


def test_a_gpu_serves_batches_and_reports_its_busy_time():
    loop = EventLoop()
    router = GpuRouter(loop, retry=3.0)
    done: list[int] = []
    pool = SegmentationPool(
        loop,
        random.Random(0),
        StageTimes(0, 0, 0, 0),
        15.0,
        router,
        done.append,
    )
    server = GpuServer(loop, speed=10.0, batch_max=32, router=router)
    router.add(server)
    for _ in range(40):
        pool.add_consumer()
    sub = Submission(CLIENT, 40, 0.0)
    pool.push(sub, 40)  # 40 images: a batch of 32 (3.2 s), then 8 (0.8 s)
    loop.run()
    assert sum(done) == 40
    assert sub.done == 40 and sub.finished == pytest.approx(4.0)
    assert server.images == 40
    assert server.busy_seconds(loop.now) == pytest.approx(4.0)
    assert loop.now == pytest.approx(4.0)


def test_scale_down_lets_a_busy_consumer_finish_its_job():
    loop = EventLoop()
    pool = NodePool(
        loop,
        random.Random(0),
        "cpu",
        capacity=5,
        start=(60, 60),
        hourly_price=0.025,
        preemptible=False,
        preemptions_per_hour=0,
        max_life=math.inf,
        unneeded_after=600,
    )
    router = GpuRouter(loop, retry=3.0)
    done: list[int] = []
    work = SegmentationPool(
        loop,
        random.Random(0),
        StageTimes(5, 5, 0, 0),
        15.0,
        router,
        done.append,
    )
    router.add(GpuServer(loop, speed=10.0, batch_max=32, router=router))
    deployment = ConsumerDeployment(loop, pool, QUEUE, 30, work)
    deployment.scale(2)
    pool.scan()
    loop.run(until=100)  # node at 60 s, consumers at 90 s
    assert deployment.ready == 2
    work.push(Submission(CLIENT, 1, loop.now, zipped=False))  # one consumer busy, one idle
    deployment.scale(0)
    assert deployment.ready == 0 and len(deployment.leaving) == 1  # the idle one went at once
    loop.run(until=200)
    assert done == [1]  # the busy one finished its image...
    assert not deployment.leaving  # ...then left
    assert pool.nodes[0].pods == []


def test_the_cluster_autoscaler_removes_a_node_ten_minutes_after_it_empties():
    sim = Simulation(small(images=100, gpus=1))
    result = sim.run()
    for node in sim.gpu_pool.gone + sim.cpu_pool.gone:
        assert node.removed is not None
    last_gpu_asked = max(
        t for t, n in zip(result.series.t, result.series.gpus_asked, strict=True) if n
    )
    assert result.ended_s >= last_gpu_asked + 600


def test_data_costs_follow_the_papers_accounting():
    two = DataCosts(zones=2).costs(1_000_000, 5.5 * 3600)
    one = DataCosts(zones=1).costs(1_000_000, 5.5 * 3600)
    assert two["inter_zone_egress"] == pytest.approx(0.01 * 0.5 * 1e6 * 0.011010048 * 3)
    assert one["inter_zone_egress"] == 0
    assert two["operations"] == pytest.approx(0.054 / 10_000 * 201 * 10_000)


def test_measured_stage_times_are_read_and_scaled_to_a_megapixel(tmp_path: Path):
    path = tmp_path / "zip_throughput.json"
    child = {
        "download_time": 0.01,
        "preprocess_time": 0.02,
        "prediction_time": 0.07,
        "postprocess_time": 0.04,
        "upload_time": 0.01,
    }
    path.write_text(
        json.dumps(
            {
                "image_size": 500,
                "results": [
                    {"consumers": 2, "child_mean_seconds": {k: 9.0 for k in child}},
                    {"consumers": 1, "child_mean_seconds": child},
                ],
            }
        )
    )
    stages = stage_times_from_file(path)
    assert stages.preprocess == pytest.approx(0.03 * 4)  # 1 MP / (500 x 500) = 4
    assert stages.postprocess == pytest.approx(0.05 * 4)
    result = simulate(replace(small(images=500), stages=stages))
    assert result.finished_s > 0


def test_the_cli_prints_the_table_and_writes_json_and_plots(tmp_path: Path, capsys):
    argv = ["--images", "400,800", "--gpus", "1", "--upload-mbps", "2400", "--out", str(tmp_path)]
    assert cluster_sim.main(argv) == 0
    out = capsys.readouterr().out
    assert "time h" in out and "paper" in out and "backlog" in out
    data = json.loads((tmp_path / "cluster_sim.json").read_text())
    assert {(r["images"], r["policy"]) for r in data["runs"]} == {
        (400, "paper"),
        (400, "backlog"),
        (800, "paper"),
        (800, "backlog"),
    }
    pngs = sorted(p.name for p in (tmp_path / "cluster_sim").glob("*.png"))
    assert pngs == ["images400_gpus1_2400mbps.png", "images800_gpus1_2400mbps.png"]


def test_unknown_policies_and_gpu_types_are_refused():
    with pytest.raises(SystemExit):
        cluster_sim.parse_args(["--policy", "magic"])
    with pytest.raises(ValueError, match="GPU type"):
        ClusterParams(gpu_type="A100")
    with pytest.raises(ValueError, match="unknown policy"):
        simulate(small("magic"))
