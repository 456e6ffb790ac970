"""Who is asking: per-user API tokens, stored hashed in Redis, and what each caller may see.

An administrator (the holder of ``KIOSK_API_TOKEN``) creates users, each in a group (a lab),
and revokes them. A user's token is shown once, when it is created; Redis keeps only its
SHA-256 (tokens are 256 random bits, so a plain hash is as good as a slow one and costs
nothing per request). A request without a token is the anonymous user where the Kiosk allows
anonymous use (the local stack, the original kiosk-client and the ImageJ plugin, which send no
token).

Who may see a job is one pure rule (:meth:`Principal.may_see`): the administrator every job,
a user their own and their group's, the anonymous user the anonymous jobs.

A user's weight is their share of the consumers when users compete (:mod:`kiosk.fairshare`):
a user of weight 2 starts two jobs for every one of a user of weight 1 while both have work
waiting. Users without a record (the anonymous user, the administrator) weigh 1.

Keys: ``kiosk:user:{name}`` (hash: name, group, weight, token_sha256, created_at, revoked_at) and
``kiosk:user-token:{sha256}`` (the user's name), written together in one transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis

from kiosk.fairshare import DEFAULT_WEIGHT, MAX_WEIGHT, MIN_WEIGHT, weight_of
from kiosk.jobs import now_iso
from kiosk.keys import (
    ANONYMOUS,
    GROUP_PREFIX,
    USER_PREFIX,
    USER_TOKEN_PREFIX,
    USER_WEIGHT,
    JobField,
)

ADMIN = "admin"
"""The administrator's name as an owner (jobs submitted with ``KIOSK_API_TOKEN``)."""
TOKEN_PREFIX = "kiosk_"
"""Every user token starts so: a token in a log or a paste is recognisable as Kiosk's."""
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
RESERVED_NAMES = frozenset({ANONYMOUS, ADMIN})


class UserError(ValueError):
    """A user cannot be created or changed as asked; the message says why and what to do."""


