"""A Kubernetes API EMULATOR for tests of the autoscaler with the real ``kubernetes`` client.

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
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import kmock
import pytest
from kubernetes import client as k8s

from autoscaler.backends.kubernetes import DELETION_COST, KubernetesBackend

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
