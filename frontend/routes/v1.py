"""The versioned API, /api/v1: create a job with its upload in one request, follow it, list,
download its result and delete it. Job ids are the job keys (``TYPE:NAME:UUID``), the same ids
the DeepCell-compatible routes use, so a job is one thing whichever API made it."""

from __future__ import annotations

import json
import logging
import math
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool

from frontend.deps import CallerDep, Services, ServicesDep, get_caller
from frontend.errors import ApiError
from frontend.estimates import estimates
from frontend.routes.files import file_response
from frontend.submission import (
    aliases,
    check_job_options,
    check_job_type,
    check_quotas,
    create_job,
)
from frontend.uploads import FILE_FIELD, receive_upload
from kiosk.filetypes import (
    ACCEPTED,
    EXTENSIONS,
    MOVIE_JOB_TYPES,
    FileKind,
    check_for_job_type,
    check_name,
)
from kiosk.jobs import ZIP_PREVIEWS, JobRequest, JobView
from kiosk.keys import (
    FINAL_STATUSES,
    OUTPUT_PREFIX,
    JobField,
    Status,
    all_queues,
    file_url,
    is_job_key,
    parse_job_key,
)
from kiosk.options import COMPARTMENT_JOB_TYPES, COMPARTMENTS
from kiosk.pace import Estimate
from kiosk.reclaim import JobFiles, remove_files, remove_job
from kiosk.users import Principal

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
SCAN_PAGES = 20  # index pages one listing request reads at most while filtering
health = APIRouter(prefix=PREFIX, tags=["v1"])
router = APIRouter(prefix=PREFIX, tags=["v1"], dependencies=[Depends(get_caller)])

TIMING_FIELDS = (
    JobField.DOWNLOAD_TIME,
    JobField.PREPROCESS_TIME,
    JobField.PREDICTION_TIME,
    JobField.POSTPROCESS_TIME,
    JobField.UPLOAD_TIME,
    JobField.TOTAL_TIME,
)


