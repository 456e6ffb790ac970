"""KubernetesBackend with the real ``kubernetes`` client against a Kubernetes API EMULATOR.

No kube-apiserver can run on this machine, so these tests do not talk to a cluster: they talk
HTTP to kmock's ``KubernetesEmulator`` (an in-memory emulator of the Kubernetes API, from PyPI),
served on a local port from a background thread, through the official ``kubernetes`` client, the
same calls the autoscaler makes in a pod.

What kmock's emulator lacks and :class:`ApiEmulator` below adds, each the way kube-apiserver
behaves:

* the scale subresource. Out of the box the emulator answers ``GET .../deployments/NAME/scale``
  with the whole Deployment and merges any ``PATCH`` of it into the Deployment. Here both are
  stubbed with kmock reactions that read and write the stored Deployment's ``spec.replicas``
  and answer an ``autoscaling/v1`` Scale (``spec.replicas``, ``status.replicas``,
  ``status.selector`` in query form);
* label selectors on pod lists (the emulator lists every pod of the namespace);
* patch content types: a PATCH in a media type kube-apiserver does not take, or a JSON patch
  that is not a list, is refused;
* refusals (``refuse``): the next matching requests fail with a Kubernetes ``Status`` (403,
  500, ...) before anything is stored, as RBAC or an overloaded API server would.

What it cannot emulate: controllers. Nothing turns ``spec.replicas`` into pods or updates a
Deployment's status; tests write status and pods themselves where it matters.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kmock
import pytest
from kubernetes import client as k8s

from autoscaler.backends import BackendError, Replicas
from autoscaler.backends.kubernetes import (
    BUSY_DELETION_COST,
    DELETION_COST,
    IDLE_DELETION_COST,
    KubernetesBackend,
)
from kiosk.settings import AutoscalerSettings

NS = "kiosk"
QUEUES = ("segmentation", "segmentation-zip")
DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
PODS = kmock.resource("", "v1", "pods")
PATCH_TYPES = {
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
}


# ------------------------------------------------------------------ the API emulator


@dataclass
class Refusal:
    method: str
    path: str
    error: kmock.KubernetesError
    times: int


class ApiEmulator(kmock.KubernetesEmulator):
    """kmock's Kubernetes API emulator plus the scale subresource, label selectors on pod
    lists, patch media types and injected refusals (see the module docstring)."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.refusals: list[Refusal] = []
        self[kmock.method.GET, DEPLOYMENTS, kmock.subresource("scale")] << self._read_scale
        self[kmock.method.PATCH, DEPLOYMENTS, kmock.subresource("scale")] << self._patch_scale
        self[kmock.action.LIST, PODS] << self._list_pods

    def refuse(self, method: str, path: str, status: int, reason: str, times: int = 1) -> None:
        """Answer the next ``times`` requests ``METHOD path`` with an error Status."""
        message = f"emulated refusal of {method} {path}"
        error = kmock.KubernetesError(status=status, reason=reason, message=message)
        self.refusals.append(Refusal(method.upper(), path, error, times))

    async def _handle(self, request: kmock.Request) -> Any:
        for refusal in self.refusals:
            if refusal.times > 0 and (request.method, request.url.path) == (
                refusal.method,
                refusal.path,
            ):
                refusal.times -= 1
                raise refusal.error  # rendered as a Status; nothing is stored
        if request.method == kmock.method.PATCH:
            media = request.headers.get("Content-Type", "").split(";")[0].strip()
            if media not in PATCH_TYPES:
                raise kmock.KubernetesError(415, "UnsupportedMediaType", f"{media!r} is no patch")
            if media == "application/json-patch+json" and not isinstance(request.data, list):
                raise kmock.KubernetesError(400, "BadRequest", "a JSON patch is a list")
        if request.subresource == "scale":
            # Only the reactions below: the emulator would merge a Scale into the Deployment.
            return await kmock.KubernetesScaffold._handle(self, request)
        return await super()._handle(request)

    def _deployment(self, request: kmock.Request) -> kmock.Object:
        key = (DEPLOYMENTS, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            message = f'deployments.apps "{request.name}" not found'
            raise kmock.KubernetesError(404, "NotFound", message)
        return self.objects[key]

    def _scale_of(self, deployment: kmock.Object) -> dict[str, Any]:
        labels = deployment["spec"]["selector"]["matchLabels"]
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {
                "name": deployment["metadata"]["name"],
                "namespace": deployment["metadata"]["namespace"],
            },
            "spec": {"replicas": deployment["spec"].get("replicas", 1)},
            "status": {
                "replicas": deployment.get("status", {}).get("replicas", 0),
                "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
            },
        }

    def _read_scale(self, request: kmock.Request) -> dict[str, Any]:
        return self._scale_of(self._deployment(request))

    def _patch_scale(self, request: kmock.Request) -> dict[str, Any]:
        deployment = self._deployment(request)
        replicas = (request.data or {}).get("spec", {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise kmock.KubernetesError(422, "Invalid", f"spec.replicas: {replicas!r}")
        deployment.patch({"spec": {"replicas": replicas}})
        return self._scale_of(deployment)

    def _list_pods(self, request: kmock.Request) -> dict[str, Any]:
        wanted: dict[str, str] = {}
        for term in filter(None, request.params.get("labelSelector", "").split(",")):
            key, eq, value = term.replace("==", "=").partition("=")
            if not eq or key.endswith("!"):
                raise kmock.KubernetesError(400, "BadRequest", f"emulated selectors: k=v ({term})")
            wanted[key] = value
        items = [
            obj.raw
            for (resource, namespace, _), obj in self.objects.items()
            if resource == PODS and not obj.deleted
            if request.namespace in (None, namespace)
            if wanted.items() <= obj.get("metadata", {}).get("labels", {}).items()
        ]
        return {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}


# ------------------------------------------------------------------ fixtures


@dataclass
class Cluster:
    """The API emulator and what tests do with it: objects, backends, recorded requests."""

    api: ApiEmulator
    url: str
    clients: list[k8s.ApiClient] = field(default_factory=list)

    def add_deployment(
        self, name: str, replicas: int, ready: int = 0, *, namespace: str = NS
    ) -> None:
        labels = {"app": name}
        self.api.objects[DEPLOYMENTS, namespace, name] = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "main", "image": "kiosk:test"}]},
                },
            },
            "status": {"replicas": replicas, "readyReplicas": ready},
        }

    def add_pod(self, name: str, app: str, cost: str | None = None, *, namespace: str = NS) -> None:
        annotations = {DELETION_COST: cost} if cost is not None else {}
        self.api.objects[PODS, namespace, name] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app": app},
                "annotations": annotations,
            },
            "spec": {"containers": [{"name": "main", "image": "kiosk:test"}]},
        }

    def backend(self, *, url: str | None = None, timeout: float = 5.0) -> KubernetesBackend:
        """A new backend with its own client, as a freshly (re)started autoscaler has."""
        client = k8s.ApiClient(k8s.Configuration(host=url or self.url))
        self.clients.append(client)
        return KubernetesBackend(
            k8s.AppsV1Api(client),
            k8s.CoreV1Api(client),
            NS,
            "tf-serving",
            "consumer-",
            QUEUES,
            request_timeout=timeout,
        )

    def spec_replicas(self, name: str) -> int:
        return int(self.api.objects[DEPLOYMENTS, NS, name]["spec"]["replicas"])

    def cost(self, pod: str, namespace: str = NS) -> str | None:
        annotations = self.api.objects[PODS, namespace, pod]["metadata"].get("annotations", {})
        return annotations.get(DELETION_COST)

    def requests(self) -> list[kmock.Request]:
        return list(self.api)

    def writes(self) -> list[kmock.Request]:
        return [r for r in self.api if r.method != kmock.method.GET]

    def mark(self) -> int:
        """How many requests so far, to look at only the ones after this point."""
        return len(self.requests())


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """kmock's Kubernetes API emulator (not a real cluster) on a local port, in its own thread
    with its own event loop, since the kubernetes client is synchronous."""
    started = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        try:
            async with ApiEmulator() as api, kmock.Server(api) as server:
                box.update(
                    api=api,
                    url=str(server.url).rstrip("/"),
                    loop=asyncio.get_running_loop(),
                    stop=asyncio.Event(),
                )
                started.set()
                await box["stop"].wait()
        finally:
            started.set()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(10) and "api" in box, "the Kubernetes API emulator did not start"
    cluster = Cluster(box["api"], box["url"])
    cluster.add_deployment("tf-serving", replicas=0)
    cluster.add_deployment("consumer-segmentation", replicas=0)
    cluster.add_deployment("consumer-segmentation-zip", replicas=0)
    yield cluster
    for client in cluster.clients:
        client.close()
    box["loop"].call_soon_threadsafe(box["stop"].set)
    thread.join(10)


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
