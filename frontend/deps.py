"""What routes depend on: settings, the job queue, the bucket, the users and who is asking."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from frontend.errors import ApiError
from frontend.sessions import COOKIE, CSRF_HEADER, Session, SessionStore
from kiosk.queue import JobQueue
from kiosk.settings import FrontendSettings
from kiosk.storage import Bucket
from kiosk.users import (
    ADMIN,
    ADMIN_PRINCIPAL,
    ANONYMOUS_PRINCIPAL,
    Principal,
    UserStore,
    admin_token_matches,
    token_hash,
)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass
class Services:
    settings: FrontendSettings
    queue: JobQueue
    bucket: Bucket

    @property
    def users(self) -> UserStore:
        return UserStore(self.queue.redis)

    @property
    def sessions(self) -> SessionStore:
        return SessionStore(self.queue.redis, self.settings.session_ttl)

    def principal_of_token(self, token: str) -> Principal | None:
        """The administrator or the user whose token this is; None for any other."""
        admin = self.settings.api_token.get_secret_value() if self.settings.api_token else None
        if admin_token_matches(token, admin):
            return ADMIN_PRINCIPAL
        return self.users.authenticate(token)

    def principal_of_session(self, session: Session) -> Principal | None:
        """Who a session is of, while the token it was started with is still theirs (not
        revoked, not replaced)."""
        if session.name == ADMIN:
            admin = self.settings.api_token.get_secret_value() if self.settings.api_token else ""
            return ADMIN_PRINCIPAL if admin and session.token == token_hash(admin) else None
        user = self.users.get(session.name)
        if user is None or not user.active or self.users.token_sha256(user.name) != session.token:
            return None
        return Principal(user.name, user.group)


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
    """Who is asking: the administrator (KIOSK_API_TOKEN), a user (their token, or the portal's
    session cookie), or, without either where KIOSK_ANONYMOUS allows it, the anonymous user."""
    settings = services.settings
    token = given_token(request)
    if token:
        principal = services.principal_of_token(token)
        if principal is not None:
            return principal
        raise ApiError(
            401,
            "this API token is not valid (unknown, mistyped or revoked): send the token the "
            "administrator gave you (kiosk users add) as 'Authorization: Bearer TOKEN'",
        )
    if session_id := request.cookies.get(COOKIE):
        return _session_caller(request, services, session_id)
    if settings.anonymous_allowed:
        return ANONYMOUS_PRINCIPAL
    raise ApiError(
        401,
        "this Kiosk needs an API token: send 'Authorization: Bearer TOKEN' "
        "(kiosk CLI: --token or KIOSK_API_TOKEN)",
    )


def signed_in(services: Services, session_id: str) -> tuple[Session, Principal]:
    """The session of this cookie and who it is of; 401 when it ended."""
    session = services.sessions.get(session_id)
    principal = services.principal_of_session(session) if session else None
    if session is None or principal is None:
        raise ApiError(
            401, "your sign-in has expired or was ended: sign in again with your API token"
        )
    return session, principal


def _session_caller(request: Request, services: Services, session_id: str) -> Principal:
    session, principal = signed_in(services, session_id)
    if request.method not in SAFE_METHODS and not session.csrf_matches(
        request.headers.get(CSRF_HEADER)
    ):
        raise ApiError(
            403,
            "this request would change something and carries the portal's session cookie but "
            f"not its CSRF token: send the csrf_token of GET /api/v1/session as {CSRF_HEADER}",
        )
    return principal


CallerDep = Annotated[Principal, Depends(get_caller)]


def require_admin(caller: CallerDep) -> Principal:
    if not caller.admin:
        raise ApiError(403, "only the administrator (the holder of KIOSK_API_TOKEN) may do this")
    return caller


AdminDep = Annotated[Principal, Depends(require_admin)]