class JobOptions(BaseModel):
    """Form fields sent beside the file. Empty means the job type's default."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    job_type: str = Field(description="A job type from GET /api/v1/job-types.")
    model: str = Field("", description="NAME or NAME:VERSION of a served model.")
    scale: str = Field("", description="Microns per pixel of the image.")
    channels: str = Field(
        "",
        description="Channels to use, comma-separated indices from 0; segmentation: ',N' puts "
        "channel N in the cytoplasm model's slot; mesmer: the nuclear, then the membrane channel.",
    )
    dimension_order: str = Field("", description="Axis order of the image, e.g. CYX or ZYX.")
    segmentation_type: str = Field("", description="Kind of segmentation, if the type has several.")
    compartment: str = Field(
        "", description="mesmer jobs: whole-cell (default), nuclear or both (two label images)."
    )
    label: str = Field("", description="Data label (DeepCell's dataLabel).")
    preprocess: str = Field("", description="Pre-processing function name.")
    postprocess: str = Field("", description="Post-processing function name.")

    @field_validator("model")
    @classmethod
    def _model_spec(cls, value: str) -> str:
        if value and ":" in value and not value.rsplit(":", 1)[1].isdigit():
            raise ValueError("write NAME or NAME:VERSION with a whole-number version")
        return value

    def to_request(self, original_name: str, input_key: str, url: str) -> JobRequest:
        name, _, version = self.model.partition(":")
        return JobRequest(
            job_type=self.job_type,
            original_name=original_name,
            input_file_name=input_key,
            url=url,
            model_name=name,
            model_version=version,
            preprocess_function=self.preprocess,
            postprocess_function=self.postprocess,
            scale=self.scale,
            label=self.label,
            dimension_order=self.dimension_order,
            channels=self.channels,
            segmentation_type=self.segmentation_type,
            compartment=self.compartment,
        )


def _options(fields: dict[str, str]) -> JobOptions:
    try:
        return JobOptions.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: "
            f"{'unknown option' if e['type'] == 'extra_forbidden' else e['msg']}"
            for e in exc.errors()
        )
        raise ApiError(422, f"invalid job options: {problems}") from None


class Children(BaseModel):
    total: int
    done: int
    failed: int
    unit: str = Field(
        "images",
        description="What the children are: 'images' of a zip, 'frames' of a movie (tracking: "
        "each frame is segmented by a child job, then the frames are linked), or 'movies' of a "
        "zip of movies (each tracked by a child job).",
    )


def _children_unit(view: JobView) -> str:
    """What a parent's children are, from its job type and its first child's."""
    first = parse_job_key(view.fields.get(JobField.CHILDREN, "").split(",", 1)[0])
    if first is not None and first.job_type in MOVIE_JOB_TYPES:
        return "movies"
    return "frames" if view.job_type in MOVIE_JOB_TYPES else "images"


class Failure(BaseModel):
    name: str = Field(description="The entry's path in the zip.")
    reason: str


def _failures(text: str | None) -> list[Failure] | None:
    if not text:
        return None
    try:
        return [Failure.model_validate(item) for item in json.loads(text)]
    except (ValueError, TypeError, ValidationError):
        return None


class JobOut(BaseModel):
    id: str = Field(description="The job key; use it in every other call.")
    job_type: str
    status: str
    progress: int = Field(description="0-100")
    name: str = Field(description="The submitted file's name.")
    parent: str | None = Field(None, description="A zip's or movie's job, for its images.")
    created_at: str | None = None
    updated_at: str | None = None
    started_at: str | None = Field(None, description="When its latest attempt started.")
    finished_at: str | None = None
    reason: str | None = Field(None, description="Why the job failed.")
    output_url: str | None = None
    attempts: int = 0
    options: dict[str, str] = {}
    timings: dict[str, float] = Field({}, description="Seconds per stage, as recorded.")
    preview_url: str | None = Field(
        None,
        description="An overlay PNG of the result; for tracking, an animated image of the "
        "tracked outlines.",
    )
    objects: int | None = Field(None, description="Objects segmented.")
    children: Children | None = Field(
        None, description="A zip's images or a movie's frames: total, done, failed."
    )
    position: int | None = Field(
        None,
        description="A waiting job's place in its queue under fair share: how many jobs start "
        "before it (0: next).",
    )
    eta_start: str | None = Field(
        None, description="When a waiting job should start, from the queue's measured pace."
    )
    eta_finish: str | None = Field(
        None,
        description="When the job should finish (a zip or movie: its last image or frame).",
    )
    failures: list[Failure] | None = Field(
        None, description="A zip's entries that gave no result, and why."
    )

    @classmethod
    def of(cls, view: JobView, estimate: Estimate | None = None) -> JobOut:
        f = view.fields
        estimate = estimate or Estimate()
        times = estimate.fields()
        total = view.number(JobField.TOTAL_JOBS) if f.get(JobField.CHILDREN) else None
        objects = view.number(JobField.OBJECTS)
        return cls(
            id=view.key,
            job_type=view.job_type,
            status=view.status,
            progress=view.progress,
            name=f.get(JobField.ORIGINAL_NAME, ""),
            parent=f.get(JobField.PARENT) or None,
            created_at=f.get(JobField.CREATED_AT),
            updated_at=f.get(JobField.UPDATED_AT),
            started_at=f.get(JobField.STARTED_AT),
            finished_at=f.get(JobField.FINISHED_AT),
            reason=f.get(JobField.REASON) or None,
            output_url=f.get(JobField.OUTPUT_URL) or None,
            preview_url=f.get(JobField.PREVIEW_URL) or None,
            objects=None if objects is None else int(objects),
            failures=_failures(f.get(JobField.FAILURES)),
            attempts=int(view.number(JobField.ATTEMPTS) or 0),
            options={
                k: f[k]
                for k in (
                    JobField.MODEL_NAME,
                    JobField.MODEL_VERSION,
                    JobField.SCALE,
                    JobField.CHANNELS,
                    JobField.DIMENSION_ORDER,
                    JobField.SEGMENTATION_TYPE,
                    JobField.COMPARTMENT,
                )
                if f.get(k)
            },
            timings={str(k): v for k in TIMING_FIELDS if (v := view.number(k)) is not None},
            children=None
            if total is None
            else Children(
                total=int(total),
                done=int(view.number(JobField.CHILDREN_DONE) or 0),
                failed=int(view.number(JobField.CHILDREN_FAILED) or 0),
                unit=_children_unit(view),
            ),
            position=estimate.position,
            eta_start=times["eta_start"],
            eta_finish=times["eta_finish"],
        )


def _outs(services: Services, views: list[JobView]) -> list[JobOut]:
    """The views as answers, waiting and running ones with their positions and ETAs."""
    found = estimates(services.queue, views)
    return [JobOut.of(view, found.get(view.key)) for view in views]


class JobList(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None = Field(
        None, description="Pass as ?cursor= for the next (older) page; null on the last page."
    )


def _cursor(position: tuple[float, str]) -> str:
    return f"{position[0]!r}|{position[1]}"


def _position(cursor: str) -> tuple[float, str]:
    score, sep, key = cursor.partition("|")
    try:
        value = float(score)
    except ValueError:
        value = math.nan
    if not sep or not key or not math.isfinite(value):
        raise ApiError(422, f"invalid cursor {cursor!r}: pass the next_cursor of a listing")
    return value, key


class QueueOut(BaseModel):
    queue: str
    queued: int
    in_flight: int
    dead_letters: int


def _load(services: Services, job_id: str, caller: Principal) -> JobView:
    """The job, if the caller may see it (another user's job is as good as missing)."""
    known = is_job_key(job_id, services.settings.queues)
    fields = services.queue.get(job_id) if known else None
    if not fields or not caller.may_see(fields):
        raise ApiError(404, f"no job {job_id!r}: it never existed or has expired")
    return JobView(job_id, fields)


_FORM_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD, "job_type"],
                    "properties": {
                        FILE_FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": "A TIFF, PNG or JPEG image, or a zip; for "
                            "tracking a movie: a multi-page TIFF, a zip of its frames, or a "
                            ".trk/.trks.",
                        },
                        **JobOptions.model_json_schema()["properties"],
                    },
                    "additionalProperties": False,
                }
            }
        },
    }
}


