"""The job record: statuses, hash fields and every Redis key name, in one place.

The layout is the DeepCell Kiosk's, so its clients and tools keep working:
a job is the hash ``{queue}:{name}:{uuid4}``; producers LPUSH that key on the list ``{queue}``
(``{queue}-zip`` for zips); a consumer moves it into ``processing-{queue}:{consumer id}``.
Keys of Kiosk's own bookkeeping live under ``kiosk:``, a name no queue may take.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import PurePosixPath
from urllib.parse import quote

from kiosk.settings import QUEUE_NAME_PATTERN, ZIP_SUFFIX


class Status(StrEnum):
    """Job statuses, in the order a job passes through them."""

    NEW = "new"
    STARTED = "started"
    PRE_PROCESSING = "pre-processing"
    PREDICTING = "predicting"
    POST_PROCESSING = "post-processing"
    SAVING_RESULTS = "saving-results"
    WAITING = "waiting"
    DONE = "done"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({Status.DONE, Status.FAILED})


class JobField(StrEnum):
    """Job hash fields. The original's names; Kiosk's additions are marked."""

    # written at creation
    ORIGINAL_NAME = "original_name"
    INPUT_FILE_NAME = "input_file_name"
    MODEL_NAME = "model_name"
    MODEL_VERSION = "model_version"
    POSTPROCESS_FUNCTION = "postprocess_function"
    PREPROCESS_FUNCTION = "preprocess_function"
    CUTS = "cuts"
    URL = "url"
    LABEL = "label"
    STATUS = "status"
    CREATED_AT = "created_at"
    UPDATED_AT = "updated_at"
    IDENTITY_UPLOAD = "identity_upload"
    DIMENSION_ORDER = "dimension_order"
    CHANNELS = "channels"
    SCALE = "scale"
    SEGMENTATION_TYPE = "segmentation_type"
    # written by consumers
    UPDATED_BY = "updated_by"
    IDENTITY_STARTED = "identity_started"
    PROGRESS = "progress"
    DIM_ORDER = "dim_order"
    OUTPUT_URL = "output_url"
    OUTPUT_FILE_NAME = "output_file_name"
    DOWNLOAD_TIME = "download_time"
    PREPROCESS_TIME = "preprocess_time"  # Kiosk
    PREDICTION_TIME = "prediction_time"
    POSTPROCESS_TIME = "postprocess_time"
    UPLOAD_TIME = "upload_time"
    PREDICT_RETRIES = "predict_retries"
    PREVIEW_URL = "preview_url"  # Kiosk: an overlay PNG of the labels on the image
    OBJECTS = "objects"  # Kiosk: how many objects were segmented
    TOTAL_JOBS = "total_jobs"
    TOTAL_TIME = "total_time"
    FINISHED_AT = "finished_at"
    REASON = "reason"
    # zip parents
    CHILDREN = "children"
    CHILDREN_DONE = "children:done"
    CHILDREN_FAILED = "children:failed"
    CHILDREN_UPLOAD_TIME = "children_upload_time"
    CLEANUP_TIME = "cleanup_time"
    FAILURES = "failures"
    PARENT = "parent"  # Kiosk: a zip child's parent job key; its end is counted there
    # Kiosk's own bookkeeping
    ATTEMPTS = "attempts"  # Kiosk: claims so far, compared with max_attempts
    LAST_ERROR = "last_error"  # Kiosk: why the previous attempt did not finish


@dataclass(frozen=True)
class Stage:
    """A step of the work: the status shown while it runs and the field that times it."""

    name: str
    status: Status
    time_field: JobField


class Stages:
    DOWNLOAD = Stage("download", Status.STARTED, JobField.DOWNLOAD_TIME)
    PREPROCESS = Stage("preprocess", Status.PRE_PROCESSING, JobField.PREPROCESS_TIME)
    PREDICT = Stage("predict", Status.PREDICTING, JobField.PREDICTION_TIME)
    POSTPROCESS = Stage("postprocess", Status.POST_PROCESSING, JobField.POSTPROCESS_TIME)
    UPLOAD = Stage("upload", Status.SAVING_RESULTS, JobField.UPLOAD_TIME)


# ----------------------------------------------------------------------------- key names

KEY_PREFIX = "kiosk:"
JOB_INDEX = KEY_PREFIX + "jobs"  # sorted set: job key -> created (epoch seconds)
PROCESSING_PREFIX = "processing-"
UPLOAD_PREFIX = "uploads/"
OUTPUT_PREFIX = "output/"
MODELS_PREFIX = "models/"  # models/{Name}/{version}/saved_model.pb, TF Serving's layout

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_JOB_KEY = re.compile(
    rf"^(?P<queue>{QUEUE_NAME_PATTERN}(?:{ZIP_SUFFIX})?):(?P<name>.+):(?P<uuid>{_UUID})$", re.S
)
MAX_NAME_LENGTH = 255


def zip_queue(job_type: str) -> str:
    return job_type + ZIP_SUFFIX


def queue_for(job_type: str, file_name: str) -> str:
    """Zips go to their own queue, where a fan-out consumer splits them."""
    return zip_queue(job_type) if file_name.lower().endswith(".zip") else job_type


def job_type_of(queue: str) -> str:
    return queue.removesuffix(ZIP_SUFFIX)


def all_queues(job_types: tuple[str, ...] | list[str]) -> list[str]:
    """Every list a job of these types can wait on."""
    return [q for t in job_types for q in (t, zip_queue(t))]


def clean_name(name: str) -> str:
    """A file name made safe to sit inside a key and a log line."""
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    return name[-MAX_NAME_LENGTH:] or "unnamed"


def new_job_key(queue: str, name: str) -> str:
    return f"{queue}:{clean_name(name)}:{uuid.uuid4()}"


@dataclass(frozen=True)
class JobKey:
    queue: str
    name: str
    uuid: str

    @property
    def job_type(self) -> str:
        return job_type_of(self.queue)


def parse_job_key(key: str) -> JobKey | None:
    match = _JOB_KEY.match(key)
    if not match:
        return None
    return JobKey(match["queue"], match["name"], match["uuid"])


def is_job_key(key: str, job_types: tuple[str, ...] | list[str]) -> bool:
    """True for a key shaped like a job of one of these types: never a queue or Kiosk's own."""
    parsed = parse_job_key(key)
    return parsed is not None and parsed.job_type in job_types


