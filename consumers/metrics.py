"""Prometheus metrics a consumer exports about its own work."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

# In the default registry (what KIOSK_METRICS_PORT serves) because the job type that retries,
# segmentation, counts its own retries and has no handle on the worker's ConsumerMetrics.
PREDICT_RETRIES = Counter(
    "kiosk_consumer_predict_retries_total",
    "Predict calls re-sent to the model server after RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED "
    "or UNAVAILABLE.",
    ["queue"],
)


class ConsumerMetrics:
    """Counters and histograms, labelled by queue, that the worker feeds. The process's
    default registry is what ``KIOSK_METRICS_PORT`` serves; tests pass their own."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.jobs = Counter(
            "kiosk_consumer_jobs_total",
            "Attempts a consumer ended, by outcome: done, failed, retried, handed_back, "
            "lost (taken over), cancelled (deleted or expired), unsettled (Redis unreachable).",
            ["queue", "outcome"],
            registry=registry,
        )
        self.job_seconds = Histogram(
            "kiosk_consumer_job_duration_seconds",
            "Wall time of one attempt at a job, claim to settle.",
            ["queue"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "kiosk_consumer_stage_duration_seconds",
            "Wall time of one stage of a job (download, preprocess, predict, ...).",
            ["queue", "stage"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.busy = Gauge(
            "kiosk_consumer_busy",
            "Jobs the consumer holds: 0 while it waits for one, 2 while one job finishes "
            "(writes its outputs) and the next predicts.",
            ["queue"],
            registry=registry,
        )

    def holding(self, queue: str, jobs: int) -> None:
        self.busy.labels(queue).set(jobs)

    def stage_timed(self, queue: str, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(queue, stage).observe(seconds)

    def settled(self, queue: str, outcome: str, seconds: float) -> None:
        self.jobs.labels(queue, outcome).inc()
        self.job_seconds.labels(queue).observe(seconds)