class UserExists(UserError):
    """The name is taken (by an active or a revoked user)."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: str, what: str = "user") -> str:
    """A user or group name: lower-case letters, digits, '.', '_' and '-', at most 63."""
    if not _NAME.match(name):
        raise UserError(
            f"{what} name {name!r} is not allowed: use 1-63 lower-case letters, digits, '.', "
            "'_' or '-', starting with a letter or digit"
        )
    return name


def check_weight(weight: float) -> float:
    """A fair-share weight: from MIN_WEIGHT to MAX_WEIGHT."""
    if not (math.isfinite(weight) and MIN_WEIGHT <= weight <= MAX_WEIGHT):
        raise UserError(
            f"weight {weight:g} is not allowed: give a number from {MIN_WEIGHT:g} to "
            f"{MAX_WEIGHT:g} (1 is an equal share; 2 twice the jobs of a user of weight 1)"
        )
    return float(weight)


@dataclass(frozen=True)
class User:
    name: str
    group: str
    created_at: str
    revoked_at: str = ""
    weight: float = DEFAULT_WEIGHT

    @property
    def active(self) -> bool:
        return not self.revoked_at


@dataclass(frozen=True)
class Principal:
    """The caller of a request: a user, the administrator or the anonymous user."""

    name: str
    group: str = ""
    admin: bool = False

    def may_see(self, fields: Mapping[str, str]) -> bool:
        """Whether this caller may list, read, download or delete a job with these fields.

        Jobs from before users (no owner) belong to the anonymous user."""
        if self.admin:
            return True
        owner = fields.get(JobField.OWNER) or ANONYMOUS
        if owner == self.name:
            return True
        group = fields.get(JobField.GROUP, "")
        return bool(self.group) and group == self.group


ANONYMOUS_PRINCIPAL = Principal(ANONYMOUS)
ADMIN_PRINCIPAL = Principal(ADMIN, admin=True)


def admin_token_matches(given: str, admin_token: str | None) -> bool:
    return admin_token is not None and hmac.compare_digest(given.encode(), admin_token.encode())


class UserStore:
    """Users and their tokens in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def add(self, name: str, group: str = "", weight: float = DEFAULT_WEIGHT) -> str:
        """Create a user; the token, which is never shown again."""
        check_name(name)
        if group:
            check_name(group, "group")
        check_weight(weight)
        if name in RESERVED_NAMES:
            raise UserError(f"{name!r} is reserved: choose another user name")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = token_hash(token)
        record: dict[Any, Any] = {
            "name": name,
            "group": group,
            USER_WEIGHT: f"{weight:g}",
            "token_sha256": digest,
            "created_at": now_iso(),
            "revoked_at": "",
        }
        key = USER_PREFIX + name
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    if pipe.exists(key):
                        raise UserExists(
                            f"user {name!r} exists (revoked users keep their name, so their "
                            "jobs stay theirs): choose another name"
                        )
                    pipe.multi()
                    pipe.hset(key, mapping=record)
                    pipe.set(USER_TOKEN_PREFIX + digest, name)
                    if group:
                        pipe.sadd(GROUP_PREFIX + group, name)
                    pipe.execute()
                    return token
                except redis.WatchError:
                    continue

    def get(self, name: str) -> User | None:
        fields = cast(dict[str, str], self.redis.hgetall(USER_PREFIX + name))
        return _user(fields) if fields else None

    def list(self) -> list[User]:
        users = []
        for key in sorted(self.redis.scan_iter(match=USER_PREFIX + "*", count=500)):
            fields = cast(dict[str, str], self.redis.hgetall(key))
            if fields:
                users.append(_user(fields))
        return users

    def set_weight(self, name: str, weight: float) -> User:
        """Change a user's fair-share weight; it counts from their next started job."""
        check_weight(weight)
        if self.get(name) is None:
            raise UserError(f"no user {name!r}: see `kiosk users list`")
        self.redis.hset(USER_PREFIX + name, USER_WEIGHT, f"{weight:g}")
        user = self.get(name)
        assert user is not None
        return user

    def members(self, group: str) -> set[str]:
        """The names of a group's users (revoked ones included: their jobs are the group's)."""
        return {str(name) for name in self.redis.smembers(GROUP_PREFIX + group)}

    def token_sha256(self, name: str) -> str:
        """The SHA-256 of the user's current token ('' when none)."""
        return str(self.redis.hget(USER_PREFIX + name, "token_sha256") or "")

    def revoke(self, name: str) -> User:
        """Turn a user's token off for good; their jobs stay theirs (the admin still sees them)."""
        user = self.get(name)
        if user is None:
            raise UserError(f"no user {name!r}: see `kiosk users list`")
        if not user.active:
            return user
        digest = self.redis.hget(USER_PREFIX + name, "token_sha256") or ""
        revoked_at = now_iso()
        with self.redis.pipeline() as pipe:
            pipe.hset(USER_PREFIX + name, "revoked_at", revoked_at)
            pipe.delete(USER_TOKEN_PREFIX + str(digest))
            pipe.execute()
        return User(user.name, user.group, user.created_at, revoked_at, user.weight)

    def authenticate(self, token: str) -> Principal | None:
        """The user whose token this is; None for an unknown or revoked token."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        name = self.redis.get(USER_TOKEN_PREFIX + token_hash(token))
        if name is None:
            return None
        user = self.get(str(name))
        if user is None or not user.active:
            return None
        return Principal(user.name, user.group)


def _user(fields: Mapping[str, str]) -> User:
    return User(
        name=fields.get("name", ""),
        group=fields.get("group", ""),
        created_at=fields.get("created_at", ""),
        revoked_at=fields.get("revoked_at", ""),
        weight=weight_of(fields.get(USER_WEIGHT, DEFAULT_WEIGHT)),
    )