@health.get("/health")
def health_check(services: ServicesDep) -> JSONResponse:
    """Ready when Redis answers and the bucket can be read."""
    checks: dict[str, Any] = {}
    try:
        checks["redis"] = bool(services.queue.redis.ping())
    except Exception as exc:
        checks["redis"] = f"unavailable: {exc}"
    try:
        services.bucket.exists("uploads/.health")
        checks["bucket"] = True
    except Exception as exc:
        checks["bucket"] = f"unavailable: {exc}"
    ok = all(v is True for v in checks.values())
    return JSONResponse(
        {"status": "ok" if ok else "degraded", **checks}, status_code=200 if ok else 503
    )


class JobTypes(BaseModel):
    job_types: list[str] = Field(description="The job types this Kiosk runs (KIOSK_QUEUES).")
    aliases: dict[str, str] = Field(
        {}, description="Other names accepted for them (alias -> job type), e.g. caliban."
    )


@router.get("/job-types")
def job_types(services: ServicesDep) -> JobTypes:
    return JobTypes(job_types=list(services.settings.queues), aliases=aliases(services))


class Limits(BaseModel):
    max_upload_bytes: int = Field(description="Largest file one upload may be.")
    extensions: list[str] = Field(description="File name endings accepted, e.g. '.tif'.")
    accepted: str = Field(description="The accepted kinds, in words.")
    movie_job_types: list[str] = Field(
        [], description="Job types here that take a whole movie (tracking) as one input."
    )
    movie_extensions: list[str] = Field(
        [], description="Endings only those job types take ('.trk', '.trks')."
    )
    compartment_job_types: list[str] = Field(
        [], description="Job types here that take a compartment (mesmer)."
    )
    compartments: list[str] = Field([], description="The compartments they may be asked for.")
    zip_previews: int = Field(description="A zip's first images that get an overlay preview.")


