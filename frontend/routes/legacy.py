"""The DeepCell Kiosk's /api routes, with its request and response shapes, so kiosk-client and
the ImageJ plugin work unchanged. Every route also answers with a trailing slash (the plugin
adds one and its HTTP client will not follow a redirect for a POST).

Unlike the original, /api/redis, /api/status and /api/redis/expire act only on job hashes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from frontend.deps import CallerDep, ServicesDep, get_caller
from frontend.errors import ApiError
from frontend.estimates import estimates
from frontend.submission import check_quotas, create_job
from frontend.uploads import receive_upload
from kiosk.jobs import JobRequest, JobView
from kiosk.keys import MODELS_PREFIX, JobField, file_url, is_job_key
from kiosk.pace import Estimate
from kiosk.users import Principal

MAX_EXPIRE = 30 * 86400
ESTIMATED = frozenset({"position", "eta_start", "eta_finish"})
"""Names /api/redis answers that no job hash stores: Kiosk's estimate, computed when asked."""

health = APIRouter(prefix="/api", tags=["DeepCell-compatible"])
router = APIRouter(prefix="/api", tags=["DeepCell-compatible"], dependencies=[Depends(get_caller)])


def _route(target: APIRouter, path: str, methods: list[str], **kwargs: Any) -> Callable:
    """Register ``path`` and ``path/``: the original clients use both."""

    def register(endpoint: Callable) -> Callable:
        target.add_api_route(path, endpoint, methods=methods, **kwargs)
        hidden = [m for m in methods] + (["HEAD"] if "GET" in methods else [])
        target.add_api_route(
            path + "/", endpoint, methods=hidden, include_in_schema=False, **kwargs
        )
        if "GET" in methods:
            target.add_api_route(
                path, endpoint, methods=["HEAD"], include_in_schema=False, **kwargs
            )
        return endpoint

    return register


def _text(value: Any) -> str:
    return "" if value is None else str(value)


class JobForm(BaseModel):
    model_config = ConfigDict(extra="ignore")
    dimensionOrder: str | None = ""
    selectedChannels: str | list[int | str] | None = ""
    scale: str | float | None = ""
    segmentationType: str | None = ""


class PredictBody(BaseModel):
    """POST /api/predict. Empty strings mean "the job type's default", as the clients send."""

    model_config = ConfigDict(extra="ignore")
    jobType: str = ""
    imageName: str = Field(min_length=1)
    uploadedName: str = ""
    imageUrl: str | None = ""
    modelName: str | None = ""
    modelVersion: str | int | None = ""
    preprocessFunction: str | None = ""
    postprocessFunction: str | None = ""
    dataRescale: str | float | None = ""
    dataLabel: str | int | None = ""
    cuts: str | int | None = "0"
    jobForm: JobForm | None = None

    def to_request(self) -> JobRequest:
        form = self.jobForm or JobForm()
        channels = form.selectedChannels
        if isinstance(channels, list):
            channels = ",".join(str(c) for c in channels)
        return JobRequest(
            job_type=self.jobType,
            original_name=self.imageName,
            input_file_name=self.uploadedName or self.imageName,
            url=_text(self.imageUrl),
            model_name=_text(self.modelName),
            model_version=_text(self.modelVersion),
            preprocess_function=_text(self.preprocessFunction),
            postprocess_function=_text(self.postprocessFunction),
            cuts=_text(self.cuts) or "0",
            scale=_text(form.scale) or _text(self.dataRescale),
            label=_text(self.dataLabel),
            dimension_order=_text(form.dimensionOrder),
            channels=_text(channels),
            segmentation_type=_text(form.segmentationType),
        )


class RedisBody(BaseModel):
    hash: str
    key: str | Annotated[list[str], Field(min_length=1)]


class StatusBody(BaseModel):
    hash: str


class ExpireBody(BaseModel):
    hash: str
    expireIn: int | None = Field(None, gt=0, le=MAX_EXPIRE)


