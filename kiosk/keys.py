"""Every name Kiosk writes to Redis or the bucket: queues, keys, job-hash fields, statuses.

The layout is the DeepCell Kiosk's, so its clients and tools keep working: a job is the hash
``{queue}:{name}:{uuid4}``; the list ``{queue}`` (``{queue}-zip`` for zips) holds what waits; a
consumer moves it into ``processing-{queue}:{consumer id}``. For fair share between users the
list holds a token per waiting job while the keys wait in their owners' lines (a key pushed
there directly, the original's way, is still claimed). Keys of Kiosk's own
bookkeeping live under ``kiosk:``, a name no queue may take. Settings, the job record, the queue
protocol and its Lua scripts (rendered from these names) all import them from here.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePosixPath
from urllib.parse import quote


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
    COMPARTMENT = "compartment"  # Kiosk: what a mesmer job labels (kiosk.options.COMPARTMENTS)
    OWNER = "owner"  # Kiosk: the user who submitted it (kiosk.users; children inherit it)
    GROUP = "group"  # Kiosk: that user's group, whose members see the job too
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
    GPU_SECONDS = "gpu_seconds"  # Kiosk: estimated, over every attempt (kiosk.costs)
    CPU_SECONDS = "cpu_seconds"  # Kiosk: consumer seconds, over every attempt
    COST = "cost"  # Kiosk: estimated dollars of the two, from the price table
    TOTAL_JOBS = "total_jobs"
    TOTAL_TIME = "total_time"
    STARTED_AT = "started_at"  # Kiosk: when the latest attempt started (a consumer claimed it)
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
    CELL_WINDOWS = "cell_windows"  # Kiosk: a movie frame's cell window side (px; "": none)
    WAKE_AT = "wake_at"  # Kiosk: children ended at which a waiting parent is woken early
    PREVIEW = "preview"  # Kiosk: NO_PREVIEW for a zip's image the portal shows no preview of
    # Kiosk's own bookkeeping
    ATTEMPTS = "attempts"  # Kiosk: claims so far, compared with max_attempts
    LAST_ERROR = "last_error"  # Kiosk: why the previous attempt did not finish


# ----------------------------------------------------------------------------- queues

QUEUE_NAME_PATTERN = r"[a-z0-9][a-z0-9_.-]{0,62}"
_QUEUE_NAME = re.compile(rf"^{QUEUE_NAME_PATTERN}$")
ZIP_SUFFIX = "-zip"
KEY_PREFIX = "kiosk:"
PROCESSING_PREFIX = "processing-"
RESERVED_QUEUE_NAMES = frozenset({KEY_PREFIX.rstrip(":")})


def validate_queue_name(name: str) -> str:
    """Refuse job-type names that would collide with the key layout."""
    if not _QUEUE_NAME.match(name):
        raise ValueError(
            f"invalid job type {name!r}: use lower-case letters, digits, '.', '_' or '-' "
            "(at most 63 characters, starting with a letter or digit)"
        )
    if name in JOB_TYPE_ALIASES:
        raise ValueError(
            f"{name!r} is another name for the {JOB_TYPE_ALIASES[name]!r} job type: list "
            f"{JOB_TYPE_ALIASES[name]!r} instead (jobs submitted as {name!r} go there)"
        )
    if (
        name in RESERVED_QUEUE_NAMES
        or name.startswith(PROCESSING_PREFIX)
        or name.endswith(ZIP_SUFFIX)
    ):
        raise ValueError(
            f"invalid job type {name!r}: 'kiosk', '{PROCESSING_PREFIX}*' and '*{ZIP_SUFFIX}' "
            "are reserved"
        )
    return name


JOB_TYPE_ALIASES: dict[str, str] = {"caliban": "tracking", "multiplex": "mesmer"}
"""Other names clients may submit a job type under: the original's names. An alias is resolved
when a job is created (:func:`canonical_job_type`), so its jobs go to the job type's own queue
and keys; it is never a queue itself."""


def canonical_job_type(name: str) -> str:
    """The job type a name submitted by a client means (``caliban`` -> ``tracking``,
    ``multiplex`` -> ``mesmer``)."""
    return JOB_TYPE_ALIASES.get(name, name)


def zip_queue(job_type: str) -> str:
    return job_type + ZIP_SUFFIX


def queue_for(job_type: str, file_name: str) -> str:
    """Zips go to their own queue, where a fan-out consumer splits them."""
    return zip_queue(job_type) if file_name.lower().endswith(".zip") else job_type


def job_type_of(queue: str) -> str:
    return queue.removesuffix(ZIP_SUFFIX)


def all_queues(job_types: Sequence[str]) -> list[str]:
    """Every list a job of these types can wait on."""
    return [q for t in job_types for q in (t, zip_queue(t))]


# ----------------------------------------------------------------------------- Redis keys

JOB_INDEX = KEY_PREFIX + "jobs"  # sorted set: job key -> created (epoch seconds)
INPUT_USERS = KEY_PREFIX + "inputs"  # hash: upload key -> the jobs created with it, one a line
USER_PREFIX = KEY_PREFIX + "user:"  # hash per API user (kiosk.users)
USER_TOKEN_PREFIX = KEY_PREFIX + "user-token:"  # SHA-256 of a user's token -> the user's name
GROUP_PREFIX = KEY_PREFIX + "group:"  # set per group: its users' names (kiosk.users)
SESSION_PREFIX = KEY_PREFIX + "session:"  # SHA-256 of a portal session id -> hash (frontend)
USAGE_PREFIX = KEY_PREFIX + "usage:"  # hash per job owner: running totals (kiosk.costs.Usage)
USER_WEIGHT = "weight"  # a user's fair-share weight, a field of their hash (default 1)
ANONYMOUS = "anonymous"  # the owner of jobs submitted without a token, and of older jobs
# Fair share (kiosk.fairshare): a queue list holds one WAITING_TOKEN per waiting job; the jobs
# wait in one line per owner, and the owners with work waiting are scored by virtual time.
WAITING_TOKEN = "next"
WOKEN = "queued"
"""``wake_at`` of a parent the queue woke early: it is in its line until it parks again."""
OWNER_LINE_PREFIX = KEY_PREFIX + "line:"  # list per (queue, owner): waiting jobs, oldest right
OWNERS_PREFIX = KEY_PREFIX + "owners:"  # sorted set per queue: owner with work -> virtual time
VTIME_PREFIX = KEY_PREFIX + "vtime:"  # hash per queue: every owner's virtual time, and NOW's
VTIME_NOW = "~now"  # that hash's field for the last claim's virtual time (never a user name)
PACE_PREFIX = KEY_PREFIX + "pace:"  # hash per queue: how fast it moves (kiosk.pace)
STORAGE_USE = KEY_PREFIX + "storage"  # hash: owner -> bytes in the bucket (kiosk.census)
STORAGE_COUNTED_AT = "~at"  # that hash's field: when the census counted (epoch s)


class PaceField(StrEnum):
    """The fields of a queue's pace hash: settles while it had work waiting, over the seconds
    that took (both decayed), when the last settle was and whether work was waiting then, and
    the recent average seconds of a job."""

    COUNT = "count"
    BUSY = "busy"
    AT = "at"
    BACKLOGGED = "backlogged"
    SECONDS = "seconds"


MAX_NAME_LENGTH = 255
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_JOB_KEY = re.compile(
    rf"^(?P<queue>{QUEUE_NAME_PATTERN}(?:{ZIP_SUFFIX})?):(?P<name>.+):(?P<uuid>{_UUID})$", re.S
)


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


def is_job_key(key: str, job_types: Sequence[str]) -> bool:
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


def owner_line(queue: str, owner: str) -> str:
    return f"{OWNER_LINE_PREFIX}{queue}:{owner}"


def heartbeat_key(consumer_id: str) -> str:
    return f"{KEY_PREFIX}heartbeat:{consumer_id}"


def dead_letter_list(queue: str) -> str:
    return f"{KEY_PREFIX}dead-letter:{queue}"


# ----------------------------------------------------------------------------- bucket keys

UPLOAD_PREFIX = "uploads/"
OUTPUT_PREFIX = "output/"
MODELS_PREFIX = "models/"  # models/{Name}/{version}/saved_model.pb, TF Serving's layout
FILES_PATH = "/files/"  # where the frontend serves bucket objects


def upload_key(file_name: str) -> str:
    """A fresh, unguessable bucket key for an upload, keeping the file's extension."""
    return f"{UPLOAD_PREFIX}{uuid.uuid4().hex}{PurePosixPath(file_name).suffix.lower()}"