def _movie_job_types(services: Services) -> list[str]:
    return [t for t in services.settings.queues if t in MOVIE_JOB_TYPES]


@router.get("/limits")
def limits(services: ServicesDep) -> Limits:
    """What an upload may be, so a client (the web portal) refuses a file before sending it."""
    movies = _movie_job_types(services)
    movie_only = [e for e, kind in EXTENSIONS.items() if kind is FileKind.TRK]
    accepted = ACCEPTED
    if movies:
        accepted += f" ({', '.join(movies)} also takes {'/'.join(movie_only)} movies)"
    return Limits(
        max_upload_bytes=services.settings.max_upload_bytes,
        extensions=[e for e in EXTENSIONS if movies or e not in movie_only],
        accepted=accepted,
        movie_job_types=movies,
        movie_extensions=movie_only if movies else [],
        compartment_job_types=[t for t in services.settings.queues if t in COMPARTMENT_JOB_TYPES],
        compartments=list(COMPARTMENTS),
        zip_previews=ZIP_PREVIEWS,
    )


@router.get("/queues")
def queues(services: ServicesDep) -> list[QueueOut]:
    """Jobs waiting, in flight and dead-lettered, per queue (zip queues included)."""
    return [QueueOut(**vars(s)) for s in services.queue.stats(all_queues(services.settings.queues))]


@router.post("/jobs", status_code=201, openapi_extra=_FORM_SCHEMA, response_model=JobOut)
async def create(request: Request, services: ServicesDep, caller: CallerDep) -> JSONResponse:
    """Upload a file and create its job in one request (multipart: ``file`` + options)."""

    def before_file(fields: dict[str, str], file_name: str) -> None:
        """Refuse what the fields sent ahead of the file already show to be wrong (or over a
        quota), before the file is stored."""
        check_quotas(services, caller)
        job_type = None
        if "job_type" in fields:
            job_type = check_job_type(services, fields["job_type"].strip())
            check_for_job_type(file_name, check_name(file_name), job_type)
        check_job_options(
            fields.get("scale", "").strip(),
            fields.get("channels", "").strip(),
            fields.get("dimension_order", "").strip(),
            fields.get("compartment", "").strip(),
            job_type,
        )

    received = await receive_upload(
        request, services.bucket, services.settings.max_upload_bytes, before_file
    )
    try:
        options = _options(received.fields)
        job_request = options.to_request(
            received.file_name, received.key, file_url(services.settings.public_url, received.key)
        )
        key = await run_in_threadpool(create_job, services, job_request, caller)
    except BaseException:
        await run_in_threadpool(services.bucket.delete, received.key)
        raise
    try:
        view = await run_in_threadpool(_load, services, key, caller)
        return JSONResponse(
            _outs(services, [view])[0].model_dump(),
            status_code=201,
            headers={"Location": job_path(key)},
        )
    except BaseException:  # no error answer may leave a job behind: the client would retry
        await run_in_threadpool(services.queue.delete, key, job_request.queue)
        await run_in_threadpool(services.bucket.delete, received.key)
        raise


def job_path(key: str) -> str:
    """The job's URL path: its id escaped, so spaces, '%', '#' and any script survive."""
    return f"{PREFIX}/jobs/{quote(key, safe=':')}"


