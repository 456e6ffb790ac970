#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Kiosk's Google Kubernetes Engine setup: quota check, cluster and node pools, bucket, Workload
# Identity, image builds, monitoring, tear-down. docs/operator-guide.md walks through it.
#
#   k8s/gke.sh [--preset 1gpu|4gpu|FILE] [--dry-run] [--yes] COMMAND [options]
#
# Commands, in the order a new cluster needs them:
#   env                 print the settings in effect (the preset, overridden by the environment)
#   quota               check GPU, CPU, address and disk quotas against the cluster at its largest
#                         --region-json F [--project-json F] [--accelerators-json F]: check
#                         saved `gcloud ... --format=json` output instead of asking gcloud
#   create              quota, then the single-zone cluster, consumer-pool, one GPU pool per
#                       GPU_TYPES entry, the NVIDIA driver, kubectl credentials (--skip-quota)
#   bucket              the GCS bucket with lifecycle rules (uploads/, output/ deleted after
#                       BUCKET_TTL_DAYS), the Kiosk service account, Workload Identity bindings
#   registry            the Artifact Registry repository for the images
#   images              build and push both images with Cloud Build (TAG, default: git commit)
#   models              copy the bundled models (CytoplasmSegmentation, DivisionScoring,
#                       NuclearSegmentation, WholeCellSegmentation) to gs://BUCKET/models/
#   credentials         point kubectl at the cluster
#   install-monitoring  kube-prometheus-stack, prometheus-adapter (helm/prometheus-adapter-values.yaml),
#                       the DCGM exporter and the Grafana dashboard, in namespace monitoring
#   delete              delete the cluster (asks first unless --yes)
#   delete-data         delete the bucket (every upload, result and model), the service account
#                       and the registry (asks first unless --yes)
#
# --dry-run prints each command (a line starting with "+ ") instead of running it, and needs
# none of gcloud, kubectl or helm. GCLOUD, KUBECTL, HELM and PYTHON name the programs to run.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"

# GKE's NVIDIA driver installer for Container-Optimized OS nodes (GPU_DRIVER=installer).
NVIDIA_DRIVER_INSTALLER_URL="https://raw.githubusercontent.com/GoogleCloudPlatform/container-engine-accelerators/master/nvidia-driver-installer/cos/daemonset-preloaded.yaml"
PROMETHEUS_COMMUNITY_CHARTS="https://prometheus-community.github.io/helm-charts"
# Chart versions (`helm search repo prometheus-community/NAME --versions` lists newer ones).
KUBE_PROMETHEUS_STACK_VERSION="${KUBE_PROMETHEUS_STACK_VERSION:-93.1.1}"
PROMETHEUS_ADAPTER_VERSION="${PROMETHEUS_ADAPTER_VERSION:-5.3.0}"
MONITORING_NAMESPACE="monitoring"  # helm/kiosk's networkPolicy.prometheus expects this name

GCLOUD="${GCLOUD:-gcloud}"
KUBECTL="${KUBECTL:-kubectl}"
HELM="${HELM:-helm}"
PYTHON="${PYTHON:-python3}"

DRY_RUN=0
YES=0
SKIP_QUOTA=0
PRESET="${PRESET:-1gpu}"
REGION_JSON=""
PROJECT_JSON=""
ACCELERATORS_JSON=""
COMMAND=""
TMP_FILES=()

usage() { sed -n '3,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }

die() {  # status message...
  local status="$1"
  shift
  echo "gke.sh: $*" >&2
  exit "$status"
}

say() { echo "==> $*" >&2; }

cleanup() { if [ "${#TMP_FILES[@]}" -gt 0 ]; then rm -f "${TMP_FILES[@]}"; fi; }
trap cleanup EXIT

tmp_file() {  # suffix -> path of a new temporary file, removed on exit
  local path
  path="$(mktemp "${TMPDIR:-/tmp}/kiosk-gke.XXXXXX$1")"
  TMP_FILES+=("$path")
  echo "$path"
}

# ------------------------------------------------------------------ arguments and settings

while [ "$#" -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --yes | -y) YES=1 ;;
    --skip-quota) SKIP_QUOTA=1 ;;
    --preset) [ "$#" -ge 2 ] || die 2 "--preset needs a name (1gpu, 4gpu) or a file"; PRESET="$2"; shift ;;
    --preset=*) PRESET="${1#*=}" ;;
    --region-json) [ "$#" -ge 2 ] || die 2 "--region-json needs a file"; REGION_JSON="$2"; shift ;;
    --project-json) [ "$#" -ge 2 ] || die 2 "--project-json needs a file"; PROJECT_JSON="$2"; shift ;;
    --accelerators-json) [ "$#" -ge 2 ] || die 2 "--accelerators-json needs a file"; ACCELERATORS_JSON="$2"; shift ;;
    -*) die 2 "unknown option $1 (see k8s/gke.sh --help)" ;;
    *)
      [ -z "$COMMAND" ] || die 2 "one command at a time: got '$COMMAND' and '$1'"
      COMMAND="$1"
      ;;
  esac
  shift
