"""Portal sign-in: a session per browser, so previews and downloads work with authentication on.

The portal sends a user's token once (``POST /api/v1/session``); the answer sets an HttpOnly,
SameSite=Strict cookie holding a random session id, and gives a CSRF token that the portal
sends as ``X-CSRF-Token`` with every request that changes something (the cookie alone, which
a browser attaches to any request to this site, never suffices for those). Redis keeps the
SHA-256 of the session id (``kiosk:session:{sha256}``: who, the CSRF token, when) with the
session's lifetime as its TTL. A session is of a name: revoking the user ends their sessions
at their next request, and so does a new token (the administrator's rotated, a user's reissued):
the session keeps the SHA-256 of the token it was started with.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import redis

from kiosk.jobs import now_iso
from kiosk.keys import SESSION_PREFIX
from kiosk.users import token_hash

COOKIE = "kiosk_session"
CSRF_HEADER = "X-CSRF-Token"


@dataclass(frozen=True)
class Session:
    name: str  # who signed in: a user's name, or the administrator's
    csrf: str
    token: str  # the SHA-256 of the token signed in with: a new token ends the session

    def csrf_matches(self, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(str(given).encode(), self.csrf.encode())


class SessionStore:
    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self.redis = client
        self.ttl = ttl

    def start(self, name: str, token: str) -> tuple[str, Session]:
        """A new session for ``name``, signed in with ``token``: its id (for the cookie, never
        stored) and the session."""
        session_id = secrets.token_urlsafe(32)
        session = Session(name, secrets.token_urlsafe(32), token_hash(token))
        key = SESSION_PREFIX + token_hash(session_id)
        fields: dict[Any, Any] = {"name": name, "csrf": session.csrf, "token": session.token}
        fields["created_at"] = now_iso()
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self.ttl)
            pipe.execute()
        return session_id, session

    def get(self, session_id: str) -> Session | None:
        fields = self.redis.hgetall(SESSION_PREFIX + token_hash(session_id))
        if not fields or "name" not in fields:
            return None
        return Session(
            str(fields["name"]), str(fields.get("csrf", "")), str(fields.get("token", ""))
        )

    def end(self, session_id: str) -> None:
        self.redis.delete(SESSION_PREFIX + token_hash(session_id))