def _uuid_of(key: str) -> str:
    parsed = parse_job_key(key)
    return parsed.uuid if parsed else uuid.uuid4().hex


def output_prefix(key: str, parent: str = "") -> str:
    """Bucket folder for a job's results; the job's uuid keeps it unique and unguessable. A zip's
    images keep theirs inside the zip's (``output/{zip}/{image}/``), so that deleting the zip
    deletes every result of it at once."""
    inside = output_prefix(parent) if parent else OUTPUT_PREFIX
    return f"{inside}{_uuid_of(key)}/"


def children_upload_prefix(parent: str) -> str:
    """Bucket folder where a zip's images are unpacked to (``uploads/{zip}/``)."""
    return f"{UPLOAD_PREFIX}{_uuid_of(parent)}/"


def child_uuid(parent: str, part: str) -> str:
    """The uuid of a parent's child named ``part`` (a zip's entry, a movie's frame): the same
    on every run, so a fan-out run again creates no child twice."""
    parsed = parse_job_key(parent)
    namespace = uuid.UUID(parsed.uuid) if parsed else uuid.NAMESPACE_URL
    return str(uuid.uuid5(namespace, part))


def file_url(public_url: str, key: str) -> str:
    """The plain HTTP URL the frontend serves a bucket object at (what output_url holds)."""
    return public_url.rstrip("/") + FILES_PATH + quote(key)
