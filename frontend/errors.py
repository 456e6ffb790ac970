"""API errors: always JSON with a ``message`` that says what was wrong and what to do."""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from kiosk.filetypes import UnsupportedFile
from kiosk.storage import InvalidKey

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: object) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def _describe(error: dict) -> str:
    where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path"))
    return f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg"))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"message": exc.message, **exc.extra}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(_describe(e) for e in exc.errors())
        return JSONResponse(
            {"message": f"invalid request: {problems}", "detail": jsonable_encoder(exc.errors())},
            status_code=422,
        )

    @app.exception_handler(UnsupportedFile)
    async def unsupported_file(request: Request, exc: UnsupportedFile) -> JSONResponse:
        return JSONResponse({"message": str(exc)}, status_code=415)

    @app.exception_handler(InvalidKey)
    async def invalid_key(request: Request, exc: InvalidKey) -> JSONResponse:
        return JSONResponse({"message": str(exc)}, status_code=400)

    @app.exception_handler(redis.ConnectionError)
    @app.exception_handler(redis.TimeoutError)
    async def redis_down(request: Request, exc: redis.RedisError) -> JSONResponse:
        log.warning("Redis unreachable on %s: %s", request.url.path, exc)
        return JSONResponse(
            {"message": "the job store (Redis) is unavailable; try again in a moment"},
            status_code=503,
            headers={"Retry-After": "5"},
        )
