"""What a job type is: a :class:`Consumer` subclass with a ``process`` method.

The worker (:mod:`consumers.worker`) claims jobs, heartbeats, records timings and settles the
outcome; a job type only turns one :class:`Job` into a :class:`Result`, raising
:class:`JobError` for problems the user must fix (those fail at once, without retries).
"""

from __future__ import annotations

import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import ClassVar

from kiosk.costs import PriceTable, Usage, recorded_usage, stage_usage
from kiosk.jobs import JobRequest, Stage, Stages, creation_fields
from kiosk.keys import JobField, Status, output_prefix
from kiosk.queue import Claim, JobQueue, Outcome, ParentGone
from kiosk.settings import ConsumerSettings, JobTypeSettings
from kiosk.storage import Bucket, ObjectNotFound


class JobError(Exception):
    """A problem with the job itself (bad input, unknown option): fail now, say what to do."""


class JobLost(Exception):
    """The job was deleted, expired or taken over by another consumer: stop working on it."""

    def __init__(self, message: str, outcome: Outcome = Outcome.LOST) -> None:
        super().__init__(message)
        self.outcome = outcome  # GONE: deleted or expired; LOST: taken over


@dataclass(frozen=True)
class Result:
    """What a finished job leaves: its main output in the bucket, and any extra fields."""

    output_file_name: str
    fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Finish:
    """The rest of a job once the model is done with it (writing and uploading its outputs).

    A job type that returns one lets its consumer keep the model server busy: the worker runs
    ``run`` on a second thread while it claims and predicts the next job. One job finishes at
    a time, so a consumer holds at most two jobs.
    """

    run: Callable[[], Result]


@dataclass(frozen=True)
class Waiting:
    """A zip parent whose children are queued: it waits in ``waiting`` without holding this
    consumer, and comes back to the queue when its last child ends."""

    fields: Mapping[str, str] = field(default_factory=dict)
    woken_early: bool = False
    """A parent the queue woke early (``wake_at``) that parks again: its claim started no job,
    so the queue's pace does not count it."""


class Job:
    """A claimed job as a job type sees it."""

    def __init__(
        self,
        claim: Claim,
        bucket: Bucket,
        update: Callable[[Mapping[str, object]], None],
        on_stage: Callable[[Stage, float], None] = lambda stage, seconds: None,
    ) -> None:
        self.key = claim.key
        self.queue = claim.queue
        self.attempt = claim.attempt
        self.fields: dict[str, str] = dict(claim.fields)
        self._earlier_usage = recorded_usage(claim.fields)  # of the attempts before this one
        self.bucket = bucket
        self._update = update
        self._on_stage = on_stage
        self.timings: dict[JobField, float] = {}
        self.outputs: list[str] = []
        """Keys of the results written so far (removed if the job turns out deleted)."""
        self._unwritten: dict[str, str] = {}

    def attempt_usage(self, prices: PriceTable) -> Usage:
        """What this attempt has used so far."""
        return stage_usage(self.timings, prices)

    def usage_fields(self, prices: PriceTable) -> dict[str, str]:
        """The job's GPU seconds, CPU seconds and cost over every attempt, this one's so far
        included: what the worker writes when it settles the attempt."""
        return (self._earlier_usage + stage_usage(self.timings, prices)).fields()

    def get(self, name: JobField, default: str = "") -> str:
        return self.fields.get(name) or default

    def update(self, **fields: object) -> None:
        """Write fields (and any held-back timings) to the job hash; raises :class:`JobLost` if
        the job is no longer ours."""
        written = {**self._unwritten, **{k: str(v) for k, v in fields.items()}}
        self._update(written)
        self._unwritten.clear()
        self.fields.update(written)

    def unwritten(self) -> dict[str, str]:
        """Fields held back until the next write; the worker adds them to the job's settling."""
        held, self._unwritten = self._unwritten, {}
        self.fields.update(held)
        return held

    def set_status(self, status: Status, progress: int | None = None) -> None:
        fields: dict[str, object] = {JobField.STATUS: status}
        if progress is not None:
            fields[JobField.PROGRESS] = max(0, min(100, int(progress)))
        self.update(**fields)

    def set_progress(self, progress: int) -> None:
        self.update(**{JobField.PROGRESS: max(0, min(100, int(progress)))})

    @contextmanager
    def stage(self, stage: Stage) -> Iterator[None]:
        """Show the stage's status while it runs; add its seconds to the stage's time field,
        a stage that failed included (its time was spent: it counts in the job's usage)."""
        if self.fields.get(JobField.STATUS) != stage.status:
            self.set_status(stage.status)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.record_time(stage, time.perf_counter() - start)

    def record_time(self, stage: Stage, seconds: float) -> None:
        """Add seconds to a stage's time field (for work timed elsewhere, e.g. a pipeline)."""
        self.record_times({stage: seconds})

    def record_times(self, seconds: Mapping[Stage, float]) -> None:
        """:meth:`record_time` for several stages. Times ride along with the next write (a
        status change, or the job's settling), so timing a stage costs no Redis round trip."""
        for stage, spent in seconds.items():
            self._on_stage(stage, spent)
            total = self.timings.get(stage.time_field, 0.0) + spent
            self.timings[stage.time_field] = total
            self._unwritten[stage.time_field] = f"{total:.6f}"

    @contextmanager
    def input_file(self) -> Iterator[Path]:
        """The uploaded input as a local file, for reading only (the download stage): the
        bucket's own file when the bucket is a directory (the local stack), else a copy in a
        temporary directory that goes when the block ends."""
        key = self.get(JobField.INPUT_FILE_NAME)
        if not key:
            raise JobError("the job names no input file (input_file_name is empty)")
        missing = JobError(f"the input file {key!r} is not in the bucket; upload it again")
        local = self.bucket.local_path(key)
        if local is not None:
            with self.stage(Stages.DOWNLOAD):
                if not local.is_file():
                    raise missing
            yield local
            return
        with tempfile.TemporaryDirectory(prefix="kiosk-input-") as tmp:
            dest = Path(tmp) / PurePosixPath(key).name
            with self.stage(Stages.DOWNLOAD):
                try:
                    self.bucket.download_file(key, dest)
                except ObjectNotFound as exc:
                    raise missing from exc
            yield dest

    def output_key(self, file_name: str) -> str:
        """Where a result file of this job goes in the bucket."""
        return self.output_folder + PurePosixPath(file_name).name

    @property
    def output_folder(self) -> str:
        """The bucket folder of this job's results (inside its zip's, for a zip's image)."""
        return output_prefix(self.key, self.get(JobField.PARENT))

    def upload_output(self, path: Path, file_name: str | None = None) -> str:
        """Store a result file (the saving-results stage); returns its key."""
        key = self.output_key(file_name or path.name)
        with self.stage(Stages.UPLOAD):
            self.outputs.append(key)
            self.bucket.upload_file(path, key)
        return key

    def put_output(self, file_name: str, data: bytes) -> str:
        """Store a result held in memory (the saving-results stage); returns its key."""
        key = self.output_key(file_name)
        with self.stage(Stages.UPLOAD):
            self.outputs.append(key)
            self.bucket.put_bytes(key, data)
        return key


