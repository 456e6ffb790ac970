"""Typed settings for every Kiosk service, read from ``KIOSK_*`` environment variables.

One class per service; fields every service needs live in :class:`CommonSettings`. Defaults work
for the local stack. Nothing here connects to anything: services build their settings in ``main``.
Job types declare their own settings (:class:`JobTypeSettings`) beside themselves.
:func:`settings_table` renders the README's table (``make settings-table`` writes it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kiosk.costs import PriceTable
from kiosk.keys import validate_queue_name
from kiosk.redis_url import check_redis_url, is_sentinel_url

ENV_PREFIX = "KIOSK_"
GIB = 1024**3


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


ModelRuntime = Literal["auto", "onnx", "tensorflow"]
"""What runs a version in the embedded model server (``KIOSK_MODEL_RUNTIME``)."""


class CommonSettings(BaseSettings):
    """Settings shared by every service."""

    service_name: ClassVar[str] = "all"
    # Errors say what is wrong without echoing the value: URLs and tokens may hold secrets.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", frozen=True, hide_input_in_errors=True
    )

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis that holds the queues and job hashes: redis://, rediss://, unix://, "
        "or redis+sentinel://HOST[:PORT][,HOST[:PORT]...]/MASTER[/DB] for a master that "
        "Sentinels fail over (see Redis with Sentinel).",
    )
    redis_min_replicas: int | None = Field(
        None,
        ge=0,
        description="Replicas that must acknowledge a job's creation and every end of a claim "
        "(done, failed, retried, handed back) before Kiosk answers (Redis WAIT); unset: 1 with "
        "a redis+sentinel:// URL, 0 (never wait) otherwise.",
    )
    redis_replica_timeout: float = Field(
        1.0,
        gt=0,
        description="Seconds a write waits for KIOSK_REDIS_MIN_REPLICAS replicas; past it the "
        "write stands on the master alone and a warning is logged.",
    )
    bucket: str = Field(
        "file://.kiosk/bucket",
        description="Where images and results live: file://DIR (a local directory) or gs://NAME.",
    )
    queues: Annotated[tuple[str, ...], NoDecode] = Field(
        ("segmentation", "tracking", "mesmer"),
        description="Comma-separated job types; each is a Redis queue (zips go to TYPE-zip). "
        "The one list the frontend, consumers and janitor share.",
    )
    public_url: str = Field(
        "http://127.0.0.1:8080",
        description="Base URL where clients reach the frontend; output_url and imageURL start "
        "with it.",
    )
    max_attempts: int = Field(
        3, ge=1, description="Attempts a job gets (crashes and errors) before it is failed."
    )
    finished_ttl: int = Field(
        86400,
        ge=1,
        description="Seconds a finished job hash lives when no client sets its expiry.",
    )
    dead_letter_max: int = Field(
        10000, ge=1, description="Failed-job copies kept per queue on the dead-letter list."
    )
    log_level: str = Field("INFO", description="Python logging level.")

    @field_validator("queues", mode="before")
    @classmethod
    def _parse_queues(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        return check_redis_url(value)

    def replicas_to_wait_for(self) -> int:
        """KIOSK_REDIS_MIN_REPLICAS, or its default: 1 behind Sentinel, 0 otherwise."""
        if self.redis_min_replicas is not None:
            return self.redis_min_replicas
        return 1 if is_sentinel_url(self.redis_url) else 0

    @field_validator("queues")
    @classmethod
    def _check_queues(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            validate_queue_name(name)
        if len(set(value)) != len(value):
            raise ValueError(f"job types are listed twice in {','.join(value)!r}")
        return value

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")


class ListenSettings(CommonSettings):
    """Where the frontend listens: read by the frontend itself and by ``kiosk up``."""

    host: str = Field("127.0.0.1", description="Address the frontend listens on.")
    port: int = Field(8080, ge=1, le=65535, description="Port the frontend listens on.")


class FrontendSettings(ListenSettings):
    """The HTTP API (``python -m frontend``)."""

    service_name: ClassVar[str] = "frontend"

    api_token: SecretStr | None = Field(
        None,
        min_length=1,
        description="The administrator's token ('Authorization: Bearer TOKEN'): sees every "
        "job and manages users (kiosk users). Set but empty is refused.",
    )
    anonymous: bool | None = Field(
        None,
        description="Whether a request without a token is served, as the anonymous user "
        "(kiosk-client and the ImageJ plugin send none); unset: yes unless KIOSK_API_TOKEN is "
        "set. The health checks, / and /docs are always open.",
    )
    max_upload_bytes: int = Field(
        2 * GIB, ge=1, description="Largest upload accepted, in bytes (larger ones get 413)."
    )
    default_expire: int = Field(
        3600, ge=1, description="Seconds used by /api/redis/expire when expireIn is missing."
    )
    session_ttl: int = Field(
        7 * 86400,
        ge=60,
        description="Seconds a portal sign-in (a session cookie) lasts.",
    )
    quota_waiting_jobs: int = Field(
        0,
        ge=0,
        description="Most jobs one user may have waiting to start, over every queue (a zip's "
        "images count once queued); a submission past it gets 429. 0: no limit. The "
        "administrator has none.",
    )
    group_quota_waiting_jobs: int = Field(
        0,
        ge=0,
        description="The same for all the users of a group together. 0: no limit.",
    )
    quota_bytes: int = Field(
        0,
        ge=0,
        description="Most bytes one user may store in the bucket (inputs and results, as the "
        "janitor last counted them); a submission while at or past it gets 429. 0: no limit.",
    )
    group_quota_bytes: int = Field(
        0,
        ge=0,
        description="The same for all the users of a group together. 0: no limit.",
    )
    body_idle_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds a request body may send nothing before the request is answered "
        "408 and dropped (an upload removes what it wrote).",
    )

    @property
    def anonymous_allowed(self) -> bool:
        return self.api_token is None if self.anonymous is None else self.anonymous


class PredictSettings(CommonSettings):
    """How a client reaches the TF-Serving-compatible model server over gRPC."""

    model_server: str = Field(
        "127.0.0.1:8500",
        description="host:port of the model server's gRPC endpoint (TensorFlow Serving or "
        "`kiosk serve`).",
    )
    predict_timeout: float = Field(
        60.0, gt=0, description="Deadline of one Predict call, in seconds."
    )
    predict_retries: int = Field(
        5,
        ge=0,
        description="Retries of a Predict call that failed with RESOURCE_EXHAUSTED or "
        "DEADLINE_EXCEEDED (exponential backoff with jitter).",
    )
    cold_start_wait: float = Field(
        300.0,
        ge=0,
        description="Seconds a client waits out UNAVAILABLE while a model server starts.",
    )
    grpc_max_message_bytes: int = Field(
        512 * 1024**2,
        ge=4 * 1024**2,
        description="Largest gRPC message sent or received (gRPC's default of 4 MiB is less "
        "than one 1024x1024 float32 tensor).",
    )
    grpc_channel_max_age: float = Field(
        120.0,
        ge=0,
        description="Seconds a gRPC channel to the model server is used before a fresh one "
        "resolves the target again, so that calls reach model servers the HPA added behind a "
        "`dns:///` target; 0 keeps one channel for the life of the process.",
    )


class ConsumerSettings(PredictSettings):
    """A consumer process (``python -m consumers QUEUE``)."""

    service_name: ClassVar[str] = "consumers"

    heartbeat_interval: float = Field(5.0, gt=0, description="Seconds between consumer heartbeats.")
    heartbeat_ttl: float = Field(
        20.0,
        gt=0,
        description="Seconds a heartbeat lives; once it lapses the janitor requeues the job.",
    )
    claim_timeout: float = Field(
        2.0, gt=0, description="Seconds a consumer blocks waiting for a job before looking again."
    )
    shutdown_grace: float = Field(
        20.0,
        ge=0,
        description="Seconds a consumer given SIGTERM may spend finishing the jobs it holds "
        "before it hands them back.",
    )
    job_type_plugins: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Extra job types as NAME=module:Class, comma-separated, for consumers "
        "defined outside this package.",
    )
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Port for the consumer's Prometheus metrics (0: off)."
    )
    gpu_type: str = Field(
        "V100",
        description="The model server's GPU, for each job's estimated cost (T4 or V100; "
        "kiosk/costs.py holds the price table).",
    )
    node_type: str = Field(
        "n1-highmem-2",
        description="The machine type of the consumer and GPU nodes, for the cost estimate.",
    )
    preemptible: bool = Field(
        True, description="Whether the nodes are preemptible, for the cost estimate."
    )
    consumers_per_node: int = Field(
        5, ge=1, description="Consumer pods sharing a CPU node, for the cost estimate."
    )

    @property
    def prices(self) -> PriceTable:
        return PriceTable.of(
            self.gpu_type, self.node_type, self.preemptible, self.consumers_per_node
        )

    @model_validator(mode="after")
    def _priced(self) -> ConsumerSettings:
        self.prices  # noqa: B018 - refuses a GPU or machine type the price table lacks
        return self

    @field_validator("job_type_plugins", mode="before")
    @classmethod
    def _parse_plugins(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("heartbeat_ttl")
    @classmethod
    def _ttl_outlives_interval(cls, value: float, info: Any) -> float:
        interval = info.data.get("heartbeat_interval")
        if interval is not None and value <= interval:
            raise ValueError(
                f"heartbeat_ttl ({value}) must be longer than heartbeat_interval ({interval})"
            )
        return value

    @model_validator(mode="after")
    def _ttl_outlives_a_claim(self) -> ConsumerSettings:
        """A claim writes the heartbeat before it blocks: it must still live when a job comes."""
        if self.heartbeat_ttl <= self.claim_timeout:
            raise ValueError(
                f"heartbeat_ttl ({self.heartbeat_ttl}) must be longer than claim_timeout "
                f"({self.claim_timeout})"
            )
        return self


class JobTypeSettings(BaseSettings):
    """Settings a job type declares for itself (its consumer's ``settings_class``), read from
    ``KIOSK_*`` like a service's; ``service_name`` is the job type's name in the README."""

    service_name: ClassVar[str] = "job type"
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)


class JanitorSettings(CommonSettings):
    """The janitor (``python -m kiosk.janitor``)."""

    service_name: ClassVar[str] = "janitor"

    janitor_interval: float = Field(
        2.0,
        gt=0,
        description="Seconds between janitor sweeps for consumers whose heartbeat lapsed.",
    )
    retention: int = Field(
        3 * 86400,
        ge=0,
        description="Seconds files in a file:// bucket's uploads/ and output/ are kept after "
        "they were last written; the janitor deletes older ones, except inputs of jobs that "
        "have not ended (0: kept forever). gs:// buckets: the bucket's lifecycle rules instead.",
    )
    storage_census_interval: float = Field(
        600.0,
        ge=0,
        description="Seconds between counts of what each user stores in the bucket (listing "
        "uploads/ and output/), which the byte quotas read (0: never count).",
    )


class AutoscalerSettings(CommonSettings):
    """The autoscaler (``python -m autoscaler``) and its metrics exporter; ``kiosk up`` runs the
    same policy over local processes. Defaults are the DeepCell Kiosk paper's."""

    service_name: ClassVar[str] = "autoscaler"

    autoscaler_backend: Literal["kubernetes", "local"] = Field(
        "kubernetes",
        description="What the autoscaler scales: Deployments through the Kubernetes API, or "
        "the processes of `kiosk up` (local).",
    )
    scaling_policy: Literal["paper", "backlog"] = Field(
        "paper",
        description="How replicas are chosen. paper: model servers 0<->1 by demand and 1->N by "
        "GPU utilisation, consumers by the paper's consumer metric (on a cluster the 1->N steps "
        "are the chart's HPAs). backlog: model servers from the backlog and arrival rate, "
        "consumers from what those servers can take; the autoscaler sets every count itself.",
    )
    autoscaler_interval: float = Field(
        5.0, gt=0, description="Seconds between the autoscaler's looks at the queues."
    )
    idle_grace: float = Field(
        300.0,
        ge=0,
        description="Seconds without work before the model server (and a queue's consumers) "
        "scale to zero.",
    )
    consumer_target: float = Field(
        0.15, gt=0, description="Target of the consumer metric (the paper's HPA target)."
    )
    consumer_ratio_limit: float = Field(
        150,
        gt=0,
        description="Consumers per model server past which the consumer metric asks for fewer.",
    )
    gpu_target: float = Field(
        70.0,
        gt=0,
        le=100,
        description="GPU utilisation (percent) the paper policy's model servers scale to.",
    )
    scale_down_window: float = Field(
        300.0, ge=0, description="Seconds of recommendations a scale-down takes the highest of."
    )
    max_model_servers: int = Field(
        1,
        ge=1,
        description="Most model servers the autoscaler asks for (the paper policy on a "
        "cluster leaves 1->N to the HPA, whose maxReplicas the chart sets to the same value).",
    )
    max_consumers: int = Field(
        0,
        ge=0,
        description="Most consumers per queue the autoscaler asks for, unless the queue is in "
        "KIOSK_MAX_CONSUMERS_BY_QUEUE; 0: the CPU count.",
    )
    max_consumers_by_queue: Annotated[dict[str, int], NoDecode] = Field(
        {},
        description="Per-queue caps as QUEUE=N, comma-separated (a zip queue by its own name, "
        "e.g. segmentation=50,segmentation-zip=4); the chart sets them from jobTypes.",
    )
    kubernetes_namespace: str = Field(
        "", description="Namespace of the Deployments; empty: the autoscaler pod's own."
    )
    model_server_deployment: str = Field(
        "tf-serving", description="Deployment of the model server (scaled 0<->1)."
    )
    consumer_deployment_prefix: str = Field(
        "consumer-",
        description="Consumer Deployments are PREFIX + queue (consumer-segmentation, "
        "consumer-segmentation-zip).",
    )
    exporter_port: int = Field(
        9102,
        ge=0,
        le=65535,
        description="Port of the autoscaler's Prometheus exporter: queue demand, consumers, "
        "replicas, the consumer metric (0: off).",
    )
    model_server_metrics_url: str = Field(
        "",
        description="Where the model server's Prometheus metrics are, for its busy ratio "
        "(local stand-in for GPU utilisation); empty: not read.",
    )

    @field_validator("max_consumers_by_queue", mode="before")
    @classmethod
    def _parse_caps(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        caps = {}
        for item in _split_csv(value):
            queue, sep, count = item.partition("=")
            if not sep:
                raise ValueError(f"{item!r} is not QUEUE=N")
            caps[queue.strip()] = count.strip()
        return caps

    @field_validator("max_consumers_by_queue")
    @classmethod
    def _check_caps(cls, value: dict[str, int]) -> dict[str, int]:
        for queue, count in value.items():
            if count < 1:
                raise ValueError(f"{queue}={count}: a queue's cap must be at least 1")
        return value


class ModelServerSettings(CommonSettings):
    """The embedded model server (``kiosk serve``); models come from ``{bucket}/models/``."""

    service_name: ClassVar[str] = "model server"

    model_server_host: str = Field(
        "127.0.0.1", description="Address the model server's gRPC and HTTP ports listen on."
    )
    model_server_port: int = Field(
        8500, ge=1, le=65535, description="gRPC port of the model server (TF Serving's 8500)."
    )
    model_server_http_port: int = Field(
        8501,
        ge=0,
        le=65535,
        description="HTTP port for health, model status and Prometheus metrics (0: off).",
    )
    models: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Comma-separated model names to serve; empty serves every model under "
        "{bucket}/models/.",
    )
    model_poll_interval: float = Field(
        2.0, gt=0, description="Seconds between looks for new model versions in the bucket."
    )
    max_batch_size: int = Field(
        32, ge=1, description="Most items the model server batches into one inference."
    )
    batch_timeout: float = Field(
        0.0,
        ge=0,
        description="Seconds the model server waits for more requests to fill a batch; 0 "
        "waits for none, and requests already queued still share an inference (on CPUs, "
        "waiting only adds latency).",
    )
    model_runtime: ModelRuntime = Field(
        "auto",
        description="What runs a model version in the embedded model server: auto, ONNX "
        "Runtime where the version carries an ONNX export (onnx/ beside saved_model.pb; the "
        "bundled models do) and TensorFlow otherwise; onnx, exports only; tensorflow, always "
        "TensorFlow. TF Serving, the cluster's server, reads the SavedModel either way.",
    )
    inference_workers: int = Field(
        0,
        ge=0,
        description="Batches of one model version the model server runs at once; 0: as its "
        "runtime suits, 2 for ONNX Runtime on a CPU of several cores (a request that finds the "
        "version idle gets every core, requests side by side a core each), else 1 (a GPU, "
        "TensorFlow).",
    )
    model_cache_dir: str = Field(
        ".kiosk/model-cache",
        description="Local copy of model versions from a gs:// bucket.",
    )

    @field_validator("models", mode="before")
    @classmethod
    def _parse_models(cls, value: Any) -> Any:
        return _split_csv(value)


class StackSettings(ListenSettings):
    """``kiosk up``: the local stack."""

    service_name: ClassVar[str] = "kiosk up"

    data_dir: str = Field(
        ".kiosk",
        description="Directory for the local stack's Redis data (AOF), bucket and logs.",
    )
    consumers_per_queue: int = Field(
        0,
        ge=0,
        description="0: the autoscaler runs the model server and consumers as the work needs "
        "them (model server from the first job until an idle grace, consumers up to "
        "KIOSK_MAX_CONSUMERS). N: exactly N consumers per job type and an always-on model server.",
    )
    embedded_model_server: bool = Field(
        True,
        description="Start the embedded model server (`kiosk serve`); false: use the model "
        "server at KIOSK_MODEL_SERVER instead.",
    )
    models_dir: str = Field(
        "",
        description="Directory of SavedModels ({Name}/{version}/) copied into the bucket's "
        "models/ at start; empty: the models bundled with Kiosk.",
    )
    redis_appendfsync: str = Field(
        "everysec",
        pattern="^(always|everysec|no)$",
        description="Redis AOF fsync policy for the local stack (always, everysec or no).",
    )


SERVICE_SETTINGS: tuple[type[CommonSettings], ...] = (
    FrontendSettings,
    ConsumerSettings,
    JanitorSettings,
    AutoscalerSettings,
    ModelServerSettings,
    StackSettings,
)


def settings_table(job_types: Sequence[type[JobTypeSettings]] = ()) -> str:
    """The README's settings table, one row per environment variable: the services', with the
    job types' own after the consumers'."""
    classes: list[type[CommonSettings] | type[JobTypeSettings]] = [CommonSettings]
    for service_cls in SERVICE_SETTINGS:
        classes.append(service_cls)
        if service_cls is ConsumerSettings:
            classes += job_types
    rows: dict[str, tuple[str, str, list[str]]] = {}
    for cls in classes:
        service = cls.service_name
        for name, field in cls.model_fields.items():
            if cls is not CommonSettings and name in CommonSettings.model_fields:
                continue
            env = ENV_PREFIX + name.upper()
            default = _format_default(field.default)
            if env in rows:
                rows[env][2].append(service)
            else:
                rows[env] = (default, field.description or "", [service])
    lines = ["| Variable | Default | Used by | Meaning |", "|---|---|---|---|"]
    for env, (default, description, services) in rows.items():
        lines.append(f"| `{env}` | {default} | {', '.join(services)} | {description} |")
    return "\n".join(lines) + "\n"


def _format_default(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, tuple):
        return f"`{','.join(value)}`" if value else "(empty)"
    if isinstance(value, dict):
        return f"`{','.join(f'{k}={v}' for k, v in value.items())}`" if value else "(empty)"
    return f"`{value}`"
