"""Users and what their jobs used: the administrator's user routes, ``/me`` and ``/usage``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from frontend.deps import AdminDep, CallerDep, Services, ServicesDep, get_caller
from frontend.errors import ApiError
from frontend.routes.v1 import PREFIX
from kiosk.costs import UsageRow, summarize
from kiosk.keys import ANONYMOUS, JobField
from kiosk.users import User, UserError, UserExists

router = APIRouter(prefix=PREFIX, tags=["users"], dependencies=[Depends(get_caller)])


# ----------------------------------------------------------------------------- users


class Me(BaseModel):
    name: str = Field(description="The caller: a user's name, 'admin' or 'anonymous'.")
    group: str = Field("", description="The caller's group, whose members see each other's jobs.")
    admin: bool = False


@router.get("/me")
def me(caller: CallerDep) -> Me:
    """Who the token (or its absence) makes the caller."""
    return Me(name=caller.name, group=caller.group, admin=caller.admin)


WEIGHT_HELP = "Fair-share weight: 2 starts twice the jobs of 1 while both have work waiting."


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    name: str
    group: str = ""
    weight: float = Field(1.0, description=WEIGHT_HELP)


class UserChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float = Field(description=WEIGHT_HELP)


class UserOut(BaseModel):
    name: str
    group: str
    weight: float
    created_at: str
    revoked_at: str | None = None
    token: str | None = Field(None, description="Only when the user is created: keep it.")

    @classmethod
    def of(cls, user: User, token: str | None = None) -> UserOut:
        return cls(
            name=user.name,
            group=user.group,
            weight=user.weight,
            created_at=user.created_at,
            revoked_at=user.revoked_at or None,
            token=token,
        )


@router.post("/users", status_code=201)
def add_user(body: UserIn, services: ServicesDep, _: AdminDep) -> UserOut:
    """Create a user (administrator only); the answer holds their token, shown this once."""
    try:
        token = services.users.add(body.name, body.group, body.weight)
    except UserExists as exc:
        raise ApiError(409, str(exc)) from None
    except UserError as exc:
        raise ApiError(422, str(exc)) from None
    user = services.users.get(body.name)
    assert user is not None
    return UserOut.of(user, token)


@router.get("/users")
def list_users(services: ServicesDep, _: AdminDep) -> list[UserOut]:
    return [UserOut.of(user) for user in services.users.list()]


@router.patch("/users/{name}")
def change_user(name: str, body: UserChange, services: ServicesDep, _: AdminDep) -> UserOut:
    """Change a user's fair-share weight (administrator only); it counts from their next job
    started."""
    if services.users.get(name) is None:
        raise ApiError(404, f"no user {name!r}: see GET /api/v1/users")
    try:
        return UserOut.of(services.users.set_weight(name, body.weight))
    except UserError as exc:
        raise ApiError(422, str(exc)) from None


@router.delete("/users/{name}")
def revoke_user(name: str, services: ServicesDep, _: AdminDep) -> UserOut:
    """Revoke a user's token for good; their jobs stay theirs."""
    try:
        return UserOut.of(services.users.revoke(name))
    except UserError as exc:
        raise ApiError(404, str(exc)) from None


# ----------------------------------------------------------------------------- usage


class UsageOut(BaseModel):
    name: str = Field(description="A user's name, or a group's.")
    group: str = ""
    jobs: int
    gpu_seconds: float = Field(description="Estimated: seconds waiting on the model server.")
    cpu_seconds: float = Field(description="Consumer seconds, every stage.")
    cost: float = Field(description="Estimated dollars, from the consumers' price table.")

    @classmethod
    def of(cls, row: UsageRow) -> UsageOut:
        return cls(
            name=row.name,
            group=row.group,
            jobs=row.jobs,
            gpu_seconds=round(row.usage.gpu_seconds, 3),
            cpu_seconds=round(row.usage.cpu_seconds, 3),
            cost=round(row.usage.cost, 6),
        )


class UsageReport(BaseModel):
    since: str | None
    users: list[UsageOut]
    groups: list[UsageOut]


@router.get("/usage")
def usage(
    services: ServicesDep,
    caller: CallerDep,
    user: Annotated[str | None, Query(description="Only this user's jobs.")] = None,
    since: Annotated[
        str | None, Query(description="Only jobs created at or after this ISO date or time.")
    ] = None,
) -> UsageReport:
    """GPU seconds, CPU seconds and estimated cost of the jobs the caller may see (the
    administrator: all), per user and per group."""
    start = _since(since)

    def wanted(fields: dict[str, str]) -> bool:
        mine = user is None or (fields.get(JobField.OWNER) or ANONYMOUS) == user
        return bool(fields) and mine and caller.may_see(fields)

    by_user, by_group = summarize(f for f in _jobs_since(services, start) if wanted(f))
    return UsageReport(
        since=since,
        users=[UsageOut.of(row) for row in by_user],
        groups=[UsageOut.of(row) for row in by_group],
    )


def _jobs_since(services: Services, start: float) -> Iterator[dict[str, str]]:
    """Every job hash created at or after ``start`` (epoch seconds), newest first."""
    position: tuple[float, str] | None = None
    while page := services.queue.recent(500, position):
        position = page[-1][1], page[-1][0]
        for (_, created), fields in zip(
            page, services.queue.get_many([key for key, _ in page]), strict=True
        ):
            if created < start:
                return
            yield fields


def _since(text: str | None) -> float:
    """Epoch seconds of an ISO date or time (UTC unless it says otherwise); 0 for none."""
    if not text:
        return 0.0
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(
            422, f"since={text!r} is not a date or time: write e.g. 2026-12-01 or 2026-12-01T09:00"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
