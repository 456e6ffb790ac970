"""The Kubernetes backend: Deployments scaled through their scale subresource.

With the paper policy the autoscaler owns only the 0<->1 steps (HPAs do 1->N); with the backlog
policy it sets every count and the chart renders no HPAs. Either way this backend is small and
needs the same rights: it reads replicas from ``deployments/{name}/scale`` and ready replicas
from ``deployments/{name}/status``, and writes ``spec.replicas`` (any count) through the scale
subresource only (the Deployment's template and everything else stay the chart's).

Why it does not flap, across API errors and its own restarts: it keeps no state at all. Every
write is preceded by a read of the current ``spec.replicas`` and is skipped when the count
already matches, so a restarted autoscaler (or one whose previous write failed halfway) converges
on what the cluster says, never on what a lost process remembered. Every failure of the API
(refusal, timeout, unreachable server, unreadable answer) becomes a :class:`BackendError` that
says what failed and what to check; the controller logs it and tries again on its next tick.

Scale-down safety: before a consumer Deployment is scaled down, its pods get the
``controller.kubernetes.io/pod-deletion-cost`` annotation, high on pods whose consumer holds a
job (``busy``), low on idle ones, so the ReplicaSet controller removes idle consumers first.
Only pods whose annotation changes are patched. :meth:`KubernetesBackend.mark_deletion_costs`
is public so a controller can also refresh the marks ahead of an HPA's scale-downs.

Least privilege: every call is namespaced (no cluster-wide list or watch). The Role the chart
gives the autoscaler's service account needs exactly these rules::

    apiVersion: rbac.authorization.k8s.io/v1
    kind: Role
    rules:
      - apiGroups: ["apps"]
        resources: ["deployments/scale"]
        verbs: ["get", "patch"]
      - apiGroups: ["apps"]
        resources: ["deployments/status"]
        verbs: ["get"]
      - apiGroups: [""]
        resources: ["pods"]
        verbs: ["list", "patch"]

``resourceNames`` may narrow the two ``apps`` rules to the model-server Deployment and the
consumer Deployments (``{consumer_deployment_prefix}{queue}``, zip queues included); ``list``
cannot be narrowed by name, so the pods rule stays namespace-wide.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Collection, Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from autoscaler.backends import BackendError, Replicas

if TYPE_CHECKING:
    from kiosk.settings import AutoscalerSettings

log = logging.getLogger(__name__)

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
BUSY_DELETION_COST = "1000"  # a consumer holding a job: removed last
IDLE_DELETION_COST = "-1000"  # an idle consumer: removed first (unmarked pods count as 0)
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
REQUEST_TIMEOUT = 10.0  # seconds; a hung API server must not stall the control loop
MERGE_PATCH = "application/merge-patch+json"

RBAC_HINT = (
    "check the autoscaler's Role in this namespace: it must allow get and patch on "
    "deployments/scale, get on deployments/status, and list and patch on pods"
)

T = TypeVar("T")


class KubernetesBackend:
    """Scales the model-server Deployment and one consumer Deployment per queue."""

    def __init__(
        self,
        apps_api: k8s.AppsV1Api,
        core_api: k8s.CoreV1Api,
        namespace: str,
        model_server_deployment: str,
        consumer_deployment_prefix: str,
        queues: Iterable[str],
        *,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        if not namespace:
            raise ValueError(
                "KubernetesBackend needs a namespace: every call it makes is namespaced"
            )
        self.apps = apps_api
        self.core = core_api
        self.namespace = namespace
        self.model_server_deployment = model_server_deployment
        self.consumer_deployment_prefix = consumer_deployment_prefix
        self.queues = list(queues)
        self.request_timeout = request_timeout

    @classmethod
    def from_settings(
        cls,
        settings: AutoscalerSettings,
        queues: Iterable[str] | None = None,
        *,
        namespace_file: Path = SERVICE_ACCOUNT_NAMESPACE,
    ) -> KubernetesBackend:
        """Connect as the pod's service account, or through a kubeconfig outside a cluster.

        ``queues`` defaults to every queue of the configured job types, zip queues included.
        The namespace is ``kubernetes_namespace``, else the pod's own (the service-account
        file), else the kubeconfig context's, else ``default``.
        """
        configuration = k8s.Configuration()
        in_cluster = True
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
        except k8s_config.ConfigException:
            in_cluster = False
            try:
                k8s_config.load_kube_config(
                    config_file=_kubeconfig(),
                    client_configuration=configuration,
                    persist_config=False,
                )
            except (k8s_config.ConfigException, OSError) as exc:
                raise BackendError(
                    "no Kubernetes credentials: run the autoscaler in a pod with a service "
                    f"account, or point KUBECONFIG at a kubeconfig ({exc})"
                ) from exc
        namespace = settings.kubernetes_namespace or _default_namespace(in_cluster, namespace_file)
        if queues is None:
            from kiosk.keys import all_queues

            queues = all_queues(settings.queues)
        api = k8s.ApiClient(configuration)
        return cls(
            k8s.AppsV1Api(api),
            k8s.CoreV1Api(api),
            namespace,
            settings.model_server_deployment,
            settings.consumer_deployment_prefix,
            queues,
        )

    # ------------------------------------------------------------------ Backend

    def consumer_deployment(self, queue: str) -> str:
        return f"{self.consumer_deployment_prefix}{queue}"

    def replicas(self) -> Replicas:
        """Asked-for replicas from the scale subresources, ready ones from the status."""
        servers = self._spec_replicas(self.model_server_deployment)
        ready = self._ready_replicas(self.model_server_deployment)
        consumers: dict[str, int] = {}
        for queue in self.queues:
            consumers[queue] = self._spec_replicas(self.consumer_deployment(queue), queue=queue)
        return Replicas(model_servers=servers, model_servers_ready=ready, consumers=consumers)

    def scale_model_servers(self, replicas: int) -> None:
        """Set the model server's replicas; no write when they already match."""
        self._scale(self.model_server_deployment, replicas)

    def scale_consumers(self, queue: str, replicas: int, busy: Collection[str] = ()) -> None:
        """Set a queue's consumer replicas; a scale-down first marks busy pods expensive to
        delete and idle pods cheap, and is not applied when the marks cannot be written."""
        name = self.consumer_deployment(queue)
        scale = self._read_scale(name, queue=queue)
        current = _spec_of(scale)
        if current == replicas:
            return
        if 0 < replicas < current:  # to 0 every pod goes, busy or not: nothing to protect
            try:
                self._mark(name, _selector_of(scale), busy)
            except BackendError as exc:
                raise BackendError(
                    f"{exc}. The scale-down of {name} from {current} to {replicas} was not "
                    "applied, so that no busy consumer is removed first"
                ) from exc
        self._patch_scale(name, current, replicas)

    # ------------------------------------------------------------------ deletion costs

    def mark_deletion_costs(self, queue: str, busy: Collection[str]) -> int:
        """Annotate the consumer pods of ``queue`` with their deletion cost (busy high, idle
        low) so that any scale-down, ours or an HPA's, removes idle consumers first. Returns
        how many pods were patched; pods already carrying the right cost are left alone."""
        name = self.consumer_deployment(queue)
        return self._mark(name, _selector_of(self._read_scale(name, queue=queue)), busy)

    def _mark(self, deployment: str, selector: str, busy: Collection[str]) -> int:
        if not selector:
            raise BackendError(
                f"Deployment {self.namespace}/{deployment} reports no pod selector on its scale "
                "subresource yet, so its pods cannot be found"
            )
        pods = self._call(
            f"list the pods of Deployment {self.namespace}/{deployment}",
            lambda: self.core.list_namespaced_pod(
                self.namespace, label_selector=selector, _request_timeout=self.request_timeout
            ),
        )
        busy = set(busy)
        patched = 0
        for pod in pods.items or []:
            meta = pod.metadata
            if meta is None or not meta.name or meta.deletion_timestamp is not None:
                continue  # already going away
            cost = BUSY_DELETION_COST if meta.name in busy else IDLE_DELETION_COST
            if (meta.annotations or {}).get(DELETION_COST) == cost:
                continue
            body = {"metadata": {"annotations": {DELETION_COST: cost}}}
            self._call(
                f"mark pod {self.namespace}/{meta.name} of Deployment {deployment} with a "
                "deletion cost",
                partial(
                    self.core.patch_namespaced_pod,
                    meta.name,
                    self.namespace,
                    body,
                    _content_type=MERGE_PATCH,
                    _request_timeout=self.request_timeout,
                ),
            )
            patched += 1
        if patched:
            log.info(
                "marked %d pod(s) of %s (busy: %s)", patched, deployment, sorted(busy) or "none"
            )
        return patched

    # ------------------------------------------------------------------ API calls

    def _scale(self, deployment: str, replicas: int) -> None:
        current = _spec_of(self._read_scale(deployment))
        if current != replicas:
            self._patch_scale(deployment, current, replicas)

    def _patch_scale(self, deployment: str, current: int, replicas: int) -> None:
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, not {replicas}")
        self._call(
            f"scale Deployment {self.namespace}/{deployment} from {current} to {replicas}",
            lambda: self.apps.patch_namespaced_deployment_scale(
                deployment,
                self.namespace,
                {"spec": {"replicas": replicas}},
                _content_type=MERGE_PATCH,
                _request_timeout=self.request_timeout,
            ),
        )
        log.info("scaled %s from %d to %d", deployment, current, replicas)

    def _read_scale(self, deployment: str, *, queue: str | None = None) -> k8s.V1Scale:
        return self._call(
            f"read the scale of Deployment {self.namespace}/{deployment}",
            lambda: self.apps.read_namespaced_deployment_scale(
                deployment, self.namespace, _request_timeout=self.request_timeout
            ),
            deployment=deployment,
            queue=queue,
        )

    def _spec_replicas(self, deployment: str, *, queue: str | None = None) -> int:
        return _spec_of(self._read_scale(deployment, queue=queue))

    def _ready_replicas(self, deployment: str) -> int:
        found = self._call(
            f"read the status of Deployment {self.namespace}/{deployment}",
            lambda: self.apps.read_namespaced_deployment_status(
                deployment, self.namespace, _request_timeout=self.request_timeout
            ),
            deployment=deployment,
        )
        status = found.status
        return int(status.ready_replicas or 0) if status is not None else 0

    def _call(
        self,
        what: str,
        fn: Callable[[], T],
        *,
        deployment: str | None = None,
        queue: str | None = None,
    ) -> T:
        """Run one API call; turn each way it can fail into a BackendError saying what to do."""
        try:
            return fn()
        except ApiException as exc:
            raise BackendError(self._explain(what, exc, deployment, queue)) from exc
        except urllib3.exceptions.HTTPError as exc:  # refused, timed out, reset, bad TLS
            raise BackendError(
                f"could not {what}: the Kubernetes API server at {self._host()} did not answer "
                f"({type(exc).__name__}: {exc}); check that it is reachable from the autoscaler"
            ) from exc
        except ValueError as exc:  # an answer the client could not read as the expected kind
            raise BackendError(
                f"could not {what}: the API server at {self._host()} sent an answer the "
                f"Kubernetes client could not read ({exc})"
            ) from exc

    def _explain(
        self, what: str, exc: ApiException, deployment: str | None, queue: str | None
    ) -> str:
        status, reason, message = _status_of(exc)
        said = f"HTTP {status} {reason}" + (f": {message}" if message else "")
        if status == 404 and deployment is not None:
            if queue is not None:
                hint = (
                    f"the consumer Deployment {deployment} for queue {queue!r} does not exist in "
                    f"namespace {self.namespace}: install or upgrade the chart with {queue!r} in "
                    "its queue list (and keep KIOSK_QUEUES the same list)"
                )
            else:
                hint = (
                    f"the model-server Deployment {deployment} does not exist in namespace "
                    f"{self.namespace}: install or upgrade the chart there, or set "
                    "KIOSK_MODEL_SERVER_DEPLOYMENT and KIOSK_KUBERNETES_NAMESPACE to where it is"
                )
        elif status in (401, 403):
            hint = RBAC_HINT
        elif status == 0:
            hint = f"check that the API server at {self._host()} is reachable"
        else:
            hint = f"the controller tries again on its next tick; if this persists, {RBAC_HINT}"
        return f"could not {what}: {said}; {hint}"

    def _host(self) -> str:
        try:
            return str(self.apps.api_client.configuration.host)
        except AttributeError:
            return "(unknown host)"


