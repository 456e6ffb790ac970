"""The Helm chart (helm/kiosk), rendered by Helm's own template engine and checked.

Rendering uses helm-python-sdk (PyPI), which binds Helm v4's Go SDK through a shared library:
the real chart, the real template engine and values.schema.json, offline, no helm binary.
Every rendered manifest is validated against the Kubernetes 1.30 schemas (kubernetes-validate,
strict: unknown fields fail). The Prometheus Operator kinds (PrometheusRule, ServiceMonitor,
PodMonitor) are CRDs whose schemas are not available offline, so they skip schema validation
and get structural checks here instead.

Then the invariants that keep a cluster working, for several value sets (the presets, T4 and
V100, with and without an ingress, two job types, either scaling policy): one job-type list
drives every consumer Deployment, HPA, env var, Role entry and metric label; with the backlog
policy the autoscaler owns every replica count and no HPA scales TF Serving or consumers; TF
Serving lands on GPUs; RBAC is namespaced and exactly what the autoscaler documents; every
container has probes, requests and limits and a pinned image; consumers outlive their shutdown
grace; nothing secret is rendered.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from autoscaler.backends import kubernetes as kubernetes_backend
from autoscaler.policy import CONSUMER_TARGET, GPU_TARGET, BacklogPolicy, policy_from_settings
from autoscaler.rules import (
    ADAPTER_FILE,
    CONSUMER_METRIC_EXTERNAL,
    CONSUMER_METRIC_RULE,
    CONSUMERS_RULE,
    GPU_EXTERNAL,
    ITEMS_RULE,
    RULES_FILE,
)
from kiosk.keys import all_queues
from kiosk.redis_url import parse_sentinel_url
from kiosk.settings import AutoscalerSettings, ConsumerSettings, FrontendSettings, JanitorSettings

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "kiosk"
ADAPTER_VALUES = ROOT / "helm" / "prometheus-adapter-values.yaml"
KUBERNETES_VERSION = "1.30.0"
CRD_KINDS = frozenset({"PrometheusRule", "ServiceMonitor", "PodMonitor"})
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet"})
RELEASE = "kiosk"
NAMESPACE = "kiosk-test"
BUCKET = "test-bucket"
ACCELERATORS = {"t4": "nvidia-tesla-t4", "v100": "nvidia-tesla-v100"}
PLUGIN_TYPE = {
    "name": "invert",
    "plugin": "mylab.invert:Invert",
    "maxReplicas": 8,
    "env": {"KIOSK_TILE_SIZE": 256},
    "zip": {"maxReplicas": 1},
}

# name -> (preset files under helm/kiosk, --set style overrides). "default" has no ingress.
VALUE_SETS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "default": ((), {}),
    "1gpu-v100": (("values-1gpu.yaml", "values-v100.yaml"), {}),
    "4gpu-t4": (("values-4gpu.yaml", "values-t4.yaml"), {}),
    "t4": (("values-t4.yaml",), {}),
    "ingress-tls": (
        (),
        {
            "ingress": {
                "enabled": True,
                "className": "gce",
                "host": "kiosk.example.org",
                "tls": {"enabled": True, "secretName": "kiosk-tls"},
            }
        },
    ),
    "two-job-types": ((), {"jobTypes": [{"name": "segmentation"}, PLUGIN_TYPE]}),
    "backlog-4gpu-two-job-types": (
        ("values-4gpu.yaml",),
        {"autoscaling": {"policy": "backlog"}, "jobTypes": [{"name": "segmentation"}, PLUGIN_TYPE]},
    ),
    "redis-sentinel": ((), {"redis": {"sentinel": {"enabled": True}}}),
    "token-no-monitoring-no-netpol": (
        (),
        {
            "frontend": {"apiToken": {"existingSecret": "kiosk-api-token"}},
            "monitoring": {"enabled": False},
            "networkPolicy": {"enabled": False},
            "workloadIdentity": {"gcpServiceAccount": "kiosk@proj.iam.gserviceaccount.com"},
        },
    ),
}
SETS = sorted(VALUE_SETS)
# repository[:tag][@digest]
IMAGE = re.compile(
    r"^(?P<repo>[^@]+?)(?::(?P<tag>[\w][\w.-]*))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


# ------------------------------------------------------------------------------------------
# Rendering


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of -f files: maps merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class Rendered:
    values: dict[str, Any]  # the chart's defaults merged with the set's values
    manifests: list[dict[str, Any]]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests if m["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [m for m in self.of_kind(kind) if m["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
        return found[0]

    def workloads(self) -> list[dict[str, Any]]:
        return [m for m in self.manifests if m["kind"] in WORKLOAD_KINDS]

    def containers(self) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
        """(workload name, pod spec, container) for every container, init containers too."""
        for w in self.workloads():
            spec = w["spec"]["template"]["spec"]
            for c in [*spec.get("initContainers", []), *spec["containers"]]:
                yield w["metadata"]["name"], spec, c

    def settings(self) -> dict[str, str]:
        return self.get("ConfigMap", f"{RELEASE}-settings")["data"]

    @property
    def hpas(self) -> bool:
        """Whether HPAs scale TF Serving and the consumers (the paper policy)."""
        return self.values["autoscaling"]["policy"] == "paper"


@functools.cache
def _chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART)


def render_values(values: dict[str, Any]) -> dict[str, str]:
    """The chart rendered by Helm (install, not upgrade) for the given values."""
    return _chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def values_for(name: str, **extra: Any) -> dict[str, Any]:
    files, overrides = VALUE_SETS[name]
    values: dict[str, Any] = {"bucket": BUCKET}
    for file in files:
        values = merge(values, yaml.safe_load((CHART / file).read_text()))
    return merge(merge(values, overrides), extra)


def render(values: dict[str, Any]) -> Rendered:
    out = render_values(values)
    notes = ""
    manifests: list[dict[str, Any]] = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        manifests += [doc for doc in yaml.safe_load_all(text) if doc]
    return Rendered(_chart().merge_values(values), manifests, notes)


@functools.cache
def rendered(name: str) -> Rendered:
    return render(values_for(name))


@pytest.fixture(params=SETS)
def chart(request: pytest.FixtureRequest) -> Rendered:
    return rendered(request.param)


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity as a number (only the forms this chart writes)."""
    text = str(value)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels and In-expressions) selects these labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", expr
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def pod_labels(chart: Rendered) -> dict[str, dict[str, str]]:
    return {
        w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"]
        for w in chart.workloads()
    }


