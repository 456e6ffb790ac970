"""The autoscaler's controller on a cluster: a real Redis, the real ``kubernetes`` client and
KubernetesBackend, against a Kubernetes API EMULATOR (tests/support/kube_emulator.py; no
kube-apiserver can run here). With the paper policy the controller does 0<->1 and HPAs own
1->N; with the backlog policy it sets every count through the same scale subresource."""

from __future__ import annotations

from autoscaler.controller import Controller
from autoscaler.policy import BacklogPolicy, PaperPolicy, PolicyConfig
from kiosk.queue import Heartbeat, JobQueue
from kiosk.storage.local import LocalBucket
from tests.helpers import submit_file
from tests.support.kube_emulator import QUEUES, Cluster


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def controller(cluster: Cluster, queue: JobQueue, clock: Clock, grace: float = 60) -> Controller:
    """A freshly started autoscaler: its own backend (and client) and policy."""
    policy = PaperPolicy(PolicyConfig(idle_grace=grace), hpas=False)
    return Controller(cluster.backend(), queue, QUEUES, policy, clock=clock)


def test_work_brings_the_model_server_and_consumers_from_zero_to_one(
    cluster: Cluster, queue: JobQueue, bucket: LocalBucket
) -> None:
    clock = Clock()
    auto = controller(cluster, queue, clock)
    auto.tick()
    assert cluster.writes() == [], "nothing to do without work"
    submit_file(queue, bucket, "segmentation", "cells.tif")
    auto.tick()
    assert cluster.spec_replicas("tf-serving") == 1
    assert cluster.spec_replicas("consumer-segmentation") == 1
    assert cluster.spec_replicas("consumer-segmentation-zip") == 0


def test_replicas_an_hpa_chose_are_left_alone_while_there_is_work(
    cluster: Cluster, queue: JobQueue, bucket: LocalBucket
) -> None:
    cluster.add_deployment("tf-serving", replicas=3, ready=3)
    cluster.add_deployment("consumer-segmentation", replicas=12, ready=12)
    submit_file(queue, bucket, "segmentation", "cells.tif")
    before = cluster.mark()
    controller(cluster, queue, Clock()).tick()
    assert [r for r in cluster.requests()[before:] if r.method != "GET"] == []


def test_idle_model_server_and_consumers_go_to_zero_after_the_grace_not_before(
    cluster: Cluster, queue: JobQueue
) -> None:
    cluster.add_deployment("tf-serving", replicas=1, ready=1)
    cluster.add_deployment("consumer-segmentation", replicas=2, ready=2)
    clock = Clock()
    auto = controller(cluster, queue, clock, grace=60)
    auto.tick()
    clock.now += 59
    auto.tick()
    assert cluster.spec_replicas("tf-serving") == 1, "a restart waits a whole grace"
    clock.now += 2
    auto.tick()
    assert cluster.spec_replicas("tf-serving") == 0
    assert cluster.spec_replicas("consumer-segmentation") == 0


def test_a_restarted_autoscaler_changes_nothing_on_its_first_looks(
    cluster: Cluster, queue: JobQueue
) -> None:
    cluster.add_deployment("tf-serving", replicas=1, ready=1)
    clock = Clock()
    controller(cluster, queue, clock).tick()
    before = cluster.mark()
    clock.now += 30
    controller(cluster, queue, clock).tick()  # restarted: new policy, new client
    assert [r for r in cluster.requests()[before:] if r.method != "GET"] == []


def test_busy_consumers_are_marked_so_an_hpa_scale_down_takes_idle_ones(
    cluster: Cluster, queue: JobQueue, bucket: LocalBucket
) -> None:
    cluster.add_deployment("tf-serving", replicas=1, ready=1)
    cluster.add_deployment("consumer-segmentation", replicas=2, ready=2)
    cluster.add_pod("consumer-segmentation-a", "consumer-segmentation")
    cluster.add_pod("consumer-segmentation-b", "consumer-segmentation")
    key = submit_file(queue, bucket, "segmentation", "cells.tif")
    claim = queue.claim("segmentation", "pod-b-consumer", 1)
    assert claim is not None and claim.key == key
    queue.heartbeat(
        "pod-b-consumer",
        30,
        Heartbeat("segmentation", host="consumer-segmentation-b", jobs=(key,)),
    )
    controller(cluster, queue, Clock()).tick()
    assert int(cluster.cost("consumer-segmentation-b")) > int(
        cluster.cost("consumer-segmentation-a")
    )


def test_with_the_backlog_policy_the_controller_scales_deployments_beyond_one(
    cluster: Cluster, queue: JobQueue, bucket: LocalBucket
) -> None:
    caps = {"segmentation": 3, "segmentation-zip": 2}
    policy = BacklogPolicy(PolicyConfig(max_model_servers=4, max_consumers_by_queue=caps))
    auto = Controller(cluster.backend(), queue, QUEUES, policy, clock=Clock())
    for i in range(30):  # 30 zips count as 3000 images: more than one server's 300 s of work
        submit_file(queue, bucket, "segmentation", f"plate-{i}.zip")
    submit_file(queue, bucket, "segmentation", "cells.tif")
    auto.tick()
    assert cluster.spec_replicas("tf-serving") == 2
    assert cluster.spec_replicas("consumer-segmentation") == 3  # its cap, not the HPA's
    assert cluster.spec_replicas("consumer-segmentation-zip") == 2