done
[ -n "$COMMAND" ] || { usage >&2; exit 2; }

if [ -f "$PRESET" ]; then
  PRESET_FILE="$PRESET"
elif [ -f "$HERE/presets/$PRESET.env" ]; then
  PRESET_FILE="$HERE/presets/$PRESET.env"
else
  die 2 "no preset '$PRESET': use 1gpu, 4gpu (k8s/presets/) or the path of a preset file"
fi
# shellcheck source=presets/1gpu.env
. "$PRESET_FILE"

# One argument as the shell would need it typed: bare when plain, else in single quotes.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Every program the commands below run goes through here: printed with --dry-run, run otherwise.
run() {
  if [ "$DRY_RUN" -eq 1 ]; then
    local arg line="+"
    for arg in "$@"; do line+=" $(quote "$arg")"; done
    printf '%s\n' "$line"
  else
    "$@"
  fi
}

# `run` for a pipeline, given as one string: printed as is with --dry-run, else run by bash.
run_pipeline() {
  if [ "$DRY_RUN" -eq 1 ]; then
    printf '+ %s\n' "$1"
  else
    bash -o pipefail -c "$1"
  fi
}

# True when a describe command finds the resource (never with --dry-run: it shows everything).
exists() {
  [ "$DRY_RUN" -eq 0 ] && "$@" >/dev/null 2>&1
}

need_tools() {  # program...
  local program missing=()
  [ "$DRY_RUN" -eq 1 ] && return 0
  for program in "$@"; do
    command -v "$program" >/dev/null 2>&1 || missing+=("$program")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  for program in "${missing[@]}"; do
    case "$(basename "$program")" in
      *gcloud) echo "gke.sh: $program not found: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install), then 'gcloud auth login' and 'gcloud config set project PROJECT'" >&2 ;;
      *kubectl) echo "gke.sh: $program not found: install it with 'gcloud components install kubectl gke-gcloud-auth-plugin' (or your package manager)" >&2 ;;
      *helm) echo "gke.sh: $program not found: install Helm 3 (https://helm.sh/docs/intro/install/)" >&2 ;;
      python*) echo "gke.sh: $program not found: install Python 3 (or set PYTHON to one)" >&2 ;;
      *) echo "gke.sh: $program not found on PATH" >&2 ;;
    esac
  done
  exit 2
}

is_count() { [[ "$2" =~ ^[0-9]+$ ]] || die 2 "$1 must be a whole number, got '$2'"; }

settle_settings() {
  is_count DEFAULT_MIN_NODES "$DEFAULT_MIN_NODES"
  is_count DEFAULT_MAX_NODES "$DEFAULT_MAX_NODES"
  is_count CONSUMER_MAX_NODES "$CONSUMER_MAX_NODES"
  is_count MAX_GPUS "$MAX_GPUS"
  is_count DISK_SIZE_GB "$DISK_SIZE_GB"
  is_count BUCKET_TTL_DAYS "$BUCKET_TTL_DAYS"
  [ "$BUCKET_TTL_DAYS" -ge 1 ] || die 2 "BUCKET_TTL_DAYS must be at least 1"
  [ "$DEFAULT_MIN_NODES" -le "$DEFAULT_MAX_NODES" ] \
    || die 2 "DEFAULT_MIN_NODES ($DEFAULT_MIN_NODES) is above DEFAULT_MAX_NODES ($DEFAULT_MAX_NODES)"
  case "$PROVISIONING" in
    preemptible | spot | standard) ;;
    *) die 2 "PROVISIONING must be preemptible, spot or standard, got '$PROVISIONING'" ;;
  esac
  case "$GPU_DRIVER" in
    default | latest | installer) ;;
    *) die 2 "GPU_DRIVER must be default, latest or installer, got '$GPU_DRIVER'" ;;
  esac
  [[ "$ZONE" =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] \
    || die 2 "ZONE must be one zone such as us-central1-a, got '$ZONE' (one zone keeps GPU traffic free of inter-zone egress)"
  REGION="${ZONE%-*}"
  if [ -z "$PROJECT" ]; then
    if [ "$DRY_RUN" -eq 0 ] && command -v "$GCLOUD" >/dev/null 2>&1; then
      PROJECT="$("$GCLOUD" config get-value project 2>/dev/null || true)"
    fi
    if [ -z "$PROJECT" ]; then
      [ "$DRY_RUN" -eq 1 ] || die 2 "no project: set PROJECT=your-project-id (or 'gcloud config set project ...')"
      PROJECT="PROJECT_ID"
      echo "gke.sh: PROJECT is not set; the commands below say PROJECT_ID" >&2
    fi
  fi
  BUCKET="${BUCKET:-$PROJECT-kiosk}"
  BUCKET="${BUCKET#gs://}"
  GSA_EMAIL="$GSA_NAME@$PROJECT.iam.gserviceaccount.com"
  IMAGE_PREFIX="$REGION-docker.pkg.dev/$PROJECT/$REGISTRY"
  if [ -z "${TAG:-}" ]; then
    TAG="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo dev)"
  fi
}