def documented_role_rules() -> list[dict[str, Any]]:
    """The Role rules autoscaler/backends/kubernetes.py documents (its module docstring)."""
    doc = kubernetes_backend.__doc__ or ""
    block = doc.split("needs exactly these rules::", 1)[1].split("\n\n", 2)[1]
    return yaml.safe_load(textwrap.dedent(block))["rules"]


# ------------------------------------------------------------------------------------------
# One source for the rules


def test_chart_ships_byte_identical_copies_of_the_rule_files() -> None:
    """Helm reads only files inside the chart: files/ holds copies, which must not drift."""
    for source in (RULES_FILE, ADAPTER_FILE):
        copy = CHART / "files" / source.name
        assert copy.read_bytes() == source.read_bytes(), (
            f"{copy.relative_to(ROOT)} differs from {source.relative_to(ROOT)}: "
            f"cp {source.relative_to(ROOT)} {copy.relative_to(ROOT)}"
        )


def test_prometheus_adapter_values_carry_the_adapter_rules() -> None:
    values = yaml.safe_load(ADAPTER_VALUES.read_text())
    adapter = yaml.safe_load(ADAPTER_FILE.read_text())
    assert values["rules"]["external"] == adapter["externalRules"]
    names = {rule["name"]["as"] for rule in values["rules"]["external"]}
    assert names == {CONSUMER_METRIC_EXTERNAL, GPU_EXTERNAL}


# ------------------------------------------------------------------------------------------
# Kubernetes schemas, and what CRD kinds get instead


