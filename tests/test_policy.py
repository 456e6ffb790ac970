"""The scaling policy's pure functions: demand, 0<->1, the consumer metric, HPA arithmetic;
the one interface both policies share, and the one place settings become a policy."""

from __future__ import annotations

import os

import pytest

from autoscaler.policy import (
    BacklogPolicy,
    Hpa,
    HpaBehavior,
    Observation,
    PaperPolicy,
    PolicyConfig,
    ScalingPolicy,
    consumer_metric,
    hpa_proposal,
    policy_from_settings,
    total_demand,
    zero_to_one,
)
from kiosk.queue import QueueStats
from kiosk.settings import AutoscalerSettings


def test_demand_counts_in_flight_items_and_zip_queues() -> None:
    stats = [QueueStats("segmentation", 3, 2), QueueStats("segmentation-zip", 0, 1)]
    assert total_demand(stats) == 6


def test_zero_to_one_starts_on_work_and_stops_only_after_the_idle_grace() -> None:
    assert zero_to_one(0, demand=1, idle_for=0) == 1
    assert zero_to_one(3, demand=5, idle_for=0) == 3, "1->N is the HPA's business"
    assert zero_to_one(1, demand=0, idle_for=299, idle_grace=300) == 1
    assert zero_to_one(1, demand=0, idle_for=300, idle_grace=300) == 0
    assert zero_to_one(0, demand=0, idle_for=1e9) == 0


def test_a_model_server_still_starting_is_never_scaled_down() -> None:
    assert zero_to_one(1, demand=0, idle_for=1e9, starting=True) == 1


@pytest.mark.parametrize(
    ("items", "consumers", "servers", "gpu", "expected"),
    [
        (0, 4, 1, 10.0, 0.0),  # no work
        (10, 4, 0, 0.0, 0.0),  # no model server to send it to
        (10, 4, 1, 20.0, 0.8),  # some work: the idle GPU fraction is the smaller
        (1, 10, 1, 20.0, 0.1),  # some work: items per consumer is the smaller
        (1, 1, 1, 0.0, 0.15),  # one item, one consumer: the target, never more (hold)
        (3, 4, 1, 20.0, 0.15),  # fewer items than consumers: growing would only add idlers
        (5, 4, 1, 20.0, 0.8),  # more items than consumers: the paper's rule again
        (10, 0, 1, 50.0, 0.5),  # no consumer yet: items per consumer is "all of them"
        (500, 150, 1, 0.0, 0.1125),  # too many consumers per model server
        (500, 299, 2, 0.0, 1.0),  # under the ratio limit with two model servers
    ],
)
def test_the_consumer_metric_has_the_papers_regimes_and_never_grows_past_the_items(
    items: int, consumers: int, servers: int, gpu: float, expected: float
) -> None:
    assert consumer_metric(items, consumers, servers, gpu) == pytest.approx(expected)


def test_the_hpa_proposal_is_ceil_of_current_times_the_ratio_outside_the_tolerance() -> None:
    assert hpa_proposal(2, metric=0.16, target=0.15) == 2  # within 10 %
    assert hpa_proposal(2, metric=0.30, target=0.15) == 4
    assert hpa_proposal(3, metric=0.05, target=0.15) == 1
    assert hpa_proposal(4, metric=90, target=70) == 6
    assert hpa_proposal(0, metric=1.0, target=0.15) == 0, "an HPA is off at zero replicas"


def test_the_hpa_scales_up_at_once_but_down_only_after_its_window() -> None:
    hpa = Hpa(0.15, HpaBehavior(max_replicas=20, scale_down_window=300))
    assert hpa.desired(0, current=1, metric=0.6) == 4
    assert hpa.desired(15, current=4, metric=0.01) == 4, "a recommendation of 4 is in the window"
    assert hpa.desired(200, current=4, metric=0.01) == 4
    assert hpa.desired(316, current=4, metric=0.01) == 1


def test_the_hpa_limits_scale_up_to_four_pods_or_double_per_step() -> None:
    hpa = Hpa(0.15, HpaBehavior(max_replicas=100))
    assert hpa.desired(0, current=1, metric=15.0) == 5  # +4 pods beats +100 %
    assert hpa.desired(15, current=10, metric=15.0) == 20  # +100 % beats +4 pods


def observation(now: float, queued: int, consumers: int, servers: int, ready: int, gpu=0.0):
    return Observation(
        now=now,
        queues={"segmentation": QueueStats("segmentation", queued, 0)},
        consumers={"segmentation": consumers},
        model_servers=servers,
        model_servers_ready=ready,
        gpu_utilization=gpu,
    )


def test_the_paper_policy_goes_from_zero_to_many_and_back_to_zero() -> None:
    policy = PaperPolicy(
        PolicyConfig(idle_grace=60, max_consumers=8, max_model_servers=4, scale_down_window=30)
    )
    first = policy.decide(observation(0, queued=100, consumers=0, servers=0, ready=0))
    assert first.model_servers == 1 and first.consumers == {"segmentation": 1}
    grown = policy.decide(observation(15, queued=100, consumers=1, servers=1, ready=1, gpu=10))
    assert grown.consumers["segmentation"] == 5  # ceil(1 * 0.9 / 0.15) = 6, at most +4
    busier = policy.decide(observation(30, queued=100, consumers=5, servers=1, ready=1, gpu=95))
    assert busier.model_servers == 2  # ceil(1 * 95 / 70)
    idle = observation(80, queued=0, consumers=5, servers=2, ready=2)
    assert policy.decide(idle).model_servers == 1, "the HPA shrinks; the idle grace has not passed"
    done = policy.decide(observation(200, queued=0, consumers=1, servers=2, ready=2))
    assert done.model_servers == 0 and done.consumers == {"segmentation": 0}