# ------------------------------------------------------------------ helpers


def _spec_of(scale: k8s.V1Scale) -> int:
    return int(scale.spec.replicas or 0) if scale.spec is not None else 0


def _selector_of(scale: k8s.V1Scale) -> str:
    """The pods' label selector, in query form, as the scale subresource reports it."""
    return (scale.status.selector or "") if scale.status is not None else ""


def _status_of(exc: ApiException) -> tuple[int, str, str]:
    """Status code, reason and the API server's own message (from its Status body)."""
    status = int(exc.status or 0)
    reason = str(exc.reason or "")
    message = ""
    if exc.body:
        try:
            body = json.loads(exc.body)
        except (TypeError, ValueError):
            body = None
        if isinstance(body, dict):
            reason = str(body.get("reason") or reason)
            message = str(body.get("message") or "")
    return status, reason, message


def _kubeconfig() -> str:
    """KUBECONFIG as it is now (the client reads it once, at import), else the usual file."""
    return os.environ.get("KUBECONFIG") or "~/.kube/config"


def _default_namespace(in_cluster: bool, namespace_file: Path) -> str:
    """The pod's own namespace in a cluster; the kubeconfig context's outside one."""
    try:
        namespace = namespace_file.read_text().strip()
    except OSError:
        namespace = ""
    if namespace:
        return namespace
    if not in_cluster:
        try:
            _, context = k8s_config.list_kube_config_contexts(_kubeconfig())
        except (k8s_config.ConfigException, OSError):
            context = None
        namespace = ((context or {}).get("context") or {}).get("namespace") or ""
    return namespace or "default"