gpu_short() {  # nvidia-tesla-v100 -> v100, nvidia-l4 -> l4
  local name="${1#nvidia-}"
  echo "${name#tesla-}"
}

gpu_pool() { echo "gpu-$(gpu_short "$1")-pool"; }

provisioning_flags() {
  case "$PROVISIONING" in
    preemptible) echo "--preemptible" ;;
    spot) echo "--spot" ;;
    standard) ;;
  esac
}

confirm() {  # question
  if [ "$YES" -eq 1 ] || [ "$DRY_RUN" -eq 1 ]; then return 0; fi
  [ -t 0 ] || die 1 "$1 Not asking without a terminal: add --yes to go ahead."
  local answer
  read -r -p "$1 Type 'yes' to go ahead: " answer
  [ "$answer" = "yes" ] || die 1 "stopped; nothing was deleted"
}

# ------------------------------------------------------------------ commands

cmd_env() {
  local name
  for name in PRESET_FILE PROJECT ZONE REGION CLUSTER RELEASE_CHANNEL DEFAULT_MACHINE_TYPE \
    DEFAULT_MIN_NODES DEFAULT_MAX_NODES CONSUMER_MACHINE_TYPE CONSUMER_MAX_NODES GPU_TYPES \
    GPU_MACHINE_TYPE MAX_GPUS GPU_DRIVER PROVISIONING DISK_TYPE DISK_SIZE_GB BUCKET \
    BUCKET_TTL_DAYS GSA_NAME GSA_EMAIL K8S_NAMESPACE K8S_SERVICE_ACCOUNTS REGISTRY \
    IMAGE_PREFIX TAG KUBE_PROMETHEUS_STACK_VERSION PROMETHEUS_ADAPTER_VERSION; do
    printf '%s=%q\n' "$name" "${!name}"
  done
}

cmd_quota() {
  local region_json="$REGION_JSON" project_json="$PROJECT_JSON" accelerators_json="$ACCELERATORS_JSON"
  if [ -z "$region_json" ]; then
    need_tools "$GCLOUD" "$PYTHON"
    say "enabling the Compute Engine and GKE APIs (needed to read quotas; free)"
    run "$GCLOUD" services enable compute.googleapis.com container.googleapis.com --project "$PROJECT"
    if [ "$DRY_RUN" -eq 1 ]; then
      run "$GCLOUD" compute regions describe "$REGION" --project "$PROJECT" --format=json
      run "$GCLOUD" compute project-info describe --project "$PROJECT" --format=json
      run "$GCLOUD" compute accelerator-types list --project "$PROJECT" --filter="zone:$ZONE" --format=json
      echo "# then k8s/quota.py compares them with the preset (k8s/gke.sh quota --region-json FILE checks saved output)"
      return 0
    fi
    region_json="$(tmp_file .json)"
    project_json="$(tmp_file .json)"
    accelerators_json="$(tmp_file .json)"
    "$GCLOUD" compute regions describe "$REGION" --project "$PROJECT" --format=json >"$region_json" \
      || die 2 "could not read the quotas of region $REGION in project $PROJECT (is the Compute Engine API enabled, and billing linked?)"
    "$GCLOUD" compute project-info describe --project "$PROJECT" --format=json >"$project_json" \
      || die 2 "could not read the project-wide quotas of $PROJECT"
    "$GCLOUD" compute accelerator-types list --project "$PROJECT" --filter="zone:$ZONE" --format=json >"$accelerators_json" \
      || die 2 "could not list the GPU types of zone $ZONE"
  else
    need_tools "$PYTHON"
  fi
  local args=(
    --region-json "$region_json" --project "$PROJECT" --zone "$ZONE"
    --gpu-types "$GPU_TYPES" --max-gpus "$MAX_GPUS" --gpu-machine-type "$GPU_MACHINE_TYPE"
    --consumer-machine-type "$CONSUMER_MACHINE_TYPE" --consumer-max-nodes "$CONSUMER_MAX_NODES"
    --default-machine-type "$DEFAULT_MACHINE_TYPE" --default-max-nodes "$DEFAULT_MAX_NODES"
    --provisioning "$PROVISIONING" --disk-type "$DISK_TYPE" --disk-size-gb "$DISK_SIZE_GB"
  )
  [ -z "$project_json" ] || args+=(--project-json "$project_json")
  [ -z "$accelerators_json" ] || args+=(--accelerators-json "$accelerators_json")
  "$PYTHON" "$HERE/quota.py" "${args[@]}"
}

