"""Portal sign-in (:mod:`frontend.sessions`): start, read and end the browser's session."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from frontend.deps import ServicesDep, signed_in
from frontend.errors import ApiError
from frontend.routes.v1 import PREFIX
from frontend.sessions import COOKIE, CSRF_HEADER
from kiosk.users import Principal

router = APIRouter(prefix=PREFIX, tags=["session"])


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    token: str = Field(min_length=1, description="The API token the administrator gave you.")


class SessionOut(BaseModel):
    name: str
    group: str = ""
    admin: bool = False
    csrf_token: str = Field(
        description=f"Send it as {CSRF_HEADER} with requests that change "
        "something (submit, delete, sign out)."
    )

    @classmethod
    def of(cls, principal: Principal, csrf: str) -> SessionOut:
        return cls(
            name=principal.name, group=principal.group, admin=principal.admin, csrf_token=csrf
        )


@router.post("/session")
def sign_in(
    body: SignIn, request: Request, response: Response, services: ServicesDep
) -> SessionOut:
    """Sign this browser in with an API token: an HttpOnly, SameSite=Strict session cookie."""
    principal = services.principal_of_token(body.token)
    if principal is None:
        raise ApiError(
            401,
            "this API token is not valid (unknown, mistyped or revoked): paste the token the "
            "administrator gave you (kiosk users add)",
        )
    session_id, session = services.sessions.start(principal.name, body.token)
    https = request.url.scheme == "https" or services.settings.public_url.startswith("https:")
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=services.settings.session_ttl,
        httponly=True,
        samesite="strict",
        secure=https,  # behind a TLS-terminating load balancer too
        path="/",
    )
    return SessionOut.of(principal, session.csrf)


@router.get("/session")
def current_session(request: Request, services: ServicesDep) -> SessionOut:
    """Who this browser is signed in as, and the CSRF token to send (after a page reload)."""
    session_id = request.cookies.get(COOKIE)
    if not session_id:
        raise ApiError(401, "not signed in: POST /api/v1/session with your API token")
    session, principal = signed_in(services, session_id)
    return SessionOut.of(principal, session.csrf)


@router.delete("/session", status_code=204)
def sign_out(request: Request, response: Response, services: ServicesDep) -> None:
    """End this browser's session (its CSRF token required, as for any change, while the
    session is still good; a session that ended or whose token was revoked is just cleared)."""
    session_id = request.cookies.get(COOKIE)
    if session_id:
        session = services.sessions.get(session_id)
        usable = session is not None and services.principal_of_session(session) is not None
        if usable and session and not session.csrf_matches(request.headers.get(CSRF_HEADER)):
            raise ApiError(403, f"signing out needs the session's {CSRF_HEADER} header")
        services.sessions.end(session_id)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
