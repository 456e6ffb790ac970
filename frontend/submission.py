"""Creating a job: the checks and the write that both APIs share."""

from __future__ import annotations

import socket
from dataclasses import replace

from frontend.deps import Services
from frontend.errors import ApiError
from frontend.quotas import QuotaExceeded, Quotas
from kiosk.filetypes import FileKind, check_for_job_type, check_name
from kiosk.jobs import JobRequest, creation_fields
from kiosk.keys import (
    JOB_TYPE_ALIASES,
    UPLOAD_PREFIX,
    all_queues,
    canonical_job_type,
    new_job_key,
)
from kiosk.options import OptionError, check_options
from kiosk.storage import safe_key
from kiosk.users import Principal


def check_job_type(services: Services, job_type: str | None) -> str:
    """The job type a client named (its other name, e.g. ``caliban``, resolved), if this Kiosk
    runs it."""
    known = services.settings.queues
    if not job_type:
        raise ApiError(
            400, "say which job type to run (jobType / job_type); GET /api/jobtypes lists them"
        )
    job_type = canonical_job_type(job_type)
    if job_type not in known:
        listed = ", ".join(known) if known else "none (KIOSK_QUEUES is empty)"
        raise ApiError(
            400,
            f"unknown job type {job_type!r}: this Kiosk runs {listed}",
            jobTypes=list(known),
        )
    return job_type


def aliases(services: Services) -> dict[str, str]:
    """The aliases this Kiosk answers to: those of the job types it runs."""
    return {a: t for a, t in JOB_TYPE_ALIASES.items() if t in services.settings.queues}


def check_input(services: Services, key: str) -> FileKind:
    """The input must be a file uploaded to this Kiosk, and one it can process; its kind."""
    safe_key(key)
    if not key.startswith(UPLOAD_PREFIX):
        raise ApiError(
            400,
            f"uploadedName {key!r} is not an upload: give the uploadedName that "
            "POST /api/upload returned (it starts with 'uploads/')",
        )
    kind = check_name(key)
    if not services.bucket.exists(key):
        raise ApiError(
            400,
            f"uploadedName {key!r} is not in the bucket: upload the file first "
            "(POST /api/upload) and use the name it returns",
        )
    return kind


def check_job_options(
    scale: str = "",
    channels: str = "",
    dimension_order: str = "",
    compartment: str = "",
    job_type: str | None = None,
) -> None:
    """The job options every job type reads, checked as the consumers will read them."""
    try:
        check_options(scale, channels, dimension_order, compartment, job_type)
    except OptionError as exc:
        raise ApiError(422, f"invalid job options: {exc}") from None


def check_quotas(services: Services, caller: Principal) -> None:
    """Refuse (429) a submission that would take the caller or their group past a quota."""
    settings = services.settings
    quotas = Quotas(
        settings.quota_waiting_jobs,
        settings.group_quota_waiting_jobs,
        settings.quota_bytes,
        settings.group_quota_bytes,
    )
    try:
        quotas.check(services.queue, services.users, caller, all_queues(settings.queues))
    except QuotaExceeded as exc:
        raise ApiError(429, str(exc)) from None


def create_job(services: Services, request: JobRequest, caller: Principal) -> str:
    """Check a request and queue it (as its job type's, when it names an alias) as the
    caller's; returns the new job's key."""
    request = replace(
        request,
        job_type=check_job_type(services, request.job_type),
        owner=caller.name,
        group=caller.group,
    )
    check_quotas(services, caller)
    check_job_options(
        request.scale,
        request.channels,
        request.dimension_order,
        request.compartment,
        request.job_type,
    )
    kind = check_input(services, request.input_file_name)
    check_for_job_type(request.original_name, kind, request.job_type)
    key = new_job_key(request.queue, request.original_name)
    services.queue.submit(request.queue, key, creation_fields(request, socket.gethostname()))
    return key
