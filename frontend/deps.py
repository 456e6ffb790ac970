"""What routes depend on: settings, the job queue, the bucket and the optional API token."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from frontend.errors import ApiError
from kiosk.queue import JobQueue
from kiosk.settings import FrontendSettings
from kiosk.storage import Bucket


@dataclass
class Services:
    settings: FrontendSettings
    queue: JobQueue
    bucket: Bucket


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def require_token(request: Request, services: ServicesDep) -> None:
    """With KIOSK_API_TOKEN set, a request needs 'Authorization: Bearer TOKEN' (or X-API-Key)."""
    token = services.settings.api_token
    if token is None:
        return
    header = request.headers.get("authorization", "")
    given = (
        header[7:] if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    )
    if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise ApiError(
            401,
            "this Kiosk needs an API token: send 'Authorization: Bearer TOKEN' "
            "(kiosk CLI: --token or KIOSK_API_TOKEN)",
        )