cmd_credentials() {
  need_tools "$GCLOUD"
  run "$GCLOUD" container clusters get-credentials "$CLUSTER" --project "$PROJECT" --zone "$ZONE"
}

cmd_create() {
  need_tools "$GCLOUD"
  [ "$GPU_DRIVER" != "installer" ] || need_tools "$KUBECTL"
  if [ "$SKIP_QUOTA" -eq 0 ]; then
    cmd_quota || die 1 "not creating anything while quota is short (--skip-quota to try anyway)"
  fi
  local common=(--project "$PROJECT" --zone "$ZONE")
  local disks=(--disk-type "$DISK_TYPE" --disk-size "$DISK_SIZE_GB")
  local provisioning
  provisioning="$(provisioning_flags)"

  if exists "$GCLOUD" container clusters describe "$CLUSTER" "${common[@]}"; then
    say "cluster $CLUSTER exists in $ZONE; checking its node pools"
  else
    say "creating cluster $CLUSTER in the single zone $ZONE (a few minutes)"
    run "$GCLOUD" container clusters create "$CLUSTER" "${common[@]}" \
      --release-channel "$RELEASE_CHANNEL" \
      --workload-pool "$PROJECT.svc.id.goog" \
      --enable-dataplane-v2 \
      --enable-ip-alias \
      --machine-type "$DEFAULT_MACHINE_TYPE" \
      --num-nodes "$DEFAULT_MIN_NODES" \
      --enable-autoscaling --min-nodes "$DEFAULT_MIN_NODES" --max-nodes "$DEFAULT_MAX_NODES" \
      "${disks[@]}"
  fi

  if exists "$GCLOUD" container node-pools describe consumer-pool --cluster "$CLUSTER" "${common[@]}"; then
    say "consumer-pool exists"
  else
    say "creating consumer-pool: $PROVISIONING $CONSUMER_MACHINE_TYPE, 0..$CONSUMER_MAX_NODES nodes"
    # shellcheck disable=SC2086 # $provisioning is one flag or none
    run "$GCLOUD" container node-pools create consumer-pool --cluster "$CLUSTER" "${common[@]}" \
      --machine-type "$CONSUMER_MACHINE_TYPE" $provisioning \
      --num-nodes 0 --enable-autoscaling --min-nodes 0 --max-nodes "$CONSUMER_MAX_NODES" \
      --workload-metadata GKE_METADATA \
      "${disks[@]}"
  fi

  local accelerator pool driver="$GPU_DRIVER"
  [ "$GPU_DRIVER" != "installer" ] || driver="disabled"
  for accelerator in $GPU_TYPES; do
    pool="$(gpu_pool "$accelerator")"
    if exists "$GCLOUD" container node-pools describe "$pool" --cluster "$CLUSTER" "${common[@]}"; then
      say "$pool exists"
      continue
    fi
    say "creating $pool: $PROVISIONING $GPU_MACHINE_TYPE + 1 $accelerator, 0..$MAX_GPUS nodes, tainted"
    # shellcheck disable=SC2086 # $provisioning is one flag or none
    run "$GCLOUD" container node-pools create "$pool" --cluster "$CLUSTER" "${common[@]}" \
      --machine-type "$GPU_MACHINE_TYPE" \
      --accelerator "type=$accelerator,count=1,gpu-driver-version=$driver" $provisioning \
      --num-nodes 0 --enable-autoscaling --min-nodes 0 --max-nodes "$MAX_GPUS" \
      --node-taints nvidia.com/gpu=present:NoSchedule \
      --workload-metadata GKE_METADATA \
      "${disks[@]}"
  done

  cmd_credentials
  if [ "$GPU_DRIVER" = "installer" ]; then
    say "installing the NVIDIA driver with GKE's DaemonSet for COS"
    run "$KUBECTL" apply -f "$NVIDIA_DRIVER_INSTALLER_URL"
  else
    say "GKE installs the NVIDIA driver ($GPU_DRIVER) on each GPU node as it starts"
  fi
  say "cluster ready; next: k8s/gke.sh bucket, registry, images, models, install-monitoring"
}