def processing_list(queue: str, consumer_id: str) -> str:
    return f"{PROCESSING_PREFIX}{queue}:{consumer_id}"


def parse_processing_list(key: str) -> tuple[str, str] | None:
    """(queue, consumer id) of a processing list, or None."""
    if not key.startswith(PROCESSING_PREFIX) or ":" not in key:
        return None
    queue, consumer_id = key[len(PROCESSING_PREFIX) :].split(":", 1)
    return queue, consumer_id


def heartbeat_key(consumer_id: str) -> str:
    return f"{KEY_PREFIX}heartbeat:{consumer_id}"


def dead_letter_list(queue: str) -> str:
    return f"{KEY_PREFIX}dead-letter:{queue}"


def upload_key(file_name: str) -> str:
    """A fresh, unguessable bucket key for an upload, keeping the file's extension."""
    return f"{UPLOAD_PREFIX}{uuid.uuid4().hex}{PurePosixPath(file_name).suffix.lower()}"


def output_prefix(key: str) -> str:
    """Bucket folder for a job's results; the job's uuid keeps it unique and unguessable."""
    parsed = parse_job_key(key)
    folder = parsed.uuid if parsed else uuid.uuid4().hex
    return f"{OUTPUT_PREFIX}{folder}/"


FILES_PATH = "/files/"


def file_url(public_url: str, key: str) -> str:
    """The plain HTTP URL the frontend serves a bucket object at (what output_url holds)."""
    return public_url.rstrip("/") + FILES_PATH + quote(key)


# ----------------------------------------------------------------------------- values


def now_iso() -> str:
    """ISO-8601 UTC with milliseconds, parseable by dateutil as the original clients expect."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def parse_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True)
class JobRequest:
    """What a client asks for; both APIs build one and :func:`creation_fields` stores it."""

    job_type: str
    original_name: str
    input_file_name: str
    url: str = ""
    model_name: str = ""
    model_version: str = ""
    preprocess_function: str = ""
    postprocess_function: str = ""
    cuts: str = "0"
    scale: str = ""
    label: str = ""
    dimension_order: str = ""
    channels: str = ""
    segmentation_type: str = ""

    @property
    def queue(self) -> str:
        return queue_for(self.job_type, self.input_file_name or self.original_name)


def creation_fields(request: JobRequest, identity: str) -> dict[str, str]:
    now = now_iso()
    return {
        JobField.ORIGINAL_NAME: clean_name(request.original_name),
        JobField.INPUT_FILE_NAME: request.input_file_name,
        JobField.MODEL_NAME: request.model_name,
        JobField.MODEL_VERSION: request.model_version,
        JobField.POSTPROCESS_FUNCTION: request.postprocess_function,
        JobField.PREPROCESS_FUNCTION: request.preprocess_function,
        JobField.CUTS: request.cuts,
        JobField.URL: request.url,
        JobField.SCALE: request.scale,
        JobField.LABEL: request.label,
        JobField.DIMENSION_ORDER: request.dimension_order,
        JobField.CHANNELS: request.channels,
        JobField.SEGMENTATION_TYPE: request.segmentation_type,
        JobField.STATUS: Status.NEW,
        JobField.CREATED_AT: now,
        JobField.UPDATED_AT: now,
        JobField.IDENTITY_UPLOAD: identity,
        JobField.PROGRESS: "0",
        JobField.ATTEMPTS: "0",
    }


@dataclass(frozen=True)
class JobView:
    """A read-only, typed view of a job hash, for APIs and the CLI."""

    key: str
    fields: Mapping[str, str]

    @property
    def status(self) -> str:
        return self.fields.get(JobField.STATUS, "")

    @property
    def job_type(self) -> str:
        parsed = parse_job_key(self.key)
        return parsed.job_type if parsed else ""

    @property
    def progress(self) -> int:
        try:
            return max(0, min(100, round(float(self.fields.get(JobField.PROGRESS, "0") or 0))))
        except ValueError:
            return 0

    def number(self, field: JobField) -> float | None:
        try:
            return float(self.fields[field])
        except (KeyError, ValueError):
            return None
