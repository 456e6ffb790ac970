"""The job record: what a client asks for, the fields a new job starts with, the stages a
consumer times, and a typed view of a job hash. The names it uses are in :mod:`kiosk.keys`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from kiosk.keys import JobField, Status, canonical_job_type, clean_name, parse_job_key, queue_for


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


ZIP_PREVIEWS = 12
"""A zip's images that get an overlay preview: the first ones, the thumbnails the web portal
shows (it reads this number from ``/api/v1/limits``). Drawing one costs as much CPU as a tenth
of a 512x512 image's segmentation, and the rest would never be looked at (a movie in a zip
draws its own preview whatever its place: it is one of the movie's results)."""
NO_PREVIEW = "no"
"""The ``preview`` field of a job that draws none (see :data:`ZIP_PREVIEWS`)."""


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
    """What a client asks for; both APIs and the zip consumer (for each child) build one, and
    :func:`creation_fields` stores it."""

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
    compartment: str = ""
    """A mesmer job's labels: whole-cell, nuclear or both ("": the job type's default)."""
    parent: str = ""
    """A zip child's parent job key: the child's end is counted there."""
    preview: str = ""
    """:data:`NO_PREVIEW` for an image that gets no overlay preview ("": it gets one)."""
    cell_windows: str = ""
    """A movie frame's: the side (px) of the cell windows its cells table keeps, for the
    movie's division model ("": the movie's tracking needs none)."""
    owner: str = ""
    """Who submitted it (kiosk.users; "": from before users, the anonymous user's)."""
    group: str = ""
    """The owner's group."""

    def __post_init__(self) -> None:
        # A job type's other name (``caliban``) is the job type itself from here on.
        object.__setattr__(self, "job_type", canonical_job_type(self.job_type))

    @property
    def queue(self) -> str:
        return queue_for(self.job_type, self.input_file_name or self.original_name)

    @classmethod
    def of_job(cls, job_type: str, fields: Mapping[str, str]) -> JobRequest:
        """The request a stored job was created from (what its children inherit)."""
        values = {name: fields.get(_REQUEST_FIELDS[name], "") for name in _REQUEST_FIELDS}
        return cls(job_type=job_type, **values)


_REQUEST_FIELDS: dict[str, JobField] = {
    "original_name": JobField.ORIGINAL_NAME,
    "input_file_name": JobField.INPUT_FILE_NAME,
    "url": JobField.URL,
    "model_name": JobField.MODEL_NAME,
    "model_version": JobField.MODEL_VERSION,
    "preprocess_function": JobField.PREPROCESS_FUNCTION,
    "postprocess_function": JobField.POSTPROCESS_FUNCTION,
    "cuts": JobField.CUTS,
    "scale": JobField.SCALE,
    "label": JobField.LABEL,
    "dimension_order": JobField.DIMENSION_ORDER,
    "channels": JobField.CHANNELS,
    "segmentation_type": JobField.SEGMENTATION_TYPE,
    "compartment": JobField.COMPARTMENT,
    "parent": JobField.PARENT,
    "cell_windows": JobField.CELL_WINDOWS,
    "preview": JobField.PREVIEW,
    "owner": JobField.OWNER,
    "group": JobField.GROUP,
}
"""The hash field each request attribute is stored in (every attribute but ``job_type``)."""


def creation_fields(request: JobRequest, identity: str) -> dict[str, str]:
    """The fields a new job starts with: the request, status ``new``, no attempts yet."""
    now = now_iso()
    fields: dict[str, str] = {
        field: getattr(request, name) for name, field in _REQUEST_FIELDS.items()
    }
    for optional in (
        JobField.PARENT,
        JobField.CELL_WINDOWS,
        JobField.PREVIEW,
        JobField.COMPARTMENT,
        JobField.OWNER,
        JobField.GROUP,
    ):
        if not fields[optional]:
            del fields[optional]
    return {
        **fields,
        JobField.ORIGINAL_NAME: clean_name(request.original_name),
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
    def queue(self) -> str:
        parsed = parse_job_key(self.key)
        return parsed.queue if parsed else ""

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