# k8s/bucket-lifecycle.json with every rule's age set to BUCKET_TTL_DAYS.
lifecycle_file() {
  local out
  out="$(tmp_file .json)"
  "$PYTHON" - "$HERE/bucket-lifecycle.json" "$BUCKET_TTL_DAYS" >"$out" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
for rule in doc["rule"]:
    rule["condition"]["age"] = int(sys.argv[2])
print(json.dumps(doc, indent=2))
PY
  echo "$out"
}

cmd_bucket() {
  need_tools "$GCLOUD" "$PYTHON"
  run "$GCLOUD" services enable storage.googleapis.com iam.googleapis.com --project "$PROJECT"
  if exists "$GCLOUD" storage buckets describe "gs://$BUCKET" --project "$PROJECT"; then
    say "bucket gs://$BUCKET exists"
  else
    say "creating gs://$BUCKET in $REGION (the cluster's region: no egress between them)"
    run "$GCLOUD" storage buckets create "gs://$BUCKET" --project "$PROJECT" --location "$REGION" \
      --uniform-bucket-level-access --public-access-prevention
  fi
  say "lifecycle: uploads/ and output/ are deleted $BUCKET_TTL_DAYS days after they were written"
  run "$GCLOUD" storage buckets update "gs://$BUCKET" --project "$PROJECT" \
    --lifecycle-file "$(lifecycle_file)"

  if exists "$GCLOUD" iam service-accounts describe "$GSA_EMAIL" --project "$PROJECT"; then
    say "service account $GSA_EMAIL exists"
  else
    run "$GCLOUD" iam service-accounts create "$GSA_NAME" --project "$PROJECT" \
      --display-name "Kiosk (frontend, consumers, TF Serving)"
  fi
  run "$GCLOUD" storage buckets add-iam-policy-binding "gs://$BUCKET" --project "$PROJECT" \
    --member "serviceAccount:$GSA_EMAIL" --role roles/storage.objectAdmin
  local ksa
  for ksa in $K8S_SERVICE_ACCOUNTS; do
    run "$GCLOUD" iam service-accounts add-iam-policy-binding "$GSA_EMAIL" --project "$PROJECT" \
      --role roles/iam.workloadIdentityUser \
      --member "serviceAccount:$PROJECT.svc.id.goog[$K8S_NAMESPACE/$ksa]"
  done
  say "helm install ... --set bucket=$BUCKET --set workloadIdentity.gcpServiceAccount=$GSA_EMAIL"
}

cmd_registry() {
  need_tools "$GCLOUD"
  run "$GCLOUD" services enable artifactregistry.googleapis.com cloudbuild.googleapis.com --project "$PROJECT"
  if exists "$GCLOUD" artifacts repositories describe "$REGISTRY" --project "$PROJECT" --location "$REGION"; then
    say "repository $REGISTRY exists"
  else
    run "$GCLOUD" artifacts repositories create "$REGISTRY" --project "$PROJECT" --location "$REGION" \
      --repository-format docker --description "Kiosk images"
  fi
  say "images go to $IMAGE_PREFIX/kiosk-consumer and $IMAGE_PREFIX/kiosk-autoscaler"
}

cmd_images() {
  need_tools "$GCLOUD"
  say "building $IMAGE_PREFIX/kiosk-consumer:$TAG and $IMAGE_PREFIX/kiosk-autoscaler:$TAG with Cloud Build"
  run "$GCLOUD" builds submit "$ROOT" --project "$PROJECT" --config "$HERE/cloudbuild.yaml" \
    --substitutions "_IMAGE_PREFIX=$IMAGE_PREFIX,_TAG=$TAG"
  say "helm install ... --set images.consumer.repository=$IMAGE_PREFIX/kiosk-consumer --set images.consumer.tag=$TAG --set images.autoscaler.repository=$IMAGE_PREFIX/kiosk-autoscaler --set images.autoscaler.tag=$TAG"
}