def children_queued(job: Job) -> Waiting:
    """The :class:`Waiting` of a parent whose children were just queued: its upload time is
    the children's, and its progress starts again from 0 for them."""
    return Waiting(
        {
            JobField.CHILDREN_UPLOAD_TIME: f"{job.timings.get(JobField.UPLOAD_TIME, 0):.6f}",
            JobField.PROGRESS: "0",
        }
    )


def queue_child(
    job: Job, queue: JobQueue, queue_name: str, key: str, request: JobRequest, gone: str
) -> None:
    """Create one child job of ``job`` (a zip's image, a movie's frame). If the parent was
    deleted meanwhile, the child is not created: its upload goes, and the parent's work stops
    with :class:`JobLost` saying ``gone``."""
    fields = creation_fields(request, job.get(JobField.IDENTITY_UPLOAD))
    try:
        queue.submit(queue_name, key, fields)
    except ParentGone as exc:
        if request.input_file_name:
            job.bucket.delete(request.input_file_name)
        raise JobLost(f"{gone} ({exc})", Outcome.GONE) from exc


class Consumer(ABC):
    """A job type. One instance serves one queue for the life of its process.

    ``settings`` are every consumer's (Redis, model server, heartbeats); ``job_settings`` are
    the job type's own, of its ``settings_class``, read from ``KIOSK_*`` when not given.
    """

    job_type: ClassVar[str] = ""
    settings_class: ClassVar[type[JobTypeSettings]] = JobTypeSettings
    zip_consumer: ClassVar[str] = "consumers.zips:ZipConsumer"
    """How a zip of this job type is taken: the consumer (``module:Class``) that serves its
    ``TYPE-zip`` queue. The default splits a zip into one job per image."""

    def __init__(
        self,
        settings: ConsumerSettings,
        bucket: Bucket,
        queue: JobQueue | None = None,
        job_settings: JobTypeSettings | None = None,
    ) -> None:
        self.settings = settings
        self.job_settings = job_settings or self.settings_class()
        self.bucket = bucket
        self.queue = queue  # for job types that create jobs (the zip fan-out)

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Prepare once before the first claim (connect to a model server, warm up)."""

    @abstractmethod
    def process(self, job: Job) -> Result | Finish | Waiting:
        """Do the work of one job (or its model part, leaving a :class:`Finish`)."""