def _job_fields(
    services: ServicesDep, key: str, caller: Principal, names: list[str]
) -> list[str | None] | None:
    """Fields of a job hash, read with its owner in one step; None when there is no such job
    or it is another user's (answered alike)."""
    if not is_job_key(key, services.settings.queues):
        raise ApiError(
            400,
            f"{key!r} is not a job: this route reads only job hashes, named "
            "JOBTYPE:NAME:UUID as returned by /api/predict",
        )
    values = services.queue.get_fields(key, [*names, JobField.OWNER, JobField.GROUP])
    if values is None:
        return None
    *wanted, owner, group = values
    if not caller.may_see({JobField.OWNER: owner or "", JobField.GROUP: group or ""}):
        return None
    return wanted


@_route(health, "/health-check", ["GET"], response_class=PlainTextResponse)
def health_check() -> str:
    return "OK"


@_route(router, "/upload", ["POST"])
async def upload(request: Request, services: ServicesDep, caller: CallerDep) -> dict[str, str]:
    """Upload one image or zip (multipart field ``file``) to the bucket (not past a quota)."""
    received = await receive_upload(
        request,
        services.bucket,
        services.settings.max_upload_bytes,
        lambda fields, name: check_quotas(services, caller),
    )
    return {
        "imageURL": file_url(services.settings.public_url, received.key),
        "uploadedName": received.key,
    }


@_route(router, "/predict", ["POST"])
def predict(body: PredictBody, services: ServicesDep, caller: CallerDep) -> dict[str, str]:
    """Create a job for an uploaded file; returns its key as ``hash``."""
    return {"hash": create_job(services, body.to_request(), caller)}


@_route(router, "/redis", ["POST"])
def redis_value(body: RedisBody, services: ServicesDep, caller: CallerDep) -> dict[str, Any]:
    """One field of a job hash (or several, given a list)."""
    names = body.key if isinstance(body.key, list) else [body.key]
    found = _job_fields(services, body.hash, caller, names)
    values = found or [None] * len(names)
    if found is not None and ESTIMATED.intersection(names):
        view = JobView(body.hash, services.queue.get(body.hash) or {})
        computed = estimates(services.queue, [view]).get(body.hash, Estimate()).fields()
        values = [computed.get(name, value) for name, value in zip(names, values, strict=True)]
    return {"value": values if isinstance(body.key, list) else values[0]}


@_route(router, "/status", ["POST"])
def status(body: StatusBody, services: ServicesDep, caller: CallerDep) -> dict[str, Any]:
    values = _job_fields(services, body.hash, caller, [JobField.STATUS]) or [None]
    return {"status": values[0]}


@_route(router, "/redis/expire", ["POST"])
def expire(body: ExpireBody, services: ServicesDep, caller: CallerDep) -> JSONResponse:
    """Expire a job hash in ``expireIn`` seconds; ``value`` 1 when it was found."""
    seconds = body.expireIn or services.settings.default_expire
    if _job_fields(services, body.hash, caller, [JobField.STATUS]) is None:
        return JSONResponse({"value": 0, "message": f"no job {body.hash!r}"}, status_code=404)
    found = services.queue.expire(body.hash, seconds)
    return JSONResponse({"value": int(found)}, status_code=200 if found else 404)


@_route(router, "/jobtypes", ["GET"])
def job_types(services: ServicesDep) -> dict[str, list[str]]:
    return {"jobTypes": list(services.settings.queues)}


@_route(router, "/models", ["GET"])
async def models(services: ServicesDep) -> dict[str, dict[str, list[str]]]:
    """Models in the bucket's models/ folder (TF Serving layout), with their versions."""

    def scan() -> dict[str, list[str]]:
        found: dict[str, set[str]] = {}
        for key in services.bucket.list(MODELS_PREFIX):
            parts = key.split("/")
            if len(parts) >= 4 and parts[2].isdigit():
                found.setdefault(parts[1], set()).add(parts[2])
        return {name: sorted(v, key=int) for name, v in sorted(found.items())}

    return {"models": await run_in_threadpool(scan)}
