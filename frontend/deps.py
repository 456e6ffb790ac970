"""What routes depend on: settings, the job queue, the bucket, the users and who is asking."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from frontend.errors import ApiError
from kiosk.queue import JobQueue
from kiosk.settings import FrontendSettings
from kiosk.storage import Bucket
from kiosk.users import (
    ADMIN_PRINCIPAL,
    ANONYMOUS_PRINCIPAL,
    Principal,
    UserStore,
    admin_token_matches,
)


@dataclass
class Services:
    settings: FrontendSettings
    queue: JobQueue
    bucket: Bucket

    @property
    def users(self) -> UserStore:
        return UserStore(self.queue.redis)


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def given_token(request: Request) -> str:
    """The token a request carries: 'Authorization: Bearer TOKEN', else 'X-API-Key'."""
    header = request.headers.get("authorization", "")
    given = (
        header[7:] if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    )
    return given.strip()


def get_caller(request: Request, services: ServicesDep) -> Principal:
    """Who is asking: the administrator (KIOSK_API_TOKEN), a user (their token), or, without
    a token where KIOSK_ANONYMOUS allows it, the anonymous user."""
    settings = services.settings
    token = given_token(request)
    if token:
        admin = settings.api_token.get_secret_value() if settings.api_token else None
        if admin_token_matches(token, admin):
            return ADMIN_PRINCIPAL
        user = services.users.authenticate(token)
        if user is not None:
            return user
        raise ApiError(
            401,
            "this API token is not valid (unknown, mistyped or revoked): send the token the "
            "administrator gave you (kiosk users add) as 'Authorization: Bearer TOKEN'",
        )
    if settings.anonymous_allowed:
        return ANONYMOUS_PRINCIPAL
    raise ApiError(
        401,
        "this Kiosk needs an API token: send 'Authorization: Bearer TOKEN' "
        "(kiosk CLI: --token or KIOSK_API_TOKEN)",
    )


CallerDep = Annotated[Principal, Depends(get_caller)]


def require_admin(caller: CallerDep) -> Principal:
    if not caller.admin:
        raise ApiError(403, "only the administrator (the holder of KIOSK_API_TOKEN) may do this")
    return caller


AdminDep = Annotated[Principal, Depends(require_admin)]
