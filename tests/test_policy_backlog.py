"""BacklogPolicy: model servers sized from the work in sight, consumers from what the servers
can take. Pure: observations in, decisions out, no clock."""

from __future__ import annotations

import math

import pytest

from autoscaler.policy import (
    BacklogConfig,
    BacklogPolicy,
    Observation,
    PolicyConfig,
    QueueDemand,
)

Q, ZIP = "segmentation", "segmentation-zip"


def obs(
    now: float,
    *,
    queued: int = 0,
    in_flight: int = 0,
    zips: int = 0,
    zips_in_flight: int = 0,
    consumers: int = 0,
    zip_consumers: int = 0,
    servers: int = 0,
    ready: int | None = None,
    util: float = 0.0,
) -> Observation:
    return Observation(
        now=now,
        queues={
            ZIP: QueueDemand(ZIP, zips, zips_in_flight),
            Q: QueueDemand(Q, queued, in_flight),
        },
        consumers={Q: consumers, ZIP: zip_consumers},
        model_servers=servers,
        model_servers_ready=servers if ready is None else ready,
        gpu_utilization=util,
    )


def policy(max_servers: int = 8, max_consumers: int = 1200, **backlog: float) -> BacklogPolicy:
    return BacklogPolicy(
        PolicyConfig(max_model_servers=max_servers, max_consumers=max_consumers),
        BacklogConfig(**backlog),
    )


def test_first_work_brings_up_a_model_server_and_consumers_for_both_queues():
    p = policy()
    d = p.decide(obs(15, zips=3))
    assert d.model_servers >= 1
    assert d.consumers[ZIP] >= 1
    assert d.consumers[Q] >= 1  # started for the images the zips will become


def test_nothing_runs_without_work():
    d = policy().decide(obs(15))
    assert d.model_servers == 0
    assert d.consumers == {ZIP: 0, Q: 0}


def test_a_big_backlog_asks_for_every_gpu_within_the_hpa_rate_limit():
    p = policy(max_servers=8)
    # 10^5 images waiting: far more than 5 minutes of work for 8 servers.
    first = p.decide(obs(15, queued=100_000, consumers=10, servers=1, ready=0))
    assert first.model_servers == 5  # 1 + max(4 pods, 100 %) per sync
    second = p.decide(obs(30, queued=100_000, consumers=10, servers=5, ready=0))
    assert second.model_servers == 8  # capped at the maximum, not waiting for readiness


def test_zip_items_count_as_their_images():
    p = policy(images_per_zip=100)
    o = obs(15, zips=30, zips_in_flight=2, queued=50)
    assert p.images(o.queues.values()) == 32 * 100 + 50


def test_servers_keep_pace_with_the_upload_and_no_more():
    """20 images/s arriving, served as they come: ceil(20 / (7.5 * 0.9)) = 3 servers."""
    p = policy(max_servers=8, images_per_server_s=7.5, gpu_target=90.0)
    servers, util = 3, 100 * 20 / (3 * 7.5)
    d = None
    for tick in range(1, 80):
        # a steady 200 images in the system: arrivals equal what the servers serve
        d = p.decide(
            obs(15 * tick, queued=20, in_flight=180, consumers=180, servers=servers, util=util)
        )
    assert p.arrival_rate == pytest.approx(20, rel=0.01)
    assert d is not None and d.model_servers == 3


def test_a_starting_server_is_never_taken_away():
    p = policy()
    d = p.decide(obs(15, queued=1, consumers=1, servers=4, ready=1))
    assert d.model_servers >= 4


def test_consumers_are_sized_to_feed_the_planned_servers():
    p = policy(images_per_server_s=7.5, consumer_cycle_s=3.0, consumer_headroom=1.25)
    o = obs(15, queued=100_000, consumers=200, servers=4, ready=4, util=100)
    assert p.consumers_wanted(o, Q, servers=4) == math.ceil(4 * 7.5 * 3.0 * 1.25)