@router.get("/jobs")
def list_jobs(
    services: ServicesDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
    status: Annotated[str | None, Query(description="Only jobs with this status.")] = None,
    job_type: Annotated[str | None, Query()] = None,
    parent: Annotated[
        str | None, Query(description="A zip job's id: only its images' jobs, in the zip's order.")
    ] = None,
) -> JobList:
    """Jobs, newest first. A filtered page may hold fewer than ``limit`` jobs while
    ``next_cursor`` still leads to older ones. With ``parent``: a zip's jobs, in its order."""
    if status is not None and status not in set(Status):
        raise ApiError(422, f"unknown status {status!r}: use one of {', '.join(Status)}")
    if job_type:
        job_type = aliases(services).get(job_type, job_type)
    if parent is not None:
        return _children_page(services, caller, parent, limit, cursor, status, job_type)
    position = _position(cursor) if cursor else None
    jobs: list[JobView] = []
    scanned, exhausted = 0, False
    while len(jobs) < limit and scanned < limit * SCAN_PAGES:
        page = services.queue.recent(limit, position)
        if not page:
            exhausted = True
            break
        scanned += len(page)
        for (key, created), fields in zip(
            page, services.queue.get_many([k for k, _ in page]), strict=True
        ):
            position = (created, key)
            view = JobView(key, fields)
            wanted = (
                fields
                and caller.may_see(fields)
                and (not status or view.status == status)
                and (not job_type or view.job_type == job_type)
            )
            if wanted:
                jobs.append(view)
                if len(jobs) == limit:
                    break
    more = not exhausted and position is not None
    return JobList(
        jobs=_outs(services, jobs), next_cursor=_cursor(position) if more and position else None
    )


def _children_page(
    services: Services,
    caller: Principal,
    parent: str,
    limit: int,
    cursor: str | None,
    status: str | None,
    job_type: str | None,
) -> JobList:
    """A zip's child jobs, read from the parent's list of them (exact, unlike scanning the
    index); the cursor is an offset into that list."""
    children = _load(services, parent, caller).fields.get(JobField.CHILDREN, "")
    keys = [k for k in children.split(",") if k]
    if cursor is not None and not cursor.isdigit():
        raise ApiError(422, f"invalid cursor {cursor!r}: pass the next_cursor of a listing")
    start = int(cursor or 0)
    page = keys[start : start + limit]
    jobs = []
    for key, fields in zip(page, services.queue.get_many(page), strict=True):
        view = JobView(key, fields)
        wanted = (not status or view.status == status) and (
            not job_type or view.job_type == job_type
        )
        if fields and wanted and caller.may_see(fields):
            jobs.append(view)
    end = start + len(page)
    return JobList(jobs=_outs(services, jobs), next_cursor=str(end) if end < len(keys) else None)


@router.get("/jobs/{job_id:path}/result")
def result(job_id: str, services: ServicesDep, caller: CallerDep) -> Response:
    """The job's result file, once it is done."""
    view = _load(services, job_id, caller)
    if view.status != Status.DONE:
        if view.status in FINAL_STATUSES:
            raise ApiError(
                409,
                f"job {job_id!r} failed and has no result: "
                f"{view.fields.get(JobField.REASON, 'no reason recorded')}",
            )
        raise ApiError(
            409, f"job {job_id!r} is {view.status}; its result is ready when its status is done"
        )
    key = view.fields.get(JobField.OUTPUT_FILE_NAME, "")
    if not key.startswith(OUTPUT_PREFIX):
        raise ApiError(404, f"job {job_id!r} is done but recorded no output file")
    return file_response(services.bucket, key)


@router.get("/jobs/{job_id:path}")
def get_job(job_id: str, services: ServicesDep, caller: CallerDep) -> JobOut:
    return _outs(services, [_load(services, job_id, caller)])[0]


@router.delete("/jobs/{job_id:path}", status_code=204)
def delete_job(
    job_id: str, services: ServicesDep, caller: CallerDep, background: BackgroundTasks
) -> Response:
    """Delete a job, with its files: out of its queue if waiting (a consumer working on it
    stops); its input unless another job uses it, and its results. A zip takes its images'
    jobs and their files with it. The jobs are gone when this answers (in batches of 500);
    their files go right after, so a zip of 10,000 images does not hold the request."""
    view = _load(services, job_id, caller)
    files = remove_job(services.queue, job_id, view.fields)
    background.add_task(_remove_files, services, job_id, files)
    return Response(status_code=204)


def _remove_files(services: Services, job_id: str, files: JobFiles) -> None:
    try:
        deleted = remove_files(services.queue, services.bucket, files)
    except Exception:  # the retention (or the bucket's lifecycle) removes what is left
        log.exception("could not remove every file of the deleted job %s", job_id)
        return
    log.info("deleted job %s and %d of its files", job_id, deleted.files)
