{{/*
Names. The two Deployments the autoscaler scales keep their own names (modelServer.name,
"consumer-" + queue), which the autoscaler reads from the settings ConfigMap; everything else
is {release}-{component}. The recording rules aggregate over the whole Prometheus, so one Kiosk
runs per cluster.
*/}}
{{- define "kiosk.fullname" -}}
{{- if contains "kiosk" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-kiosk" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kiosk.name" -}}
{{- printf "%s-%s" (include "kiosk.fullname" .ctx) .component -}}
{{- end -}}

{{/* Prefix of the consumer Deployments (KIOSK_CONSUMER_DEPLOYMENT_PREFIX). */}}
{{- define "kiosk.consumerPrefix" -}}consumer-{{- end -}}

{{/* The consumer metric's target: autoscaler.policy.CONSUMER_TARGET, which the recording
rules also embed (regime 2 is 0.75 x target), so it is not a value. tests/test_chart.py checks
both. As a Kubernetes quantity and as a number. */}}
{{- define "kiosk.consumerTargetQuantity" -}}150m{{- end -}}
{{- define "kiosk.consumerTarget" -}}0.15{{- end -}}

{{- define "kiosk.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: kiosk
{{ include "kiosk.selectorLabels" . }}
{{- end -}}

{{/* Pod template labels: no chart version, so a chart release alone restarts nothing. */}}
{{- define "kiosk.podLabels" -}}
app.kubernetes.io/part-of: kiosk
{{ include "kiosk.selectorLabels" . }}
{{- end -}}

{{- define "kiosk.selectorLabels" -}}
app.kubernetes.io/name: kiosk
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The queues, zip queues included, in kiosk.jobs.all_queues order: a JSON list. */}}
{{- define "kiosk.allQueues" -}}
{{- $flat := list -}}
{{- range .Values.jobTypes -}}
{{- $flat = append $flat .name -}}
{{- $flat = append $flat (printf "%s-zip" .name) -}}
{{- end -}}
{{- toJson $flat -}}
{{- end -}}

{{/* Most consumers per queue, zip queues included, from each job type's entry or
consumers.defaults: a JSON object queue -> maxReplicas. The consumer HPAs (paper policy) and
KIOSK_MAX_CONSUMERS_BY_QUEUE (the autoscaler's caps with the backlog policy) both read it. */}}
{{- define "kiosk.consumerCaps" -}}
{{- $d := .Values.consumers.defaults -}}
{{- $caps := dict -}}
{{- range .Values.jobTypes -}}
{{- $zip := mergeOverwrite (deepCopy $d.zip) (.zip | default dict) -}}
{{- $_ := set $caps .name (.maxReplicas | default $d.maxReplicas) -}}
{{- $_ := set $caps (printf "%s-zip" .name) $zip.maxReplicas -}}
{{- end -}}
{{- toJson $caps -}}
{{- end -}}

{{/* Whether the chart renders HPAs for TF Serving and the consumers: with the paper policy
they do 1..N; with the backlog policy the autoscaler sets every count itself. */}}
{{- define "kiosk.hpas" -}}
{{- if eq .Values.autoscaling.policy "paper" -}}true{{- end -}}
{{- end -}}

{{/* Check the job-type list: the names Kiosk refuses (kiosk.settings.validate_queue_name),
names that cannot be Kubernetes object names, and duplicates. */}}
{{- define "kiosk.checkJobTypes" -}}
{{- if not .Values.jobTypes -}}
{{- fail "jobTypes is empty: list at least one job type (e.g. - name: segmentation)" -}}
{{- end -}}
{{- $seen := dict -}}
{{- range .Values.jobTypes -}}
{{- if not (regexMatch "^[a-z0-9]([a-z0-9.-]{0,48}[a-z0-9])?$" (toString .name)) -}}
{{- fail (printf "jobTypes: %q is not a usable job type: use lower-case letters, digits, '.' and '-' (at most 50, starting and ending with a letter or digit; '_' cannot be part of a Deployment name)" (toString .name)) -}}
{{- end -}}
{{- if or (eq .name "kiosk") (hasPrefix "processing-" .name) (hasSuffix "-zip" .name) -}}
{{- fail (printf "jobTypes: %q is reserved ('kiosk', 'processing-*' and '*-zip'); zip queues are added for every job type" .name) -}}
{{- end -}}
{{- if hasKey $seen .name -}}
{{- fail (printf "jobTypes: %q is listed twice" .name) -}}
{{- end -}}
{{- $_ := set $seen .name true -}}
{{- end -}}
{{- end -}}

