"""KubernetesBackend with the real ``kubernetes`` client against a Kubernetes API EMULATOR
(kmock's, extended in tests/support/kube_emulator.py), since no kube-apiserver can run here."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import kmock
import pytest

from autoscaler.backends import BackendError, Replicas
from autoscaler.backends.kubernetes import (
    BUSY_DELETION_COST,
    IDLE_DELETION_COST,
    KubernetesBackend,
)
from kiosk.settings import AutoscalerSettings
from tests.support.kube_emulator import DEPLOYMENTS, NS, PODS, Cluster


def scale_path(name: str) -> str:
    return f"/apis/apps/v1/namespaces/{NS}/deployments/{name}/scale"


# ------------------------------------------------------------------ reading


def test_replicas_are_read_from_the_emulated_scale_subresource_and_status(
    cluster: Cluster,
) -> None:
    cluster.add_deployment("tf-serving", replicas=2, ready=1)
    cluster.add_deployment("consumer-segmentation", replicas=3, ready=3)

    replicas = cluster.backend().replicas()

    assert replicas == Replicas(
        model_servers=2,
        model_servers_ready=1,
        consumers={"segmentation": 3, "segmentation-zip": 0},
    )
    paths = {r.url.path for r in cluster.requests()}
    assert scale_path("tf-serving") in paths
    assert f"/apis/apps/v1/namespaces/{NS}/deployments/tf-serving/status" in paths
    assert cluster.writes() == []


def test_missing_consumer_deployment_is_named_with_the_chart_fix(cluster: Cluster) -> None:
    del cluster.api.objects[DEPLOYMENTS, NS, "consumer-segmentation-zip"]

    with pytest.raises(BackendError) as caught:
        cluster.backend().replicas()

    message = str(caught.value)
    assert "consumer-segmentation-zip" in message
    assert "404" in message
    assert "install or upgrade the chart" in message
    assert "'segmentation-zip'" in message


def test_missing_model_server_deployment_says_where_it_was_looked_for(cluster: Cluster) -> None:
    del cluster.api.objects[DEPLOYMENTS, NS, "tf-serving"]

    with pytest.raises(BackendError, match=rf"tf-serving does not exist in namespace {NS}"):
        cluster.backend().replicas()


# ------------------------------------------------------------------ writing


def test_zero_to_one_goes_through_the_scale_subresource_as_a_merge_patch(
    cluster: Cluster,
) -> None:
    cluster.backend().scale_model_servers(1)

    assert cluster.spec_replicas("tf-serving") == 1
    [write] = cluster.writes()
    assert write.method == kmock.method.PATCH
    assert write.url.path == scale_path("tf-serving")
    assert write.headers["Content-Type"] == "application/merge-patch+json"
    assert write.data == {"spec": {"replicas": 1}}


def test_no_write_when_the_replicas_already_match(cluster: Cluster) -> None:
    cluster.add_deployment("tf-serving", replicas=1, ready=1)
    cluster.add_deployment("consumer-segmentation", replicas=2)
    backend = cluster.backend()

    for _ in range(3):
        backend.scale_model_servers(1)
        backend.scale_consumers("segmentation", 2, busy={"consumer-segmentation-a"})
        backend.scale_consumers("segmentation-zip", 0)

    assert cluster.writes() == []
    assert cluster.spec_replicas("tf-serving") == 1
    assert cluster.spec_replicas("consumer-segmentation") == 2


def test_consumer_scale_up_patches_the_scale_and_touches_no_pod(cluster: Cluster) -> None:
    cluster.add_pod("consumer-segmentation-a", "consumer-segmentation")
    cluster.add_deployment("consumer-segmentation", replicas=1)

    cluster.backend().scale_consumers("segmentation", 3, busy={"consumer-segmentation-a"})

    assert cluster.spec_replicas("consumer-segmentation") == 3
    assert [w.url.path for w in cluster.writes()] == [scale_path("consumer-segmentation")]
    assert not any(r.resource == PODS for r in cluster.requests())


# ------------------------------------------------------------------ scale-down safety


def test_scale_down_marks_busy_pods_expensive_and_idle_pods_cheap_first(
    cluster: Cluster,
) -> None:
    cluster.add_deployment("consumer-segmentation", replicas=3, ready=3)
    for pod in ("seg-a", "seg-b", "seg-c"):
        cluster.add_pod(pod, "consumer-segmentation")
    cluster.add_pod("zip-a", "consumer-segmentation-zip")  # another Deployment's pod
    cluster.add_pod("seg-elsewhere", "consumer-segmentation", namespace="other")

    cluster.backend().scale_consumers("segmentation", 1, busy={"seg-b", "zip-a"})

    assert cluster.cost("seg-b") == BUSY_DELETION_COST
    assert cluster.cost("seg-a") == IDLE_DELETION_COST
    assert cluster.cost("seg-c") == IDLE_DELETION_COST
    assert int(BUSY_DELETION_COST) > int(IDLE_DELETION_COST)
    assert cluster.cost("zip-a") is None
    assert cluster.cost("seg-elsewhere", namespace="other") is None
    assert cluster.spec_replicas("consumer-segmentation") == 1
    # The marks are written before the scale-down, so the ReplicaSet controller sees them.
    writes = [w.url.path for w in cluster.writes()]
    assert writes[-1] == scale_path("consumer-segmentation")
    assert sorted(writes[:-1]) == [f"/api/v1/namespaces/{NS}/pods/seg-{x}" for x in "abc"]
    assert all(
        w.headers["Content-Type"] == "application/merge-patch+json" for w in cluster.writes()
    )


def test_scale_down_patches_only_pods_whose_deletion_cost_changes(cluster: Cluster) -> None:
    cluster.add_deployment("consumer-segmentation", replicas=4)
    cluster.add_pod("seg-a", "consumer-segmentation", IDLE_DELETION_COST)
    cluster.add_pod("seg-b", "consumer-segmentation", BUSY_DELETION_COST)
    cluster.add_pod("seg-c", "consumer-segmentation", BUSY_DELETION_COST)  # now idle
    cluster.add_pod("seg-d", "consumer-segmentation")  # never marked
    backend = cluster.backend()

    backend.scale_consumers("segmentation", 3, busy={"seg-b"})

    pods_patched = sorted(w.name for w in cluster.writes() if w.resource == PODS)
    assert pods_patched == ["seg-c", "seg-d"]
    assert [cluster.cost(p) for p in ("seg-a", "seg-b", "seg-c", "seg-d")] == [
        IDLE_DELETION_COST,
        BUSY_DELETION_COST,
        IDLE_DELETION_COST,
        IDLE_DELETION_COST,
    ]
    assert backend.mark_deletion_costs("segmentation", {"seg-b"}) == 0


def test_scale_to_zero_does_not_mark_pods(cluster: Cluster) -> None:
    cluster.add_deployment("consumer-segmentation", replicas=2)
    cluster.add_pod("seg-a", "consumer-segmentation")

    cluster.backend().scale_consumers("segmentation", 0)

    assert [w.url.path for w in cluster.writes()] == [scale_path("consumer-segmentation")]
    assert cluster.spec_replicas("consumer-segmentation") == 0


def test_scale_down_is_not_applied_when_busy_pods_cannot_be_marked(cluster: Cluster) -> None:
    cluster.add_deployment("consumer-segmentation", replicas=2)
    cluster.add_pod("seg-a", "consumer-segmentation")
    cluster.add_pod("seg-b", "consumer-segmentation")
    cluster.api.refuse("PATCH", f"/api/v1/namespaces/{NS}/pods/seg-a", 403, "Forbidden")
    backend = cluster.backend()

    with pytest.raises(BackendError) as caught:
        backend.scale_consumers("segmentation", 1, busy={"seg-b"})

    message = str(caught.value)
    assert "seg-a" in message and "403 Forbidden" in message
    assert "list and patch on pods" in message
    assert "was not applied" in message
    assert cluster.spec_replicas("consumer-segmentation") == 2

    backend.scale_consumers("segmentation", 1, busy={"seg-b"})  # RBAC fixed: it goes through

    assert cluster.spec_replicas("consumer-segmentation") == 1
    assert cluster.cost("seg-a") == IDLE_DELETION_COST


# ------------------------------------------------------------------ errors and restarts


def test_forbidden_scale_patch_says_which_deployment_and_which_rbac_rule(
    cluster: Cluster,
) -> None:
    cluster.api.refuse("PATCH", scale_path("tf-serving"), 403, "Forbidden")
    backend = cluster.backend()

    with pytest.raises(BackendError) as caught:
        backend.scale_model_servers(1)

    message = str(caught.value)
    assert f"Deployment {NS}/tf-serving from 0 to 1" in message
    assert "HTTP 403 Forbidden" in message
    assert "get and patch on deployments/scale" in message
    assert cluster.spec_replicas("tf-serving") == 0  # the refused write stored nothing

    backend.scale_model_servers(1)  # the same backend object carries on

    assert cluster.spec_replicas("tf-serving") == 1


def test_server_error_on_a_read_becomes_backend_error_and_the_next_read_works(
    cluster: Cluster,
) -> None:
    cluster.add_deployment("tf-serving", replicas=1, ready=1)
    status_path = f"/apis/apps/v1/namespaces/{NS}/deployments/tf-serving/status"
    cluster.api.refuse("GET", status_path, 500, "InternalError")
    backend = cluster.backend()

    with pytest.raises(BackendError, match=r"status of Deployment kiosk/tf-serving: HTTP 500"):
        backend.replicas()

    assert backend.replicas().model_servers_ready == 1


def test_unreachable_api_server_becomes_backend_error(cluster: Cluster) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = cluster.backend(url=f"http://127.0.0.1:{port}", timeout=1.0)

    with pytest.raises(BackendError, match=r"did not answer.*reachable from the autoscaler"):
        backend.scale_model_servers(1)


def test_unreadable_answer_becomes_backend_error(cluster: Cluster) -> None:
    # A Deployment without a pod template is not a Deployment the client can read.
    spec = {"replicas": 1, "selector": {"matchLabels": {"app": "tf-serving"}}}
    cluster.api.objects[DEPLOYMENTS, NS, "tf-serving"]["spec"] = spec

    with pytest.raises(BackendError, match=r"could not read"):
        cluster.backend().replicas()


def test_a_restarted_backend_reads_the_cluster_and_does_not_flip_replicas(
    cluster: Cluster,
) -> None:
    before = cluster.backend()
    before.scale_model_servers(1)
    before.scale_consumers("segmentation", 2)
    # A write refused just before the restart leaves the cluster as it was; nothing remembers it.
    cluster.api.refuse("PATCH", scale_path("consumer-segmentation-zip"), 500, "InternalError")
    with pytest.raises(BackendError):
        before.scale_consumers("segmentation-zip", 1)
    del before
    start = cluster.mark()

    after = cluster.backend()  # a new process: new object, new client, no memory
    seen = after.replicas()
    after.scale_model_servers(seen.model_servers)
    for queue, replicas in seen.consumers.items():
        after.scale_consumers(queue, replicas)

    assert seen == Replicas(1, 0, {"segmentation": 2, "segmentation-zip": 0})
    assert [r for r in cluster.requests()[start:] if r.method != kmock.method.GET] == []
    assert cluster.spec_replicas("tf-serving") == 1
    assert cluster.spec_replicas("consumer-segmentation") == 2


def test_every_request_is_namespaced(cluster: Cluster) -> None:
    cluster.add_deployment("consumer-segmentation", replicas=2)
    cluster.add_pod("seg-a", "consumer-segmentation")
    backend = cluster.backend()

    backend.replicas()
    backend.scale_model_servers(1)
    backend.scale_consumers("segmentation", 1, busy={"seg-a"})
    backend.mark_deletion_costs("segmentation", ())

    requests = cluster.requests()
    assert requests
    assert all(r.namespace == NS for r in requests)
    assert all(f"/namespaces/{NS}/" in r.url.path for r in requests)
    assert not any(r.action == kmock.action.WATCH for r in requests)


# ------------------------------------------------------------------ from_settings


def write_kubeconfig(path: Path, url: str, namespace: str | None) -> Path:
    context: dict[str, Any] = {"cluster": "emulator", "user": "tester"}
    if namespace:
        context["namespace"] = namespace
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: emulator\n"
        f"clusters: [{{name: emulator, cluster: {{server: '{url}'}}}}]\n"
        "users: [{name: tester, user: {token: not-a-secret}}]\n"
        f"contexts: [{{name: emulator, context: {context!r}}}]\n".replace("'", '"')
    )
    return path


def test_from_settings_outside_a_cluster_uses_kubeconfig_and_its_namespace(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", cluster.url, NS)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    settings = AutoscalerSettings(kubernetes_namespace="", queues=("segmentation",))

    backend = KubernetesBackend.from_settings(settings, namespace_file=tmp_path / "absent")

    assert backend.namespace == NS
    assert backend.queues == ["segmentation", "segmentation-zip"]
    assert backend.replicas() == Replicas(0, 0, {"segmentation": 0, "segmentation-zip": 0})
    assert cluster.requests()[0].headers["Authorization"] == "Bearer not-a-secret"
    backend.apps.api_client.close()


def test_from_settings_takes_the_namespace_from_settings_then_the_service_account_file(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kc", cluster.url, None)))
    namespace_file = tmp_path / "namespace"
    namespace_file.write_text("from-service-account\n")

    explicit = KubernetesBackend.from_settings(
        AutoscalerSettings(kubernetes_namespace="chosen"), namespace_file=namespace_file
    )
    own = KubernetesBackend.from_settings(
        AutoscalerSettings(kubernetes_namespace=""), namespace_file=namespace_file
    )
    fallback = KubernetesBackend.from_settings(
        AutoscalerSettings(kubernetes_namespace=""), namespace_file=tmp_path / "absent"
    )

    assert explicit.namespace == "chosen"
    assert own.namespace == "from-service-account"
    assert fallback.namespace == "default"
    for backend in (explicit, own, fallback):
        backend.apps.api_client.close()


def test_from_settings_without_any_credentials_says_what_to_provide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))

    with pytest.raises(BackendError, match=r"no Kubernetes credentials.*KUBECONFIG"):
        KubernetesBackend.from_settings(AutoscalerSettings())