def test_consumers_never_outnumber_the_images_or_the_maximum():
    p = policy(max_consumers=50)
    few = obs(15, queued=7, in_flight=3, consumers=40, servers=8, ready=8, util=50)
    assert p.consumers_wanted(few, Q, servers=8) == 10
    many = obs(15, queued=10**6, consumers=40, servers=8, ready=8, util=50)
    assert p.consumers_wanted(many, Q, servers=8) == 50


def test_zip_consumers_follow_the_zip_queue():
    p = policy(zips_per_consumer=2.0)
    o = obs(15, zips=9, zips_in_flight=1, zip_consumers=1)
    assert p.consumers_wanted(o, ZIP, servers=1) == 5


def test_the_cycle_is_learned_while_consumers_set_the_pace():
    p = policy(images_per_server_s=10.0, consumer_cycle_s=3.0, rate_window=1e-6)
    p.decide(obs(15, queued=1000, in_flight=100, consumers=100, servers=2, util=50))
    # 100 held, served 0.5 * 2 * 10 = 10 images/s: 10 s per image (Little's law)
    p.decide(obs(30, queued=1000, in_flight=100, consumers=100, servers=2, util=50))
    assert p.cycle_s == pytest.approx(10.0)


@pytest.mark.parametrize(
    "queued, util",
    [
        (50, 50.0),  # fewer waiting than held: arrivals set the pace
        (1000, 95.0),  # GPUs saturated: in flight includes queueing at the GPU
        (1000, 0.0),  # nothing served yet
    ],
)
def test_the_cycle_is_not_learned_from_misleading_moments(queued: int, util: float):
    p = policy(consumer_cycle_s=3.0, rate_window=1e-6)
    for t in (15, 30):
        p.decide(obs(t, queued=queued, in_flight=100, consumers=100, servers=2, util=util))
    assert p.cycle_s == 3.0


def test_a_busy_gpu_of_a_server_not_yet_ready_teaches_nothing_and_breaks_nothing():
    # A model server still loading its models reports utilisation but serves no images.
    p = policy(consumer_cycle_s=3.0, rate_window=1e-6)
    for t in (15, 30):
        decision = p.decide(
            obs(t, queued=1000, in_flight=100, consumers=100, servers=1, ready=0, util=50)
        )
    assert p.cycle_s == 3.0
    assert decision.model_servers >= 1


def test_everything_goes_to_zero_after_the_idle_grace_and_not_before():
    p = policy()
    p.decide(obs(15, queued=10, consumers=2, servers=1, util=50))
    held = p.decide(obs(15 + 299, consumers=2, servers=1))
    assert held.model_servers == 1 and held.consumers[Q] >= 1
    gone = p.decide(obs(15 + 300, consumers=2, servers=1))
    assert gone.model_servers == 0
    assert gone.consumers == {ZIP: 0, Q: 0}


def test_a_zip_queue_fanned_out_faster_than_it_fills_keeps_its_consumer():
    """Zips seen empty at every sync while their images are worked on: still one pipeline."""
    p = policy()
    p.decide(obs(15, zips=1, zip_consumers=1, queued=100, consumers=10, servers=1))
    d = None
    for t in range(30, 1000, 15):
        d = p.decide(obs(t, queued=100, consumers=10, zip_consumers=1, servers=1, util=50))
    assert d is not None and d.consumers[ZIP] >= 1


def test_scale_down_waits_for_the_stabilisation_window():
    p = policy(max_servers=8)
    busy = {"queued": 100_000, "consumers": 300, "servers": 8, "util": 100.0}
    p.decide(obs(15, **busy))
    calm = {"queued": 10, "in_flight": 10, "consumers": 300, "servers": 8, "util": 5.0}
    assert p.decide(obs(15 + 290, **calm)).model_servers == 8
    assert p.decide(obs(15 + 330, **calm)).model_servers < 8


def test_a_restarted_controller_waits_a_whole_grace_before_scaling_to_zero():
    p = policy()
    p.start(1000.0, [Q, ZIP])
    assert p.decide(obs(1000 + 299, consumers=3, servers=1)).model_servers == 1
    gone = p.decide(obs(1000 + 300, consumers=3, servers=1))
    assert gone.model_servers == 0 and gone.consumers[Q] == 0