{{/* An image reference: repository[:tag][@digest]; a missing tag is the chart's appVersion
when `appVersion` is passed. "latest" without a digest is refused. */}}
{{- define "kiosk.image" -}}
{{- $tag := .image.tag | default .appVersion | toString -}}
{{- if and (not .image.digest) (or (not $tag) (eq $tag "latest")) -}}
{{- fail (printf "images.%s: pin a tag other than 'latest' or a digest" .key) -}}
{{- end -}}
{{- .image.repository -}}
{{- if $tag -}}:{{ $tag }}{{- end -}}
{{- if .image.digest -}}@{{ .image.digest }}{{- end -}}
{{- end -}}

{{- define "kiosk.bucket" -}}
{{- $b := required "set bucket: the GCS bucket for uploads, results and models (--set bucket=NAME)" .Values.bucket -}}
{{- trimPrefix "gs://" $b | trimSuffix "/" -}}
{{- end -}}

{{- define "kiosk.publicUrl" -}}
{{- if .Values.publicUrl -}}
{{- .Values.publicUrl | trimSuffix "/" -}}
{{- else if and .Values.ingress.enabled .Values.ingress.host -}}
{{- printf "%s://%s" (ternary "https" "http" .Values.ingress.tls.enabled) .Values.ingress.host -}}
{{- else -}}
http://127.0.0.1:8080
{{- end -}}
{{- end -}}

{{/* Replicas of a Deployment the autoscaler and an HPA own: 0 at install, the live count on
upgrade (lookup), so `helm upgrade` never resets a running fleet. */}}
{{- define "kiosk.ownedReplicas" -}}
{{- $live := lookup "apps/v1" "Deployment" .ctx.Release.Namespace .name -}}
{{- if and $live $live.spec (hasKey $live.spec "replicas") -}}
{{- $live.spec.replicas -}}
{{- else -}}
0
{{- end -}}
{{- end -}}

