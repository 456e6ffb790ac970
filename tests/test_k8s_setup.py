"""The GKE setup in k8s/: shellcheck on every script, `gke.sh --dry-run` with each preset (what it
would create), the quota check on saved gcloud output, the bucket lifecycle, the monitoring
manifests and the Grafana dashboard's metric names. No gcloud, kubectl or helm is needed."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
GKE = K8S / "gke.sh"
PRESETS = sorted((K8S / "presets").glob("*.env"))
REGION_JSON = ROOT / "tests" / "data" / "gcloud-region.json"
MONITORING = K8S / "monitoring"
DASHBOARD = MONITORING / "grafana-kiosk-dashboard.json"
PRESET_NAMES = {
    name for path in PRESETS for name in re.findall(r"^([A-Z_0-9]+)=", path.read_text(), re.M)
} - {"PROJECT"}


def gke(*args: str, env: dict[str, str] | None = None, **extra: str) -> subprocess.CompletedProcess:
    """k8s/gke.sh with a project set, this interpreter as its python, and no real gcloud."""
    full = {
        **os.environ,
        "PROJECT": "test-project",
        "PYTHON": sys.executable,
        "GCLOUD": "kiosk-test-no-gcloud",
        "KUBECTL": "kiosk-test-no-kubectl",
        "HELM": "kiosk-test-no-helm",
        **(env or {}),
        **extra,
    }
    for name in PRESET_NAMES | {"PRESET", "TAG"}:  # the caller's shell must not leak in
        if name not in (env or {}) and name not in extra:
            full.pop(name, None)
    return subprocess.run(
        ["bash", str(GKE), *args], env=full, capture_output=True, text=True, timeout=60
    )


def commands(result: subprocess.CompletedProcess) -> list[list[str]]:
    """The commands a --dry-run printed ("+ " lines), split as the shell would."""
    assert result.returncode == 0, result.stderr
    return [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]


def flag(command: list[str], name: str) -> str:
    """The value of --name VALUE or --name=VALUE."""
    for i, arg in enumerate(command):
        if arg == name:
            return command[i + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1 :]
    raise AssertionError(f"{name} missing from {shlex.join(command)}")


def find(cmds: list[list[str]], *prefix: str) -> list[list[str]]:
    n = len(prefix)
    return [c for c in cmds if c[1 : 1 + n] == list(prefix)]


# ------------------------------------------------------------------------------ shellcheck


def shell_scripts() -> list[Path]:
    found = []
    for folder in (K8S, ROOT / "scripts"):
        for path in sorted(folder.rglob("*")):
            if not path.is_file():
                continue
            head = path.read_text(errors="replace")[:200]
            if path.suffix in (".sh", ".env") or head.startswith(
                ("#!/usr/bin/env bash", "#!/bin/")
            ):
                found.append(path)
    return found


def test_every_script_under_k8s_and_scripts_passes_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail(
            "shellcheck is not installed: `make test-deps` installs it (Debian: shellcheck)"
        )
    scripts = shell_scripts()
    assert GKE in scripts and ROOT / "scripts" / "install-system-deps.sh" in scripts
    assert set(PRESETS) <= set(scripts)
    result = subprocess.run(
        [shellcheck, "--external-sources", "--shell=bash", *map(str, scripts)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_gke_script_is_executable_and_strict():
    assert os.access(GKE, os.X_OK)
    assert "set -euo pipefail" in GKE.read_text()


# ------------------------------------------------------------------------------ presets


def preset_values(path: Path) -> dict[str, str]:
    """A preset's defaults, read by bash itself with an empty environment."""
    names = re.findall(r"^([A-Z_0-9]+)=", path.read_text(), re.M)
    script = f'set -eu; . "{path}"; for v in {" ".join(names)}; do '
    script += 'printf "%s=%s\\n" "$v" "${!v}"; done'
    out = subprocess.run(
        ["bash", "-c", script], env={"PATH": os.environ["PATH"]}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return dict(line.split("=", 1) for line in out.stdout.splitlines())


def test_presets_are_the_1gpu_and_4gpu_clusters_with_the_same_settings():
    assert [p.stem for p in PRESETS] == ["1gpu", "4gpu"]
    one, four = (preset_values(p) for p in PRESETS)
    assert one.keys() == four.keys()
    assert one["MAX_GPUS"] == "1" and four["MAX_GPUS"] == "4"
    for values in (one, four):
        assert values["PROJECT"] == ""  # never a real project in the repository
        assert re.fullmatch(r"[a-z]+-[a-z]+\d+-[a-z]", values["ZONE"])  # one zone
        assert values["PROVISIONING"] == "preemptible"
        assert set(values["GPU_TYPES"].split()) == {"nvidia-tesla-v100", "nvidia-tesla-t4"}


def test_the_environment_overrides_a_preset():
    result = gke("env", "--preset", "4gpu", MAX_GPUS="2", ZONE="europe-west4-a")
    assert result.returncode == 0, result.stderr
    values = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert values["MAX_GPUS"] == "2"
    assert values["REGION"] == "europe-west4"
    assert values["BUCKET"] == "test-project-kiosk"
    assert values["GSA_EMAIL"] == "kiosk@test-project.iam.gserviceaccount.com"


# ------------------------------------------------------------------------------ create


@pytest.mark.parametrize("preset", ["1gpu", "4gpu"])
def test_dry_run_create_builds_a_single_zone_cluster_with_preemptible_tainted_gpu_pools(preset):
    values = preset_values(K8S / "presets" / f"{preset}.env")
    cmds = commands(gke("--dry-run", "--preset", preset, "create"))

    # The quota check comes first.
    assert find(cmds, "compute", "regions", "describe")
    assert cmds.index(find(cmds, "compute", "regions", "describe")[0]) < cmds.index(
        find(cmds, "container", "clusters", "create")[0]
    )

    (cluster,) = find(cmds, "container", "clusters", "create")
    assert cluster[4] == "kiosk"
    assert flag(cluster, "--zone") == values["ZONE"]
    assert "--region" not in cluster and "--node-locations" not in cluster  # one zone only
    assert flag(cluster, "--workload-pool") == "test-project.svc.id.goog"
    assert flag(cluster, "--release-channel") == "regular"
    assert "--enable-dataplane-v2" in cluster  # the chart's NetworkPolicies are enforced
    assert "--preemptible" not in cluster and "--spot" not in cluster  # Redis lives there

    pools = {c[4]: c for c in find(cmds, "container", "node-pools", "create")}
    assert set(pools) == {"consumer-pool", "gpu-v100-pool", "gpu-t4-pool"}
    for pool in pools.values():
        assert flag(pool, "--cluster") == "kiosk"
        assert flag(pool, "--zone") == values["ZONE"]
        assert "--preemptible" in pool
        assert "--enable-autoscaling" in pool
        assert flag(pool, "--min-nodes") == "0"
        assert flag(pool, "--num-nodes") == "0"
        assert flag(pool, "--workload-metadata") == "GKE_METADATA"
    consumers = pools["consumer-pool"]
    assert flag(consumers, "--max-nodes") == values["CONSUMER_MAX_NODES"]
    assert "--accelerator" not in consumers and "--node-taints" not in consumers

    for name, accelerator in (
        ("gpu-v100-pool", "nvidia-tesla-v100"),
        ("gpu-t4-pool", "nvidia-tesla-t4"),
    ):
        pool = pools[name]
        assert flag(pool, "--accelerator") == (
            f"type={accelerator},count=1,gpu-driver-version=default"
        )
        assert flag(pool, "--max-nodes") == values["MAX_GPUS"]
        assert flag(pool, "--node-taints") == "nvidia.com/gpu=present:NoSchedule"

    assert find(cmds, "container", "clusters", "get-credentials")


def test_dry_run_create_with_the_driver_installer_applies_gkes_daemonset():
    cmds = commands(gke("--dry-run", "create", GPU_DRIVER="installer"))
    for pool in find(cmds, "container", "node-pools", "create"):
        if "--accelerator" in pool:
            assert flag(pool, "--accelerator").endswith("gpu-driver-version=disabled")
    applies = [c for c in cmds if c[:3] == ["kiosk-test-no-kubectl", "apply", "-f"]]
    assert len(applies) == 1
    url = applies[0][3]
    assert url.startswith("https://raw.githubusercontent.com/GoogleCloudPlatform/")
    assert url.endswith("nvidia-driver-installer/cos/daemonset-preloaded.yaml")


def test_dry_run_create_with_spot_and_one_gpu_type():
    cmds = commands(
        gke("--dry-run", "create", PROVISIONING="spot", GPU_TYPES="nvidia-l4", MAX_GPUS="3")
    )
    pools = {c[4]: c for c in find(cmds, "container", "node-pools", "create")}
    assert set(pools) == {"consumer-pool", "gpu-l4-pool"}
    assert all("--spot" in p and "--preemptible" not in p for p in pools.values())
    assert flag(pools["gpu-l4-pool"], "--max-nodes") == "3"


def test_dry_run_runs_no_cloud_tool(tmp_path):
    """--dry-run must print, never call: a gcloud/kubectl/helm that records calls stays unused."""
    calls = tmp_path / "calls"
    fake = tmp_path / "fake-tool"
    fake.write_text(f'#!/bin/sh\necho "$0 $*" >> {calls}\nexit 0\n')
    fake.chmod(0o755)
    for command in ("create", "bucket", "registry", "images", "models", "install-monitoring"):
        result = gke("--dry-run", command, GCLOUD=str(fake), KUBECTL=str(fake), HELM=str(fake))
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("+ ") >= 1
    result = gke("--dry-run", "--yes", "delete", GCLOUD=str(fake))
    assert result.returncode == 0, result.stderr
    assert not calls.exists(), calls.read_text()


def test_missing_gcloud_is_named_with_how_to_install_it():
    result = gke("create")
    assert result.returncode == 2
    assert "kiosk-test-no-gcloud not found" in result.stderr
    assert "install" in result.stderr


def test_missing_helm_is_named_for_install_monitoring(tmp_path):
    fake = tmp_path / "tool"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    result = gke("install-monitoring", GCLOUD=str(fake), KUBECTL=str(fake))
    assert result.returncode == 2
    assert "kiosk-test-no-helm not found" in result.stderr


def test_bad_settings_are_refused_with_the_reason():
    result = gke("--dry-run", "create", ZONE="us-central1")
    assert result.returncode == 2 and "ZONE must be one zone" in result.stderr
    result = gke("--dry-run", "create", MAX_GPUS="four")
    assert result.returncode == 2 and "MAX_GPUS must be a whole number" in result.stderr
    result = gke("--dry-run", "--preset", "16gpu", "create")
    assert result.returncode == 2 and "no preset '16gpu'" in result.stderr
    result = gke("--dry-run", "launch")
    assert result.returncode == 2 and "unknown command 'launch'" in result.stderr


def test_delete_asks_first_and_refuses_without_a_terminal():
    result = subprocess.run(
        ["bash", str(GKE), "delete"],
        env={**os.environ, "PROJECT": "test-project", "GCLOUD": sys.executable},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "--yes" in result.stderr
    cmds = commands(gke("--dry-run", "delete"))
    (delete,) = find(cmds, "container", "clusters", "delete")
    assert delete[4] == "kiosk" and flag(delete, "--zone") == "us-central1-a"


def test_delete_data_removes_bucket_service_account_and_registry():
    cmds = commands(gke("--dry-run", "delete-data"))
    assert find(cmds, "storage", "rm", "--recursive", "gs://test-project-kiosk")
    assert find(
        cmds, "iam", "service-accounts", "delete", "kiosk@test-project.iam.gserviceaccount.com"
    )
    assert find(cmds, "artifacts", "repositories", "delete", "kiosk")


# ------------------------------------------------------------------------------ bucket


def test_lifecycle_deletes_uploads_and_outputs_but_never_models():
    rules = json.loads((K8S / "bucket-lifecycle.json").read_text())["rule"]
    deleted = {}
    for rule in rules:
        assert rule["action"] == {"type": "Delete"}
        prefixes = rule["condition"].get("matchesPrefix")
        assert prefixes, "a Delete rule without matchesPrefix would delete models/ too"
        for prefix in prefixes:
            deleted[prefix] = rule["condition"]["age"]
    assert set(deleted) == {"uploads/", "output/"}
    assert all(isinstance(age, int) and age >= 1 for age in deleted.values())


def test_dry_run_bucket_sets_lifecycle_and_workload_identity_for_the_charts_accounts():
    result = gke("--dry-run", "bucket", BUCKET_TTL_DAYS="3")
    cmds = commands(result)
    (create,) = find(cmds, "storage", "buckets", "create")
    assert create[4] == "gs://test-project-kiosk"
    assert flag(create, "--location") == "us-central1"  # the cluster's region
    assert "--uniform-bucket-level-access" in create
    (update,) = find(cmds, "storage", "buckets", "update")
    assert "--lifecycle-file" in update
    (binding,) = find(cmds, "storage", "buckets", "add-iam-policy-binding")
    assert flag(binding, "--member") == "serviceAccount:kiosk@test-project.iam.gserviceaccount.com"
    assert flag(binding, "--role") == "roles/storage.objectAdmin"
    members = {
        flag(c, "--member")
        for c in find(cmds, "iam", "service-accounts", "add-iam-policy-binding")
        if flag(c, "--role") == "roles/iam.workloadIdentityUser"
    }
    # helm/kiosk's ServiceAccounts for release "kiosk": {release}-{component}.
    assert members == {
        f"serviceAccount:test-project.svc.id.goog[kiosk/kiosk-{c}]"
        for c in ("frontend", "consumer", "model-server", "janitor")
    }
    assert "deleted 3 days after" in result.stderr


def test_bucket_ttl_rewrites_every_rules_age(tmp_path):
    """The lifecycle file gke.sh hands to gcloud carries BUCKET_TTL_DAYS in every rule."""
    fake = tmp_path / "gcloud"
    seen = tmp_path / "lifecycle.json"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$*" in *describe*) exit 1 ;; esac\n'
        'while [ "$#" -gt 0 ]; do\n'
        f'  if [ "$1" = --lifecycle-file ]; then cp "$2" {seen}; fi\n'
        "  shift\ndone\nexit 0\n"
    )
    fake.chmod(0o755)
    result = gke("bucket", GCLOUD=str(fake), BUCKET_TTL_DAYS="3")
    assert result.returncode == 0, result.stderr
    rules = json.loads(seen.read_text())["rule"]
    assert [r["condition"]["age"] for r in rules] == [3, 3]
    assert sorted(p for r in rules for p in r["condition"]["matchesPrefix"]) == [
        "output/",
        "uploads/",
    ]


# ------------------------------------------------------------------------------ quota


def test_quota_reports_each_short_quota_and_where_to_ask():
    result = gke("quota", "--region-json", str(REGION_JSON))
    assert result.returncode == 1
    lines = {line.split()[1]: line for line in result.stdout.splitlines()[1:] if line.strip()}
    # No preemptible V100 quota in the sample: preemptible GPUs fall back on NVIDIA_V100_GPUS (0).
    assert lines["NVIDIA_V100_GPUS"].split()[0] == "SHORT"
    assert "PREEMPTIBLE_NVIDIA_V100_GPUS unset here" in lines["NVIDIA_V100_GPUS"]
    assert lines["PREEMPTIBLE_NVIDIA_T4_GPUS"].split()[0] == "ok"
    # All pools' vCPUs add up on CPUS (no preemptible CPU quota): 8 + 16 + 2 > 24.
    assert re.search(r"SHORT\s+CPUS\s+need 26\s+free 24", result.stdout)
    assert re.search(r"SHORT\s+IN_USE_ADDRESSES\s+need 12\s+free 8", result.stdout)
    assert "NVIDIA_V100_GPUS (region us-central1): the cluster needs 1, 0 free" in result.stderr
    assert "https://console.cloud.google.com/iam-admin/quotas?project=test-project" in result.stderr
    assert "MAX_GPUS" in result.stderr  # or make the preset smaller


def enough(tmp_path: Path) -> tuple[Path, Path]:
    region = json.loads(REGION_JSON.read_text())
    for q in region["quotas"]:
        if q["metric"] in ("CPUS", "IN_USE_ADDRESSES", "NVIDIA_V100_GPUS"):
            q["limit"] = 100.0
    region_file = tmp_path / "region.json"
    region_file.write_text(json.dumps(region))
    project = {
        "name": "test-project",
        "quotas": [
            {"metric": "GPUS_ALL_REGIONS", "limit": 4.0, "usage": 0.0},
            {"metric": "CPUS_ALL_REGIONS", "limit": 64.0, "usage": 0.0},
        ],
    }
    project_file = tmp_path / "project.json"
    project_file.write_text(json.dumps(project))
    return region_file, project_file


def test_quota_passes_when_every_quota_has_room(tmp_path):
    region, project = enough(tmp_path)
    result = gke("quota", "--region-json", str(region), "--project-json", str(project))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Enough quota for this preset." in result.stdout
    assert re.search(r"ok\s+GPUS_ALL_REGIONS\s+need 1\b", result.stdout)


def test_quota_checks_project_wide_gpus_for_the_4gpu_preset(tmp_path):
    region, project = enough(tmp_path)
    result = gke(
        "--preset", "4gpu", "quota", "--region-json", str(region), "--project-json", str(project)
    )
    assert result.returncode == 1
    # 4 GPUs fit GPUS_ALL_REGIONS (4); preemptible T4s (1) do not.
    assert re.search(r"ok\s+GPUS_ALL_REGIONS\s+need 4\b", result.stdout)
    assert re.search(r"SHORT\s+PREEMPTIBLE_NVIDIA_T4_GPUS\s+need 4\s+free 1", result.stdout)
    assert re.search(r"SHORT\s+CPUS_ALL_REGIONS\s+need 68\b", result.stdout)


def test_quota_says_when_the_zone_has_no_such_gpu(tmp_path):
    region, project = enough(tmp_path)
    offered = tmp_path / "accelerators.json"
    offered.write_text(json.dumps([{"name": "nvidia-tesla-t4", "zone": "us-central1-a"}]))
    result = gke(
        "quota",
        "--region-json", str(region),
        "--project-json", str(project),
        "--accelerators-json", str(offered),
    )  # fmt: skip
    assert result.returncode == 1
    assert "nvidia-tesla-v100 is not offered in zone us-central1-a" in result.stderr


def test_quota_rejects_input_that_is_not_gcloud_json(tmp_path):
    bad = tmp_path / "region.json"
    bad.write_text("quotas: []")
    result = gke("quota", "--region-json", str(bad))
    assert result.returncode == 2
    assert "cannot read" in result.stderr


def test_dry_run_quota_prints_the_gcloud_reads():
    cmds = commands(gke("--dry-run", "quota"))
    (describe,) = find(cmds, "compute", "regions", "describe")
    assert describe[4] == "us-central1" and flag(describe, "--format") == "json"
    assert find(cmds, "compute", "project-info", "describe")
    (accelerators,) = find(cmds, "compute", "accelerator-types", "list")
    assert flag(accelerators, "--filter") == "zone:us-central1-a"


# ------------------------------------------------------------------------------ images


def test_cloud_build_builds_both_images_from_their_dockerfiles():
    build = yaml.safe_load((K8S / "cloudbuild.yaml").read_text())
    dockerfiles = {}
    for step in build["steps"]:
        args = step["args"]
        assert args[0] == "build" and args[-1] == "."
        dockerfiles[args[args.index("-f") + 1]] = args[args.index("-t") + 1]
        assert (ROOT / args[args.index("-f") + 1]).is_file()
    assert dockerfiles == {
        "Dockerfile.consumer": "${_IMAGE_PREFIX}/kiosk-consumer:${_TAG}",
        "Dockerfile.autoscaler": "${_IMAGE_PREFIX}/kiosk-autoscaler:${_TAG}",
    }
    assert sorted(build["images"]) == sorted(dockerfiles.values())
    assert "_IMAGE_PREFIX" not in build.get("substitutions", {})  # must be given


def test_dry_run_images_pushes_to_the_regions_artifact_registry():
    cmds = commands(gke("--dry-run", "images", TAG="v9"))
    (submit,) = find(cmds, "builds", "submit")
    assert flag(submit, "--config").endswith("k8s/cloudbuild.yaml")
    assert flag(submit, "--substitutions") == (
        "_IMAGE_PREFIX=us-central1-docker.pkg.dev/test-project/kiosk,_TAG=v9"
    )
    cmds = commands(gke("--dry-run", "models"))
    (copy,) = find(cmds, "storage", "cp")
    copied = {path.rsplit("/", 1)[1] for path in copy[-5:-1]}
    assert copied == {
        "CytoplasmSegmentation",
        "DivisionScoring",
        "NuclearSegmentation",
        "WholeCellSegmentation",
    }
    assert copy[-1] == "gs://test-project-kiosk/models/"


# ------------------------------------------------------------------------------ monitoring


def test_kube_prometheus_stack_values_scrape_every_15s_and_take_every_rule_and_monitor():
    values = yaml.safe_load((MONITORING / "kube-prometheus-stack-values.yaml").read_text())
    spec = values["prometheus"]["prometheusSpec"]
    assert spec["scrapeInterval"] == "15s" and spec["evaluationInterval"] == "15s"
    for kind in ("rule", "serviceMonitor", "podMonitor"):
        assert spec[f"{kind}SelectorNilUsesHelmValues"] is False
        assert spec[f"{kind}Selector"] == {}
        assert spec[f"{kind}NamespaceSelector"] == {}
    dashboards = values["grafana"]["sidecar"]["dashboards"]
    assert dashboards["enabled"] and dashboards["label"] == "grafana_dashboard"


def test_dry_run_install_monitoring_uses_the_charts_adapter_rules():
    cmds = commands(gke("--dry-run", "install-monitoring"))
    installs = {c[3]: c for c in cmds if c[1:3] == ["upgrade", "--install"]}
    assert set(installs) == {"kube-prometheus-stack", "prometheus-adapter"}
    for release in installs.values():
        assert flag(release, "--namespace") == "monitoring"
        assert re.fullmatch(r"\d+\.\d+\.\d+", flag(release, "--version"))
    assert flag(installs["prometheus-adapter"], "--values") == str(
        ROOT / "helm" / "prometheus-adapter-values.yaml"
    )
    assert flag(installs["kube-prometheus-stack"], "--values") == str(
        MONITORING / "kube-prometheus-stack-values.yaml"
    )
    applied = [c[3] for c in cmds if c[1:3] == ["apply", "-f"]]
    assert str(MONITORING / "dcgm-exporter.yaml") in applied
    assert any("grafana_dashboard=1" in line for line in result_lines("install-monitoring"))


def result_lines(command: str) -> list[str]:
    return gke("--dry-run", command).stdout.splitlines()


def test_dcgm_exporter_serves_gpu_utilisation_on_9400_on_tainted_gpu_nodes():
    docs = [d for d in yaml.safe_load_all((MONITORING / "dcgm-exporter.yaml").read_text()) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("DaemonSet", "dcgm-exporter") in kinds and ("ServiceMonitor", "dcgm-exporter") in kinds
    counters = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["counters.csv"]
    assert re.search(r"^DCGM_FI_DEV_GPU_UTIL, gauge", counters, re.M)
    for ds in (d for d in docs if d["kind"] == "DaemonSet"):
        pod = ds["spec"]["template"]["spec"]
        assert any(t.get("key") == "nvidia.com/gpu" for t in pod["tolerations"])
        terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        keys = {e["key"] for t in terms["nodeSelectorTerms"] for e in t["matchExpressions"]}
        assert keys == {"cloud.google.com/gke-accelerator"}
        for container in pod["containers"]:
            assert "nvidia.com/gpu" not in str(container.get("resources", {}))  # takes no GPU
    exporter = next(
        d for d in docs if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "dcgm-exporter"
    )
    (container,) = exporter["spec"]["template"]["spec"]["containers"]
    assert container["ports"][0]["containerPort"] == 9400
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"


# ------------------------------------------------------------------------------ dashboard

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "le", "inf", "nan",
}  # fmt: skip
PROMQL_FUNCTIONS = {
    "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "histogram_quantile",
    "clamp", "clamp_min", "clamp_max", "vector", "label_values", "topk", "abs",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers, grouping labels, ranges,
    Grafana variables and functions left out)."""
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\w+", " ", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        token = match.group()
        after = expr[match.end() :].lstrip()
        if after.startswith("("):
            assert token in PROMQL_FUNCTIONS, f"unknown PromQL function {token} in {expr}"
        elif token.lower() not in PROMQL_WORDS:
            names.add(token)
    return names


def known_metrics() -> set[str]:
    """Every series Kiosk exports (the names in its Python sources, with the suffixes
    prometheus_client adds), every recorded rule, and the DCGM fields the exporter is given."""
    sources = [
        ROOT / "autoscaler" / "exporter.py",
        ROOT / "consumers" / "metrics.py",
        ROOT / "model_server" / "metrics.py",
    ]
    names: set[str] = set()
    for source in sources:
        for name in re.findall(r"[\"'](kiosk_[a-z0-9_]+)[\"']", source.read_text()):
            base = name.removesuffix("_total")
            names |= {base, *(base + s for s in ("_total", "_bucket", "_sum", "_count"))}
    rules = yaml.safe_load((ROOT / "autoscaler" / "rules" / "kiosk-rules.yaml").read_text())
    names |= {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    docs = yaml.safe_load_all((MONITORING / "dcgm-exporter.yaml").read_text())
    counters = next(d for d in docs if d and d["kind"] == "ConfigMap")["data"]["counters.csv"]
    names |= set(re.findall(r"^(DCGM_FI_\w+),", counters, re.M))
    return names


def panels(dashboard: dict) -> list[dict]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_dashboard_is_grafana_json_with_a_prometheus_datasource_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "Kiosk" and dashboard["uid"]
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"] and all(t["expr"] for t in panel["targets"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24


def test_dashboard_reads_only_metrics_kiosk_or_dcgm_export():
    dashboard = json.loads(DASHBOARD.read_text())
    known = known_metrics()
    used: set[str] = set()
    for panel in panels(dashboard):
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, f"no metric in {target['expr']}"
            unknown = names - known
            assert not unknown, f"panel {panel['title']!r} reads unknown metrics {unknown}"
            used |= names
    # The views the operator's guide promises: queues, consumers, model servers, GPUs, the
    # consumer metric, stage times and job outcomes.
    assert {
        "kiosk_queue_items",
        "kiosk_consumers",
        "kiosk_consumer_replicas",
        "kiosk_model_servers",
        "kiosk:gpu_utilization:ratio",
        "DCGM_FI_DEV_GPU_UTIL",
        "kiosk:consumer_metric",
        "kiosk_consumer_stage_duration_seconds_bucket",
        "kiosk_consumer_jobs_total",
    } <= used
    stage = [
        t["expr"]
        for p in panels(dashboard)
        for t in p["targets"]
        if "kiosk_consumer_stage_duration_seconds_bucket" in t["expr"]
    ]
    assert stage and all("histogram_quantile" in e and "stage" in e for e in stage)


def test_dashboard_shows_each_queue_apart_so_tracking_sits_beside_segmentation():
    """Queues come from the exporter's labels (a new job type such as tracking appears by
    itself), and every per-queue view keeps the queue label: a movie's stage times (linking
    a whole movie) must not blend into segmentation's per-image ones."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["queue"]["query"]["query"] == "label_values(kiosk_queue_items, queue)"
    assert variables["queue"]["includeAll"] and variables["queue"]["multi"]
    for panel in panels(dashboard):
        for target in panel["targets"]:
            expr = target["expr"]
            if "$queue" not in expr:
                continue
            for grouping in re.findall(r"by \(([^)]*)\)", expr):
                assert "queue" in grouping, (panel["title"], expr)
            assert "{{queue}}" in target.get("legendFormat", "{{queue}}"), panel["title"]


def test_metric_name_check_catches_a_misspelt_metric():
    assert metric_names('sum by (queue) (rate(kiosk_consumer_jobz_total{queue="a"}[5m]))') == {
        "kiosk_consumer_jobz_total"
    }
    assert "kiosk_consumer_jobz_total" not in known_metrics()