def test_a_restarted_policy_waits_a_whole_grace_before_scaling_to_zero() -> None:
    policy = PaperPolicy(PolicyConfig(idle_grace=60))
    policy.start(1000, ["segmentation"])
    assert policy.decide(observation(1030, 0, 1, 1, 1)).model_servers == 1
    assert policy.decide(observation(1061, 0, 1, 1, 1)).model_servers == 0


def test_on_a_cluster_the_policy_leaves_one_to_many_to_the_hpas() -> None:
    policy = PaperPolicy(PolicyConfig(max_consumers=50, max_model_servers=8), hpas=False)
    busy = observation(0, queued=1000, consumers=3, servers=2, ready=2, gpu=99)
    assert policy.decide(busy).model_servers == 2
    assert policy.decide(busy).consumers == {"segmentation": 3}


@pytest.mark.parametrize(
    "policy",
    [PaperPolicy(PolicyConfig(idle_grace=60)), BacklogPolicy(PolicyConfig(idle_grace=60))],
    ids=["paper", "backlog"],
)
def test_either_policy_is_driven_through_the_same_interface_from_zero_to_work_and_back(
    policy: ScalingPolicy,
) -> None:
    policy.start(0, ["segmentation"])
    assert policy.decide(observation(5, 0, 0, 0, 0)).model_servers == 0
    work = policy.decide(observation(10, queued=20, consumers=0, servers=0, ready=0))
    assert work.model_servers == 1 and work.consumers["segmentation"] >= 1
    assert policy.decide(observation(40, 0, 1, 1, 1)).model_servers == 1, "within the grace"
    done = policy.decide(observation(71, 0, 1, 1, 1))
    assert done.model_servers == 0 and done.consumers == {"segmentation": 0}


def clean_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> AutoscalerSettings:
    for key in list(os.environ):
        if key.startswith("KIOSK_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return AutoscalerSettings()


@pytest.mark.parametrize(
    ("policy", "backend", "kind", "hpas"),
    [
        ("paper", "local", PaperPolicy, True),
        ("paper", "kubernetes", PaperPolicy, False),
        ("backlog", "local", BacklogPolicy, None),
        ("backlog", "kubernetes", BacklogPolicy, None),
    ],
)
def test_the_scaling_policy_setting_picks_the_policy_and_who_does_one_to_many(
    monkeypatch: pytest.MonkeyPatch, policy: str, backend: str, kind: type, hpas: bool | None
) -> None:
    settings = clean_env(monkeypatch, KIOSK_SCALING_POLICY=policy, KIOSK_AUTOSCALER_BACKEND=backend)
    chosen = policy_from_settings(settings)
    assert type(chosen) is kind
    if hpas is not None:  # the paper policy on a cluster leaves 1->N to Kubernetes' HPAs
        assert chosen.hpas is hpas  # type: ignore[attr-defined]


def test_the_paper_policy_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert type(policy_from_settings(clean_env(monkeypatch))) is PaperPolicy


def test_settings_become_the_policy_config_with_one_meaning_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = PolicyConfig.from_settings(
        clean_env(
            monkeypatch,
            KIOSK_IDLE_GRACE="30",
            KIOSK_CONSUMER_TARGET="0.2",
            KIOSK_CONSUMER_RATIO_LIMIT="10",
            KIOSK_GPU_TARGET="80",
            KIOSK_SCALE_DOWN_WINDOW="45",
            KIOSK_MAX_MODEL_SERVERS="4",
            KIOSK_MAX_CONSUMERS="6",
            KIOSK_MAX_CONSUMERS_BY_QUEUE="segmentation-zip=2",
        )
    )
    assert config == PolicyConfig(
        idle_grace=30,
        consumer_target=0.2,
        ratio_limit=10,
        gpu_target=80,
        scale_down_window=45,
        max_model_servers=4,
        max_consumers=6,
        max_consumers_by_queue={"segmentation-zip": 2},
    )
    assert config.max_consumers_of("segmentation") == 6
    assert config.max_consumers_of("segmentation-zip") == 2
    default = PolicyConfig.from_settings(clean_env(monkeypatch))
    assert default.max_consumers == (os.cpu_count() or 1), "0 means the CPU count"


def test_per_queue_caps_bound_each_queues_consumers() -> None:
    caps = {"segmentation": 3, "segmentation-zip": 1}
    config = PolicyConfig(max_consumers=50, max_consumers_by_queue=caps)
    for policy in (PaperPolicy(config), BacklogPolicy(config)):
        for t in range(0, 120, 15):
            decision = policy.decide(observation(t, queued=500, consumers=3, servers=1, ready=1))
            assert decision.consumers["segmentation"] == 3


@pytest.mark.parametrize("value", ["segmentation", "segmentation=0", "segmentation=x"])
def test_bad_per_queue_caps_are_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    with pytest.raises(ValueError, match="max_consumers_by_queue"):
        clean_env(monkeypatch, KIOSK_MAX_CONSUMERS_BY_QUEUE=value)