{{/* Pod-level pieces every Kiosk pod shares. */}}
{{- define "kiosk.podCommon" -}}
{{- with .Values.imagePullSecrets -}}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{ end -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* The settings every Kiosk container reads, and a writable /tmp (the root is read-only). */}}
{{- define "kiosk.containerCommon" -}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
envFrom:
  - configMapRef:
      name: {{ include "kiosk.name" (dict "ctx" . "component" "settings") }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
{{- end -}}

{{- define "kiosk.checksum" -}}
checksum/settings: {{ include (print .Template.BasePath "/settings.yaml") . | sha256sum }}
{{- end -}}

{{- define "kiosk.behavior" -}}
behavior:
  scaleUp:
    stabilizationWindowSeconds: 0
    selectPolicy: Max
    policies:
      - type: Pods
        value: {{ .Values.autoscaling.scaleUpPods }}
        periodSeconds: {{ .Values.autoscaling.periodSeconds }}
      - type: Percent
        value: {{ .Values.autoscaling.scaleUpPercent }}
        periodSeconds: {{ .Values.autoscaling.periodSeconds }}
  scaleDown:
    stabilizationWindowSeconds: {{ .Values.autoscaling.scaleDownWindowSeconds }}
    selectPolicy: Max
    policies:
      - type: Percent
        value: 100
        periodSeconds: {{ .Values.autoscaling.periodSeconds }}
{{- end -}}

{{/* TF Serving's three config files (text protobuf), as ConfigMap data. */}}
{{- define "kiosk.modelServerConfig" -}}
{{- $m := .Values.modelServer -}}
{{- $bucket := include "kiosk.bucket" . -}}
models.config: |
  model_config_list {
  {{- range $m.models }}
    config {
      name: {{ .name | quote }}
      base_path: {{ printf "gs://%s/models/%s" $bucket .name | quote }}
      model_platform: "tensorflow"
    }
  {{- end }}
  }
batching.config: |
  max_batch_size { value: {{ $m.batching.maxBatchSize }} }
  batch_timeout_micros { value: {{ $m.batching.batchTimeoutMicros }} }
  max_enqueued_batches { value: {{ $m.batching.maxEnqueuedBatches }} }
  num_batch_threads { value: {{ $m.batching.numBatchThreads }} }
monitoring.config: |
  prometheus_config {
    enable: true
    path: "/monitoring/prometheus/metrics"
  }
{{- end -}}

{{/* KIOSK_* settings the chart derives from other values: refused in `settings` and in a job
type's `env`, so that (for one) KIOSK_QUEUES always is the jobTypes list. */}}
{{- define "kiosk.ownedSettings" -}}
{{- list "KIOSK_QUEUES" "KIOSK_REDIS_URL" "KIOSK_BUCKET" "KIOSK_PUBLIC_URL" "KIOSK_HOST" "KIOSK_PORT" "KIOSK_MODEL_SERVER" "KIOSK_SHUTDOWN_GRACE" "KIOSK_METRICS_PORT" "KIOSK_EXPORTER_PORT" "KIOSK_AUTOSCALER_BACKEND" "KIOSK_MODEL_SERVER_DEPLOYMENT" "KIOSK_CONSUMER_DEPLOYMENT_PREFIX" "KIOSK_KUBERNETES_NAMESPACE" "KIOSK_IDLE_GRACE" "KIOSK_CONSUMER_TARGET" "KIOSK_GPU_TARGET" "KIOSK_SCALE_DOWN_WINDOW" "KIOSK_MAX_MODEL_SERVERS" "KIOSK_MAX_CONSUMERS_BY_QUEUE" "KIOSK_SCALING_POLICY" "KIOSK_JOB_TYPE_PLUGINS" "KIOSK_API_TOKEN" "KIOSK_MAX_UPLOAD_BYTES" | toJson -}}
{{- end -}}

{{/* Redis. Both layouts are the StatefulSet {release}-redis with the same selector, service
name and volume claim, so switching redis.sentinel.enabled on a release updates it in place:
pod 0 keeps its data and starts as the master. */}}
{{- define "kiosk.redisHeadless" -}}
{{- include "kiosk.name" (dict "ctx" . "component" "redis") }}-headless
{{- end -}}

{{/* The Redis nodes with Sentinel, pod 0 first: their DNS names under the headless Service,
space-separated (the nodes' own NODES). */}}
{{- define "kiosk.redisNodes" -}}
{{- $name := include "kiosk.name" (dict "ctx" . "component" "redis") -}}
{{- $domain := printf "%s.%s.svc.%s" (include "kiosk.redisHeadless" .) .Release.Namespace .Values.clusterDomain -}}
{{- $nodes := list -}}
{{- range $i := until 3 -}}
{{- $nodes = append $nodes (printf "%s-%d.%s" $name $i $domain) -}}
{{- end -}}
{{- join " " $nodes -}}
{{- end -}}

{{/* KIOSK_REDIS_URL: the one Redis, or the three Sentinels (redis+sentinel://, see
kiosk/redis_url.py). */}}
{{- define "kiosk.redisUrl" -}}
{{- $r := .Values.redis -}}
{{- if $r.sentinel.enabled -}}
{{- $members := list -}}
{{- range splitList " " (include "kiosk.redisNodes" .) -}}
{{- $members = append $members (printf "%s:%d" . (int $r.sentinel.port)) -}}
{{- end -}}
{{- printf "redis+sentinel://%s/%s/0" (join "," $members) $r.sentinel.masterName -}}
{{- else -}}
{{- printf "redis://%s:%d/0" (include "kiosk.name" (dict "ctx" . "component" "redis")) (int $r.port) -}}
{{- end -}}
{{- end -}}

{{- define "kiosk.redisClaim" -}}
- metadata:
    name: data
    labels:
      {{- include "kiosk.selectorLabels" (dict "ctx" . "component" "redis") | nindent 6 }}
  spec:
    accessModes: ["ReadWriteOnce"]
    {{- with .Values.redis.persistence.storageClass }}
    storageClassName: {{ . }}
    {{- end }}
    resources:
      requests:
        storage: {{ .Values.redis.persistence.size }}
{{- end -}}