cmd_models() {
  need_tools "$GCLOUD"
  local model
  local model paths=()
  for model in CytoplasmSegmentation DivisionScoring NuclearSegmentation WholeCellSegmentation; do
    [ -d "$ROOT/models/$model" ] || die 2 "no models/$model in $ROOT"
    paths+=("$ROOT/models/$model")
  done
  run "$GCLOUD" storage cp --recursive "${paths[@]}" "gs://$BUCKET/models/"
}

cmd_install_monitoring() {
  need_tools "$GCLOUD" "$KUBECTL" "$HELM"
  local adapter_values="$ROOT/helm/prometheus-adapter-values.yaml"
  [ -f "$adapter_values" ] || die 2 "$adapter_values is missing: it holds the adapter rules the HPAs need (helm/kiosk/README.md)"
  cmd_credentials
  run "$HELM" repo add prometheus-community "$PROMETHEUS_COMMUNITY_CHARTS" --force-update
  run "$HELM" repo update prometheus-community
  say "kube-prometheus-stack $KUBE_PROMETHEUS_STACK_VERSION (Prometheus scraping every 15 s, Grafana)"
  run "$HELM" upgrade --install kube-prometheus-stack prometheus-community/kube-prometheus-stack \
    --namespace "$MONITORING_NAMESPACE" --create-namespace \
    --version "$KUBE_PROMETHEUS_STACK_VERSION" \
    --values "$HERE/monitoring/kube-prometheus-stack-values.yaml" \
    --wait --timeout 15m
  say "prometheus-adapter $PROMETHEUS_ADAPTER_VERSION with Kiosk's external metrics"
  run "$HELM" upgrade --install prometheus-adapter prometheus-community/prometheus-adapter \
    --namespace "$MONITORING_NAMESPACE" \
    --version "$PROMETHEUS_ADAPTER_VERSION" \
    --values "$adapter_values" \
    --wait --timeout 10m
  say "DCGM exporter on the GPU nodes (DCGM_FI_DEV_GPU_UTIL on port 9400)"
  run "$KUBECTL" apply -f "$HERE/monitoring/dcgm-exporter.yaml"
  say "Grafana dashboard 'Kiosk' (picked up by Grafana's dashboard sidecar)"
  local dashboard="$HERE/monitoring/grafana-kiosk-dashboard.json"
  local kubectl
  kubectl="$(quote "$KUBECTL")"
  run_pipeline "$kubectl create configmap kiosk-grafana-dashboard --namespace $MONITORING_NAMESPACE \
--from-file $(quote "kiosk.json=$dashboard") --dry-run=client -o yaml \
| $kubectl label --local -f - grafana_dashboard=1 -o yaml | $kubectl apply -f -"
}

cmd_delete() {
  need_tools "$GCLOUD"
  confirm "Delete cluster $CLUSTER in $ZONE (project $PROJECT), with Redis and every job in it?"
  run "$GCLOUD" container clusters delete "$CLUSTER" --project "$PROJECT" --zone "$ZONE" --quiet
  say "the bucket gs://$BUCKET, the service account and the registry remain (k8s/gke.sh delete-data)"
}

cmd_delete_data() {
  need_tools "$GCLOUD"
  confirm "Delete gs://$BUCKET with every upload, result and model in it, the service account $GSA_EMAIL and the image repository $REGISTRY?"
  run "$GCLOUD" storage rm --recursive "gs://$BUCKET"
  run "$GCLOUD" iam service-accounts delete "$GSA_EMAIL" --project "$PROJECT" --quiet
  run "$GCLOUD" artifacts repositories delete "$REGISTRY" --project "$PROJECT" --location "$REGION" --quiet
}

settle_settings
case "$COMMAND" in
  env) cmd_env ;;
  quota) cmd_quota ;;
  create) cmd_create ;;
  credentials) cmd_credentials ;;
  bucket) cmd_bucket ;;
  registry) cmd_registry ;;
  images) cmd_images ;;
  models) cmd_models ;;
  install-monitoring) cmd_install_monitoring ;;
  delete) cmd_delete ;;
  delete-data) cmd_delete_data ;;
  *) die 2 "unknown command '$COMMAND' (see k8s/gke.sh --help)" ;;
esac