def validate_all(chart: Rendered, version: str) -> int:
    """Validate every non-CRD manifest (strict: unknown fields fail); how many were."""
    validated = 0
    for m in chart.manifests:
        if m["kind"] in CRD_KINDS:
            continue  # CRDs: no schema offline; see test_prometheus_operator_objects
        try:
            kubernetes_validate.validate(m, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{version}: {m['kind']} {m['metadata']['name']}: {where}: {exc.message}")
        validated += 1
    return validated


def test_every_manifest_validates_against_the_kubernetes_schemas(chart: Rendered) -> None:
    assert validate_all(chart, KUBERNETES_VERSION) >= 30


def test_manifests_use_no_api_removed_since() -> None:
    """The newest schemas kubernetes-validate ships: nothing the chart uses has gone away."""
    newest = kubernetes_validate.latest_version()
    minor = [tuple(int(x) for x in v.split(".")[:2]) for v in (newest, KUBERNETES_VERSION)]
    assert minor[0] >= minor[1]
    for name in ("default", "ingress-tls", "token-no-monitoring-no-netpol"):
        validate_all(rendered(name), newest)


def test_prometheus_operator_objects(chart: Rendered) -> None:
    """The recording rules are the rule file itself; monitors select real ports."""
    crds = [m for m in chart.manifests if m["kind"] in CRD_KINDS]
    if not chart.values["monitoring"]["enabled"]:
        assert crds == []
        return
    assert {m["apiVersion"] for m in crds} == {"monitoring.coreos.com/v1"}
    for m in crds:
        assert set(m) == {"apiVersion", "kind", "metadata", "spec"}
        assert m["metadata"]["labels"]["release"] == chart.values["monitoring"]["labels"]["release"]
    (rule,) = chart.of_kind("PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES_FILE.read_text())

    services = {s["metadata"]["name"]: s for s in chart.of_kind("Service")}
    monitors = chart.of_kind("ServiceMonitor")
    assert len(monitors) == 2
    for monitor in monitors:
        (service,) = [
            s
            for s in services.values()
            if matches(monitor["spec"]["selector"], s["metadata"]["labels"])
            and s["spec"].get("clusterIP") != "None"
        ]
        ports = {p["name"] for p in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in ports
            assert endpoint["path"].startswith("/")
    tf = chart.values["modelServer"]["name"]
    (tf_monitor,) = [m for m in monitors if m["metadata"]["name"].endswith("-model-server")]
    config = chart.get("ConfigMap", f"{tf}-config")["data"]["monitoring.config"]
    assert f'path: "{tf_monitor["spec"]["endpoints"][0]["path"]}"' in config

    (pod_monitor,) = chart.of_kind("PodMonitor")
    consumers = [
        w
        for w in chart.workloads()
        if matches(pod_monitor["spec"]["selector"], pod_labels(chart)[w["metadata"]["name"]])
    ]
    assert len(consumers) == 2 * len(chart.values["jobTypes"])
    for w in consumers:
        ports = {p["name"] for c in w["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert {e["port"] for e in pod_monitor["spec"]["podMetricsEndpoints"]} <= ports


# ------------------------------------------------------------------------------------------
# One queue list drives everything


def test_one_job_type_list_drives_every_queue(chart: Rendered) -> None:
    names = [jt["name"] for jt in chart.values["jobTypes"]]
    settings = chart.settings()
    assert settings["KIOSK_QUEUES"].split(",") == names
    queues = all_queues(names)
    prefix = settings["KIOSK_CONSUMER_DEPLOYMENT_PREFIX"]
    consumers = {
        w["metadata"]["name"]: w
        for w in chart.of_kind("Deployment")
        if w["metadata"]["labels"]["app.kubernetes.io/component"] == "consumer"
    }
    assert set(consumers) == {prefix + q for q in queues}
    hpas = {h["metadata"]["name"]: h for h in chart.of_kind("HorizontalPodAutoscaler")}
    pdbs = {p["metadata"]["name"]: p for p in chart.of_kind("PodDisruptionBudget")}
    adapter = yaml.safe_load(ADAPTER_FILE.read_text())["externalRules"]
    for queue in queues:
        name = prefix + queue
        pod = consumers[name]["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert container["command"] == ["python", "-m", "consumers", queue]
        assert {"configMapRef": {"name": f"{RELEASE}-settings"}} in container["envFrom"]
        assert matches(pdbs[name]["spec"]["selector"], pod["metadata"]["labels"])
        if not chart.hpas:
            assert name not in hpas  # the autoscaler sets every count itself
            continue
        hpa = hpas[name]["spec"]
        assert hpa["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert hpa["minReplicas"] == 1  # 0<->1 is the autoscaler's; HPAs idle at 0
        (metric,) = hpa["metrics"]
        assert metric["type"] == "External"
        assert metric["external"]["metric"] == {
            "name": CONSUMER_METRIC_EXTERNAL,
            "selector": {"matchLabels": {"queue": queue}},
        }
        assert metric["external"]["target"]["type"] == "Value"
        assert quantity(metric["external"]["target"]["value"]) == pytest.approx(CONSUMER_TARGET)
    # Caps per queue come from the job type's entry (or consumers.defaults): the HPAs' and,
    # for the backlog policy, the autoscaler's (KIOSK_MAX_CONSUMERS_BY_QUEUE).
    caps = dict(item.split("=") for item in settings["KIOSK_MAX_CONSUMERS_BY_QUEUE"].split(","))
    assert set(caps) == set(queues)
    for jt in chart.values["jobTypes"]:
        expected = jt.get("maxReplicas", chart.values["consumers"]["defaults"]["maxReplicas"])
        zip_cap = jt.get("zip", {}).get(
            "maxReplicas", chart.values["consumers"]["defaults"]["zip"]["maxReplicas"]
        )
        for queue, cap in ((jt["name"], expected), (f"{jt['name']}-zip", zip_cap)):
            assert caps[queue] == str(cap)
            if chart.hpas:
                assert hpas[prefix + queue]["spec"]["maxReplicas"] == cap
        for queue in (jt["name"], f"{jt['name']}-zip"):
            (container,) = consumers[prefix + queue]["spec"]["template"]["spec"]["containers"]
            env = {e["name"]: e["value"] for e in container.get("env", [])}
            assert env == {k: str(v) for k, v in jt.get("env", {}).items()}
        if "plugin" in jt:
            assert f"{jt['name']}={jt['plugin']}" in settings["KIOSK_JOB_TYPE_PLUGINS"].split(",")

    # The rules are label-generic: one series per queue label, whatever the list holds.
    rules = {
        r["record"]: r["expr"] for r in yaml.safe_load(RULES_FILE.read_text())["groups"][0]["rules"]
    }
    assert "by (queue)" in rules[ITEMS_RULE]
    assert "by (queue)" in rules[CONSUMERS_RULE]
    assert ITEMS_RULE in rules[CONSUMER_METRIC_RULE]
    (consumer_rule,) = [r for r in adapter if r["name"]["as"] == CONSUMER_METRIC_EXTERNAL]
    assert 'queue!=""' in consumer_rule["seriesQuery"]
    assert "<<.LabelMatchers>>" in consumer_rule["metricsQuery"]


def test_settings_configmap_is_valid_for_every_service(
    chart: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The services' own settings classes accept the ConfigMap, and what it names exists."""
    for key in list(os.environ):
        if key.startswith("KIOSK_"):
            monkeypatch.delenv(key)
    data = chart.settings()
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    FrontendSettings()
    JanitorSettings()
    consumer = ConsumerSettings()
    autoscaler = AutoscalerSettings()

    names = [jt["name"] for jt in chart.values["jobTypes"]]
    assert list(autoscaler.queues) == names
    assert list(consumer.queues) == names
    # The exporter labels its series with these queues (autoscaler/exporter.py).
    assert all_queues(autoscaler.queues) == all_queues(names)
    assert autoscaler.autoscaler_backend == "kubernetes"
    assert autoscaler.scaling_policy == chart.values["autoscaling"]["policy"]
    assert set(autoscaler.max_consumers_by_queue) == set(all_queues(names))
    assert autoscaler.max_model_servers == chart.values["modelServer"]["hpa"]["maxReplicas"]
    assert autoscaler.consumer_target == pytest.approx(CONSUMER_TARGET)
    assert autoscaler.gpu_target == chart.values["modelServer"]["hpa"]["targetGpuUtilization"]
    assert consumer.bucket == f"gs://{BUCKET}"

    deployments = {d["metadata"]["name"] for d in chart.of_kind("Deployment")}
    assert autoscaler.model_server_deployment in deployments
    services = {s["metadata"]["name"]: s for s in chart.of_kind("Service")}
    model_server = re.fullmatch(
        rf"dns:///([^.]+)\.{NAMESPACE}\.svc\.[a-z.]+:(\d+)", consumer.model_server
    )
    assert model_server, consumer.model_server
    assert int(model_server[2]) in {p["port"] for p in services[model_server[1]]["spec"]["ports"]}
    for host, port in redis_addresses(chart, consumer.redis_url):
        assert port in {p["port"] for p in services[host]["spec"]["ports"]}, (host, port)

    ports = {
        (name, p["containerPort"]) for name, _, c in chart.containers() for p in c.get("ports", [])
    }
    assert (f"{RELEASE}-autoscaler", autoscaler.exporter_port) in ports
    assert (f"consumer-{names[0]}", consumer.metrics_port) in ports
    assert (f"{RELEASE}-frontend", FrontendSettings().port) in ports


def redis_addresses(chart: Rendered, url: str) -> list[tuple[str, int]]:
    """(Service, port) of each address in KIOSK_REDIS_URL: the Redis Service, or the headless
    Service under which each Sentinel's pod is named."""
    if not chart.values["redis"]["sentinel"]["enabled"]:
        found = re.fullmatch(r"redis://([^:/]+):(\d+)/0", url)
        assert found, url
        return [(found[1], int(found[2]))]
    parsed = parse_sentinel_url(url)
    assert parsed.master == chart.values["redis"]["sentinel"]["masterName"]
    assert parsed.db == 0
    addresses = []
    for index, (host, port) in enumerate(parsed.sentinels):
        pod = re.fullmatch(rf"{RELEASE}-redis-{index}\.([^.]+)\.{NAMESPACE}\.svc\.[a-z.]+", host)
        assert pod, host
        addresses.append((pod[1], port))
    return addresses


def test_every_kiosk_container_reads_the_one_settings_configmap(chart: Rendered) -> None:
    kiosk_images = {chart.values["images"][k]["repository"] for k in ("consumer", "autoscaler")}
    count = 0
    for name, _, c in chart.containers():
        if IMAGE.match(c["image"])["repo"] in kiosk_images:  # type: ignore[index]
            assert c["envFrom"] == [{"configMapRef": {"name": f"{RELEASE}-settings"}}], name
            assert not any(e["name"] == "KIOSK_QUEUES" for e in c.get("env", [])), name
            count += 1
    assert count == 3 + 2 * len(chart.values["jobTypes"])  # frontend, autoscaler, janitor


# ------------------------------------------------------------------------------------------
# TF Serving


def test_tf_serving_runs_on_the_gpu_pool_from_zero(chart: Rendered) -> None:
    m = chart.values["modelServer"]
    deployment = chart.get("Deployment", m["name"])
    assert deployment["spec"]["replicas"] == 0  # the autoscaler brings it up with the work
    pod = deployment["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    accelerator = ACCELERATORS[chart.values["gpu"]["type"]]
    assert pod["nodeSelector"]["cloud.google.com/gke-accelerator"] == accelerator
    if chart.values["nodePools"]["gpu"]:
        assert (
            pod["nodeSelector"]["cloud.google.com/gke-nodepool"] == chart.values["nodePools"]["gpu"]
        )
    (container,) = pod["containers"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert re.fullmatch(r"tensorflow/serving:2\.\d+\.\d+-gpu", container["image"])
    assert container["command"] == ["tensorflow_model_server"]
    args = container["args"]
    for arg in (
        f"--port={m['grpcPort']}",
        f"--rest_api_port={m['httpPort']}",
        "--model_config_file=/config/models.config",
        "--enable_batching",
        "--batching_parameters_file=/config/batching.config",
        "--monitoring_config_file=/config/monitoring.config",
    ):
        assert arg in args
    assert {p["containerPort"] for p in container["ports"]} == {m["grpcPort"], m["httpPort"]}

    config = chart.get("ConfigMap", f"{m['name']}-config")["data"]
    assert set(config) == {"models.config", "batching.config", "monitoring.config"}
    for model in m["models"]:
        assert f'base_path: "gs://{BUCKET}/models/{model["name"]}"' in config["models.config"]
    assert (
        f"max_batch_size {{ value: {m['batching']['maxBatchSize']} }}" in config["batching.config"]
    )
    assert "enable: true" in config["monitoring.config"]
    assert '"/monitoring/prometheus/metrics"' in config["monitoring.config"]

    if not chart.hpas:
        assert m["name"] not in {
            h["metadata"]["name"] for h in chart.of_kind("HorizontalPodAutoscaler")
        }
        return
    hpa = chart.get("HorizontalPodAutoscaler", m["name"])["spec"]
    assert hpa["scaleTargetRef"]["name"] == m["name"]
    assert hpa["minReplicas"] == 1
    assert hpa["maxReplicas"] == m["hpa"]["maxReplicas"]
    (metric,) = hpa["metrics"]
    assert metric["external"]["metric"] == {"name": GPU_EXTERNAL}
    assert metric["external"]["target"]["type"] == "Value"
    assert quantity(metric["external"]["target"]["value"]) == pytest.approx(GPU_TARGET / 100)


def test_consumers_spread_calls_over_every_tf_serving_pod(chart: Rendered) -> None:
    """A ClusterIP Service balances connections, not calls: each consumer's one HTTP/2
    connection would stick to one pod. Consumers resolve a headless Service instead
    (round_robin over its pods), and TF Serving ends connections so new pods are found."""
    m = chart.values["modelServer"]
    headless = chart.get("Service", f"{m['name']}-grpc")["spec"]
    assert headless["clusterIP"] == "None"
    assert [p["port"] for p in headless["ports"]] == [m["grpcPort"]]
    tf_pods = pod_labels(chart)[m["name"]]
    assert matches({"matchLabels": headless["selector"]}, tf_pods)
    settings = chart.get("ConfigMap", f"{RELEASE}-settings")["data"]
    fqdn = f"{m['name']}-grpc.{NAMESPACE}.svc.{chart.values['clusterDomain']}"
    assert settings["KIOSK_MODEL_SERVER"] == f"dns:///{fqdn}:{m['grpcPort']}"
    args = chart.get("Deployment", m["name"])["spec"]["template"]["spec"]["containers"][0]["args"]
    (grpc_args,) = [a for a in args if a.startswith("--grpc_channel_arguments=")]
    assert grpc_args.split("=", 1)[1].split(",") == [
        f"grpc.max_connection_age_ms={m['maxConnectionAgeSeconds'] * 1000}",
        f"grpc.max_connection_age_grace_ms={m['maxConnectionAgeGraceSeconds'] * 1000}",
    ]
    timeout = float(chart.values["settings"].get("KIOSK_PREDICT_TIMEOUT", 60))
    assert m["maxConnectionAgeGraceSeconds"] >= timeout, "a Predict in flight may finish"


def test_tf_serving_model_config_parses_as_the_official_proto() -> None:
    """TF Serving reads models.config as a text ModelServerConfig: parse it with the official
    proto (tensorflow-serving-api, in a process of its own as tests/test_serving_wire.py does)."""
    from tests.test_serving_wire import official_api_site

    models = [{"name": "NuclearSegmentation"}, {"name": "Other.v2"}]
    r = render(values_for("default", modelServer={"models": models}))
    text = r.get("ConfigMap", "tf-serving-config")["data"]["models.config"]
    script = (
        "import sys\n"
        "from google.protobuf import json_format, text_format\n"
        "from tensorflow_serving.config import model_server_config_pb2 as m\n"
        "config = text_format.Parse(sys.stdin.read(), m.ModelServerConfig())\n"
        "print(json_format.MessageToJson(config))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=text,
        env={**os.environ, "PYTHONPATH": str(official_api_site())},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    parsed = json.loads(done.stdout)["modelConfigList"]["config"]
    assert [(c["name"], c["basePath"], c["modelPlatform"]) for c in parsed] == [
        (m["name"], f"gs://{BUCKET}/models/{m['name']}", "tensorflow") for m in models
    ]


def test_tracking_runs_by_default_with_room_for_movies_and_no_gpu() -> None:
    """The default list is segmentation, tracking and mesmer (the DeepCell Kiosk's job types):
    tracking and its zip queue get consumers like any queue, with the entry's larger
    resources and caps from consumers.defaults (so the presets size them too)."""
    for name in ("default", "1gpu-v100", "4gpu-t4"):
        chart = rendered(name)
        assert chart.settings()["KIOSK_QUEUES"] == "segmentation,tracking,mesmer"
        assert "tracking" not in chart.settings().get("KIOSK_JOB_TYPE_PLUGINS", "")  # built in
        defaults = chart.values["consumers"]["defaults"]
        caps = dict(
            item.split("=") for item in chart.settings()["KIOSK_MAX_CONSUMERS_BY_QUEUE"].split(",")
        )
        assert caps["tracking"] == str(defaults["maxReplicas"])
        assert caps["tracking-zip"] == str(defaults["zip"]["maxReplicas"])
        image = chart.get("Deployment", "consumer-segmentation")["spec"]["template"]["spec"]
        for queue in ("tracking", "tracking-zip"):
            pod = chart.get("Deployment", f"consumer-{queue}")["spec"]["template"]["spec"]
            (container,) = pod["containers"]
            assert container["command"] == ["python", "-m", "consumers", queue]
            assert container["image"] == image["containers"][0]["image"]
            resources = container["resources"]
            assert "nvidia.com/gpu" not in resources["limits"]
            assert quantity_bytes(resources["requests"]["memory"]) > quantity_bytes(
                defaults["resources"]["requests"]["memory"]
            )
            assert quantity_bytes(resources["limits"]["ephemeral-storage"]) > quantity_bytes(
                defaults["resources"]["limits"]["ephemeral-storage"]
            )
    mesmer = chart.get("Deployment", "consumer-mesmer")["spec"]["template"]["spec"]
    assert mesmer["containers"][0]["command"] == ["python", "-m", "consumers", "mesmer"]
    served = [m["name"] for m in chart.values["modelServer"]["models"]]
    assert {"NuclearSegmentation", "WholeCellSegmentation", "CytoplasmSegmentation"} <= set(served)
    only_segmentation = render(values_for("default", jobTypes=[{"name": "segmentation"}]))
    assert only_segmentation.settings()["KIOSK_QUEUES"] == "segmentation"
    assert not [
        d for d in only_segmentation.of_kind("Deployment") if "tracking" in d["metadata"]["name"]
    ]


def quantity_bytes(value: str) -> float:
    """A memory quantity (Mi, Gi) in bytes."""
    units = {"Mi": 2**20, "Gi": 2**30}
    return float(value[:-2]) * units[value[-2:]]


def test_presets_set_their_gpu_type_and_caps() -> None:
    assert (
        rendered("4gpu-t4").get("HorizontalPodAutoscaler", "tf-serving")["spec"]["maxReplicas"] == 4
    )
    assert (
        rendered("1gpu-v100").get("HorizontalPodAutoscaler", "tf-serving")["spec"]["maxReplicas"]
        == 1
    )
    selectors = {
        name: rendered(name).get("Deployment", "tf-serving")["spec"]["template"]["spec"][
            "nodeSelector"
        ]
        for name in ("t4", "1gpu-v100", "default")
    }
    assert selectors["t4"]["cloud.google.com/gke-accelerator"] == "nvidia-tesla-t4"
    assert selectors["1gpu-v100"]["cloud.google.com/gke-accelerator"] == "nvidia-tesla-v100"


def test_replicas_of_scaled_deployments_come_from_a_lookup_not_the_values() -> None:
    """Offline the lookup finds nothing (an install: 0); on a live upgrade it keeps the count
    the autoscaler and HPAs set, so `helm upgrade` never resets a running fleet."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert 'lookup "apps/v1" "Deployment"' in helpers
    for template in ("consumers.yaml", "tf-serving.yaml"):
        text = (CHART / "templates" / template).read_text()
        assert 'replicas: {{ include "kiosk.ownedReplicas"' in text


def test_the_backlog_policy_drops_the_scaling_hpas_and_keeps_the_role(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """autoscaling.policy=backlog: the same objects but the HPAs of TF Serving and the
    consumers (the frontend's stays), KIOSK_SCALING_POLICY=backlog for the autoscaler, which
    then runs the whole BacklogPolicy, and the same Role: patching the scale subresource to any
    count needs nothing that 0<->1 did not."""
    paper = rendered("two-job-types")
    backlog = render(values_for("two-job-types", autoscaling={"policy": "backlog"}))

    def objects(r: Rendered) -> set[tuple[str, str]]:
        return {(m["kind"], m["metadata"]["name"]) for m in r.manifests}

    scaled = {"tf-serving"} | {f"consumer-{q}" for q in all_queues(["segmentation", "invert"])}
    assert objects(paper) - objects(backlog) == {("HorizontalPodAutoscaler", n) for n in scaled}
    assert objects(backlog) <= objects(paper)
    assert [h["metadata"]["name"] for h in backlog.of_kind("HorizontalPodAutoscaler")] == [
        f"{RELEASE}-frontend"
    ]
    assert paper.settings()["KIOSK_SCALING_POLICY"] == "paper"
    assert backlog.settings()["KIOSK_SCALING_POLICY"] == "backlog"
    assert backlog.of_kind("Role") == paper.of_kind("Role")
    assert backlog.of_kind("PrometheusRule") == paper.of_kind("PrometheusRule")

    for key in list(os.environ):
        if key.startswith("KIOSK_"):
            monkeypatch.delenv(key)
    for key, value in backlog.settings().items():
        monkeypatch.setenv(key, value)
    policy = policy_from_settings(AutoscalerSettings())
    assert isinstance(policy, BacklogPolicy)
    assert policy.config.max_consumers_by_queue == {
        "segmentation": 50,
        "segmentation-zip": 4,
        "invert": 8,
        "invert-zip": 1,
    }


# ------------------------------------------------------------------------------------------
# RBAC and service accounts


def test_rbac_is_namespaced_and_exactly_what_the_autoscaler_documents(chart: Rendered) -> None:
    kinds = {m["kind"] for m in chart.manifests}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
    (role,) = chart.of_kind("Role")
    stripped = [{k: v for k, v in rule.items() if k != "resourceNames"} for rule in role["rules"]]
    assert stripped == documented_role_rules()
    settings = chart.settings()
    scaled = {settings["KIOSK_MODEL_SERVER_DEPLOYMENT"]} | {
        settings["KIOSK_CONSUMER_DEPLOYMENT_PREFIX"] + q
        for q in all_queues(settings["KIOSK_QUEUES"].split(","))
    }
    deployments = {d["metadata"]["name"] for d in chart.of_kind("Deployment")}
    assert scaled <= deployments
    for rule in role["rules"]:
        if rule["apiGroups"] == ["apps"]:
            assert set(rule["resourceNames"]) == scaled
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]

    (binding,) = chart.of_kind("RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    (subject,) = binding["subjects"]
    assert subject == {
        "kind": "ServiceAccount",
        "name": f"{RELEASE}-autoscaler",
        "namespace": NAMESPACE,
    }
    for m in chart.manifests:
        assert "namespace" not in m["metadata"] or m["metadata"]["namespace"] == NAMESPACE

    accounts = {a["metadata"]["name"]: a for a in chart.of_kind("ServiceAccount")}
    with_token = []
    for w in chart.workloads():
        spec = w["spec"]["template"]["spec"]
        assert spec["serviceAccountName"] in accounts, w["metadata"]["name"]
        if spec.get("automountServiceAccountToken", True):
            with_token.append(spec["serviceAccountName"])
    assert with_token == [subject["name"]]  # only the autoscaler talks to the API


def test_workload_identity_only_where_gcs_is_read() -> None:
    def annotated(r: Rendered) -> dict[str, str]:
        return {
            a["metadata"]["name"]: a["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
            for a in r.of_kind("ServiceAccount")
            if "iam.gke.io/gcp-service-account" in a["metadata"].get("annotations", {})
        }

    assert annotated(rendered("default")) == {}
    gsa = "kiosk@proj.iam.gserviceaccount.com"
    assert annotated(rendered("token-no-monitoring-no-netpol")) == {
        f"{RELEASE}-frontend": gsa,
        f"{RELEASE}-consumer": gsa,
        f"{RELEASE}-model-server": gsa,
        f"{RELEASE}-janitor": gsa,  # it counts what users store, for the byte quotas
    }
    reader = "reader@proj.iam.gserviceaccount.com"
    split = render(
        values_for(
            "default",
            workloadIdentity={"gcpServiceAccount": gsa, "modelServerGcpServiceAccount": reader},
        )
    )
    assert annotated(split)[f"{RELEASE}-model-server"] == reader


# ------------------------------------------------------------------------------------------
# Containers: probes, resources, images, security


def test_every_container_has_probes_requests_and_limits(chart: Rendered) -> None:
    for name, _, c in chart.containers():
        where = f"{name}/{c['name']}"
        named = {p["name"] for p in c.get("ports", [])}
        numbers = {p["containerPort"] for p in c.get("ports", [])}
        for probe_kind in ("livenessProbe", "readinessProbe"):
            probe = c.get(probe_kind)
            assert probe, f"{where} has no {probe_kind}"
            action = probe.get("httpGet") or probe.get("tcpSocket")
            if action:
                assert action["port"] in named | numbers, f"{where}: {probe_kind} port"
            else:
                assert probe["exec"]["command"], where
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][part]), f"{where} {part}"
        for resource, limit in c["resources"]["limits"].items():
            request = c["resources"]["requests"].get(resource)
            if request is not None and resource in ("cpu",):
                assert quantity(request) <= quantity(limit), where


def test_every_image_is_pinned(chart: Rendered) -> None:
    for name, _, c in chart.containers():
        found = IMAGE.match(c["image"])
        assert found, c["image"]
        # A full version (x.y.z, with a suffix like -gpu), never a moving tag like 7 or latest.
        pinned = found["tag"] and re.match(r"\d+\.\d+\.\d+", found["tag"])
        assert found["digest"] or pinned, f"{name}: {c['image']}"


def test_images_take_a_digest_and_refuse_latest() -> None:
    digest = "sha256:" + "ab" * 32
    r = render(values_for("default", images={"modelServer": {"digest": digest}}))
    (container,) = r.get("Deployment", "tf-serving")["spec"]["template"]["spec"]["containers"]
    assert container["image"].endswith("@" + digest)
    assert r.get("Deployment", f"{RELEASE}-janitor")["spec"]["template"]["spec"]["containers"][0][
        "image"
    ] == (f"kiosk/autoscaler:{_chart().metadata['appVersion']}")
    with pytest.raises(helm_python.HelmError, match="pin a tag other than 'latest'"):
        render_values(values_for("default", images={"redis": {"tag": "latest"}}))


def test_pods_run_unprivileged(chart: Rendered) -> None:
    for w in chart.workloads():
        spec = w["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, w["metadata"]["name"]
        assert spec["securityContext"]["runAsUser"] > 0
    for name, _, c in chart.containers():
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"]["drop"] == ["ALL"], name
        assert sc["readOnlyRootFilesystem"] is True, name
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{name}: a read-only root needs a writable /tmp"


# ------------------------------------------------------------------------------------------
# Lifecycles and disruptions


def test_consumers_outlive_their_shutdown_grace(chart: Rendered) -> None:
    grace = float(chart.settings()["KIOSK_SHUTDOWN_GRACE"])
    consumers = [w for w in chart.workloads() if w["metadata"]["name"].startswith("consumer-")]
    assert consumers
    for w in consumers:
        period = w["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert period > grace, w["metadata"]["name"]


def test_one_value_drives_the_shutdown_grace_and_the_termination_period() -> None:
    r = render(values_for("default", consumers={"shutdownGraceSeconds": 45.5}))
    assert r.settings()["KIOSK_SHUTDOWN_GRACE"] == "45.5"
    periods = {
        w["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        for w in r.workloads()
        if w["metadata"]["name"].startswith("consumer-")
    }
    assert periods == {46 + 10}


def test_references_resolve(chart: Rendered) -> None:
    """Services, HPAs and PDBs point at workloads that exist; every pod's ConfigMaps too."""
    labels = pod_labels(chart)
    for w in chart.workloads():
        assert matches(w["spec"]["selector"], labels[w["metadata"]["name"]])
    for service in chart.of_kind("Service"):
        selected = [
            n
            for n, lab in labels.items()
            if matches({"matchLabels": service["spec"]["selector"]}, lab)
        ]
        assert len(selected) == 1, service["metadata"]["name"]
        (workload,) = [w for w in chart.workloads() if w["metadata"]["name"] == selected[0]]
        ports = {
            p["name"]
            for c in workload["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports
    deployments = {d["metadata"]["name"] for d in chart.of_kind("Deployment")}
    for hpa in chart.of_kind("HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
        behavior = hpa["spec"]["behavior"]
        window = chart.values["autoscaling"]["scaleDownWindowSeconds"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] == window
        assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    for pdb in chart.of_kind("PodDisruptionBudget"):
        selected = [n for n, lab in labels.items() if matches(pdb["spec"]["selector"], lab)]
        assert len(selected) == 1, pdb["metadata"]["name"]
    covered = {
        n
        for pdb in chart.of_kind("PodDisruptionBudget")
        for n, lab in labels.items()
        if matches(pdb["spec"]["selector"], lab)
    }
    assert covered == set(labels)  # every workload has one
    configmaps = {c["metadata"]["name"] for c in chart.of_kind("ConfigMap")}
    for w in chart.workloads():
        spec = w["spec"]["template"]["spec"]
        refs = [v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v]
        refs += [
            e["configMapRef"]["name"] for c in spec["containers"] for e in c.get("envFrom", [])
        ]
        assert set(refs) <= configmaps


def test_redis_keeps_an_append_only_file_on_a_volume() -> None:
    r = rendered("default")
    (redis,) = r.of_kind("StatefulSet")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--dir") + 1] == "/data"
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert container["readinessProbe"]["exec"]["command"][0] == "redis-cli"
    assert re.fullmatch(r"redis:7\.\d+\.\d+", container["image"])


def test_redis_with_sentinel_runs_three_nodes_that_the_services_find() -> None:
    single, ha = rendered("default"), rendered("redis-sentinel")
    (redis,) = ha.of_kind("StatefulSet")
    (before,) = single.of_kind("StatefulSet")
    # The same StatefulSet with more pods: turning Sentinel on updates a release in place.
    assert redis["metadata"]["name"] == before["metadata"]["name"] == f"{RELEASE}-redis"
    for field in ("serviceName", "selector", "volumeClaimTemplates"):
        assert redis["spec"][field] == before["spec"][field], field
    assert redis["spec"]["replicas"] == 3
    pod = redis["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert set(containers) == {"redis", "sentinel"}
    sentinel = ha.values["redis"]["sentinel"]
    ports = {"redis": ha.values["redis"]["port"], "sentinel": sentinel["port"]}
    for name, container in containers.items():
        assert container["command"] == ["sh", "/scripts/redis-node.sh", name]
        assert container["ports"] == [{"name": name, "containerPort": ports[name]}]
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["exec"]["command"] == [
                "redis-cli",
                "-p",
                str(ports[name]),
                "ping",
            ]
        env = {e["name"]: e.get("value") for e in container["env"]}
        nodes = env["NODES"].split(" ")
        assert nodes == [
            f"{RELEASE}-redis-{i}.{RELEASE}-redis-headless.{NAMESPACE}.svc.cluster.local"
            for i in range(3)
        ]
        assert env["SELF"] == nodes[0].replace(f"{RELEASE}-redis-0.", "$(POD_NAME).")
        assert env["QUORUM"] == "2"
        assert env["MASTER_NAME"] == sentinel["masterName"]
        assert (env["REDIS_PORT"], env["SENTINEL_PORT"]) == (
            str(ports["redis"]),
            str(ports["sentinel"]),
        )
    assert containers["redis"]["lifecycle"]["preStop"]["exec"]["command"] == [
        "sh",
        "/scripts/redis-node.sh",
        "handover",
    ]
    assert {"name": "data", "mountPath": "/data"} in containers["redis"]["volumeMounts"]
    script = ha.get("ConfigMap", f"{RELEASE}-redis-scripts")["data"]["redis-node.sh"]
    assert script == (CHART / "files" / "redis-node.sh").read_text()

    # The services ask the three Sentinels; no Service balances over master and replicas.
    url = ha.settings()["KIOSK_REDIS_URL"]
    assert [port for _, port in parse_sentinel_url(url).sentinels] == [sentinel["port"]] * 3
    assert FrontendSettings(redis_url=url).replicas_to_wait_for() == 1
    services = {s["metadata"]["name"]: s["spec"] for s in ha.of_kind("Service")}
    assert f"{RELEASE}-redis" not in services
    headless = services[f"{RELEASE}-redis-headless"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    assert {p["name"] for p in headless["ports"]} == {"redis", "sentinel"}
    (pdb,) = [
        p
        for p in ha.of_kind("PodDisruptionBudget")
        if p["metadata"]["name"] == redis["metadata"]["name"]
    ]
    assert pdb["spec"] == {
        "maxUnavailable": 1,  # two of three keep the Sentinels' quorum and a replica
        "selector": redis["spec"]["selector"],
    }


def test_the_redis_node_script_passes_shellcheck_as_posix_sh() -> None:
    """The redis image runs it with sh (dash), so it is checked as POSIX sh."""
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not installed: `make test-deps` installs it")
    script = CHART / "files" / "redis-node.sh"
    done = subprocess.run(
        [shellcheck, "--shell=sh", str(script)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------------------------------
# Secrets, network, ingress, notes


def test_nothing_secret_is_rendered(chart: Rendered) -> None:
    assert chart.of_kind("Secret") == []
    assert "KIOSK_API_TOKEN" not in chart.settings()
    token = chart.values["frontend"]["apiToken"]["existingSecret"]
    (frontend,) = chart.get("Deployment", f"{RELEASE}-frontend")["spec"]["template"]["spec"][
        "containers"
    ]
    env = {e["name"]: e for e in frontend.get("env", [])}
    if token:
        assert env["KIOSK_API_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == token
    else:
        assert "KIOSK_API_TOKEN" not in env


def test_network_policies_deny_by_default_and_allow_what_is_needed(chart: Rendered) -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in chart.of_kind("NetworkPolicy")}
    if not chart.values["networkPolicy"]["enabled"]:
        assert policies == {}
        return
    deny = policies[f"{RELEASE}-default-deny"]
    assert deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    labels = pod_labels(chart)
    assert all(matches(deny["podSelector"], lab) for lab in labels.values())

    def allowed(target: str, port: str) -> list[dict[str, Any]]:
        """The peers allowed to reach `port` on workload `target`."""
        peers: list[dict[str, Any]] = []
        for spec in policies.values():
            if not matches(spec["podSelector"], labels[target]):
                continue
            for rule in spec.get("ingress", []):
                if any(p["port"] == port for p in rule.get("ports", [])):
                    peers += rule.get("from", [{}])
        return peers

    def workloads_of(peers: list[dict[str, Any]]) -> set[str]:
        return {
            n
            for peer in peers
            if "podSelector" in peer and "namespaceSelector" not in peer
            for n, lab in labels.items()
            if matches(peer["podSelector"], lab)
        }

    redis = f"{RELEASE}-redis"
    expected = {f"{RELEASE}-frontend", f"{RELEASE}-autoscaler", f"{RELEASE}-janitor"}
    expected |= {n for n in labels if n.startswith("consumer-")}
    if chart.values["redis"]["sentinel"]["enabled"]:
        expected.add(redis)  # replication, and the Sentinels watching each other
        assert workloads_of(allowed(redis, "sentinel")) == expected
    assert workloads_of(allowed(redis, "redis")) == expected
    assert workloads_of(allowed("tf-serving", "grpc")) == {
        n for n in labels if n.startswith("consumer-")
    }
    prometheus = chart.values["networkPolicy"]["prometheus"]["namespaceSelector"]
    for target, port in [
        ("tf-serving", "http"),
        (f"{RELEASE}-autoscaler", "metrics"),
        ("consumer-segmentation", "metrics"),
    ]:
        peers = allowed(target, port)
        assert peers and all(p.get("namespaceSelector") == prometheus for p in peers), target
    assert allowed(f"{RELEASE}-frontend", "http") == [{}]  # anyone: the load balancer


def test_ingress_with_tls_and_without() -> None:
    assert rendered("default").of_kind("Ingress") == []
    r = rendered("ingress-tls")
    (ingress,) = r.of_kind("Ingress")
    assert ingress["spec"]["tls"] == [{"secretName": "kiosk-tls", "hosts": ["kiosk.example.org"]}]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "kiosk.example.org"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{RELEASE}-frontend", "port": {"name": "http"}}
    assert r.settings()["KIOSK_PUBLIC_URL"] == "https://kiosk.example.org"
    with pytest.raises(helm_python.HelmError, match=re.escape("ingress.tls.secretName")):
        render_values(values_for("ingress-tls", ingress={"tls": {"secretName": ""}}))


def test_notes_say_how_to_reach_the_portal() -> None:
    notes = rendered("default").notes
    assert f"kubectl -n {NAMESPACE} port-forward svc/{RELEASE}-frontend 8080:80" in notes
    assert "/docs" in notes
    assert "get deployments,hpa -w" in notes
    assert "no HPAs" in rendered("backlog-4gpu-two-job-types").notes
    assert "https://kiosk.example.org/" in rendered("ingress-tls").notes
    assert "Secret kiosk-api-token" in rendered("token-no-monitoring-no-netpol").notes


# ------------------------------------------------------------------------------------------
# Values that must not render


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"bucket": ""}, "set bucket"),
        ({"jobTypes": []}, "jobTypes"),
        ({"jobTypes": [{"name": "Seg_1"}]}, "does not match pattern"),
        ({"jobTypes": [{"name": "seg-zip"}]}, "reserved"),
        ({"jobTypes": [{"name": "kiosk"}]}, "reserved"),
        ({"jobTypes": [{"name": "a"}, {"name": "a"}]}, "listed twice"),
        ({"settings": {"KIOSK_QUEUES": "x"}}, "settings.KIOSK_QUEUES is set by the chart"),
        ({"settings": {"OTHER": "x"}}, "only KIOSK_"),
        (
            {"jobTypes": [{"name": "a", "env": {"KIOSK_QUEUES": "b"}}]},
            re.escape("env.KIOSK_QUEUES"),
        ),
        ({"gpu": {"type": "k80"}}, "gpu"),
        ({"autoscaling": {"policy": "fastest"}}, "policy"),
        ({"images": {"consumer": {"digest": "sha256:short"}}}, "digest"),
        (
            {"redis": {"sentinel": {"enabled": True, "port": 6379}}},
            "redis.sentinel.port \\(6379\\) must differ from redis.port",
        ),
        ({"redis": {"sentinel": {"enabled": True, "masterName": "a b"}}}, "masterName"),
        ({"redis": {"sentinel": {"enable": True}}}, "enable"),
    ],
)
def test_bad_values_are_refused_with_a_reason(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmError, match=message):
        render_values(values_for("default", **values))


def test_helm_lint_is_clean() -> None:
    for name in SETS:
        report = helm_python.lint(CHART, values_for(name), strict=True, kube_version="v1.30.0")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert report["errors"] == [] and problems == [], (name, report)


def test_settings_changes_roll_the_pods() -> None:
    def checksums(r: Rendered) -> set[str]:
        return {
            w["spec"]["template"]["metadata"]["annotations"]["checksum/settings"]
            for w in r.of_kind("Deployment")
            if w["metadata"]["name"] != "tf-serving"
        }

    before = checksums(rendered("default"))
    after = checksums(render(values_for("default", settings={"KIOSK_MAX_ATTEMPTS": "5"})))
    assert len(before) == len(after) == 1 and before != after
