"""Users: per-user tokens stored hashed in a real Redis, created and revoked by the
administrator over the API, and each caller seeing only the jobs they may (their own, their
group's; the administrator all; the anonymous user the anonymous jobs) in both APIs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from typer.testing import CliRunner

from frontend.app import create_app
from kiosk.keys import USER_PREFIX, USER_TOKEN_PREFIX, JobField
from kiosk.queue import JobQueue
from kiosk.settings import FrontendSettings
from kiosk.users import ANONYMOUS_PRINCIPAL, Principal, UserError, UserStore
from local.cli import app
from tests.conftest import ServiceGroup, start_stack
from tests.helpers import TIFF, zip_bytes

runner = CliRunner()

ADMIN_TOKEN = "the-admin-token"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api(frontend_settings: FrontendSettings) -> Iterator[TestClient]:
    settings = frontend_settings.model_copy(
        update={"api_token": SecretStr(ADMIN_TOKEN), "anonymous": True}
    )
    with TestClient(create_app(settings)) as client:
        yield client


def add_user(api: TestClient, name: str, group: str = "") -> str:
    response = api.post(
        "/api/v1/users", json={"name": name, "group": group}, headers=bearer(ADMIN_TOKEN)
    )
    assert response.status_code == 201, response.text
    return response.json()["token"]


def submit(api: TestClient, token: str | None, name: str) -> str:
    response = api.post(
        "/api/v1/jobs",
        data={"job_type": "echo"},
        files={"file": (name, TIFF)},
        headers=bearer(token) if token else {},
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def listed(api: TestClient, token: str | None) -> set[str]:
    response = api.get("/api/v1/jobs", headers=bearer(token) if token else {})
    assert response.status_code == 200, response.text
    return {job["name"] for job in response.json()["jobs"]}


def test_a_users_token_is_shown_once_and_stored_only_as_its_hash(queue: JobQueue) -> None:
    users = UserStore(queue.redis)
    token = users.add("ada", "lab-a")
    assert token.startswith("kiosk_") and len(token) > 40
    stored = queue.redis.hgetall(USER_PREFIX + "ada")
    assert token not in stored.values()
    assert stored["token_sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert queue.redis.get(USER_TOKEN_PREFIX + stored["token_sha256"]) == "ada"
    assert users.authenticate(token) == Principal("ada", "lab-a")
    assert users.authenticate(token + "x") is None
    assert users.authenticate("not-a-kiosk-token") is None


def test_a_name_taken_reserved_or_malformed_is_refused_saying_what_to_do(queue: JobQueue) -> None:
    users = UserStore(queue.redis)
    users.add("ada")
    with pytest.raises(UserError, match="exists"):
        users.add("ada")
    with pytest.raises(UserError, match="reserved"):
        users.add("anonymous")
    with pytest.raises(UserError, match="lower-case letters"):
        users.add("Ada Lovelace")
    with pytest.raises(UserError, match="group name"):
        users.add("bob", "Lab A")


def test_a_revoked_token_stops_working_and_the_name_stays_taken(queue: JobQueue) -> None:
    users = UserStore(queue.redis)
    token = users.add("ada")
    revoked = users.revoke("ada")
    assert revoked.revoked_at and not revoked.active
    assert users.authenticate(token) is None
    with pytest.raises(UserError, match="exists"):
        users.add("ada")
    assert [u.name for u in users.list()] == ["ada"]


def test_who_may_see_a_job_owner_group_admin_and_the_anonymous_user() -> None:
    ada = Principal("ada", "lab-a")
    job = {JobField.OWNER: "bob", JobField.GROUP: "lab-a"}
    assert ada.may_see(job)  # same group
    assert not Principal("cy", "lab-b").may_see(job)
    assert not Principal("cy").may_see({JobField.OWNER: "bob", JobField.GROUP: ""})
    assert Principal("admin", admin=True).may_see(job)
    assert ANONYMOUS_PRINCIPAL.may_see({})  # jobs from before users are the anonymous user's
    assert not ada.may_see({})


def test_the_administrator_adds_lists_and_revokes_users_over_the_api(api: TestClient) -> None:
    token = add_user(api, "ada", "lab-a")
    assert api.get("/api/v1/me", headers=bearer(token)).json() == {
        "name": "ada",
        "group": "lab-a",
        "admin": False,
    }
    users = api.get("/api/v1/users", headers=bearer(ADMIN_TOKEN)).json()
    assert [(u["name"], u["group"], u["token"]) for u in users] == [("ada", "lab-a", None)]
    assert users[0]["weight"] == 1
    heavier = api.patch("/api/v1/users/ada", json={"weight": 2.5}, headers=bearer(ADMIN_TOKEN))
    assert heavier.status_code == 200 and heavier.json()["weight"] == 2.5
    zero = api.patch("/api/v1/users/ada", json={"weight": 0}, headers=bearer(ADMIN_TOKEN))
    assert zero.status_code == 422 and "from 0.01 to 100" in zero.json()["message"]
    nobody = api.patch("/api/v1/users/nobody", json={"weight": 2}, headers=bearer(ADMIN_TOKEN))
    assert nobody.status_code == 404
    again = api.post("/api/v1/users", json={"name": "ada"}, headers=bearer(ADMIN_TOKEN))
    assert again.status_code == 409 and "exists" in again.json()["message"]
    # Only the administrator manages users.
    for method, path in (
        ("GET", "/api/v1/users"),
        ("DELETE", "/api/v1/users/ada"),
        ("PATCH", "/api/v1/users/ada"),
    ):
        refused = api.request(method, path, headers=bearer(token), json={"weight": 9})
        assert refused.status_code == 403 and "administrator" in refused.json()["message"]
    assert api.get("/api/v1/users").status_code == 403  # nor the anonymous user
    revoked = api.delete("/api/v1/users/ada", headers=bearer(ADMIN_TOKEN))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    denied = api.get("/api/v1/jobs", headers=bearer(token))
    assert denied.status_code == 401 and "revoked" in denied.json()["message"]
    missing = api.delete("/api/v1/users/nobody", headers=bearer(ADMIN_TOKEN))
    assert missing.status_code == 404 and "kiosk users list" in missing.json()["message"]


def test_each_caller_lists_reads_and_deletes_only_the_jobs_they_may_see(
    api: TestClient, queue: JobQueue
) -> None:
    ada = add_user(api, "ada", "lab-a")
    bea = add_user(api, "bea", "lab-a")
    cy = add_user(api, "cy", "lab-b")
    ada_job = submit(api, ada, "ada.tif")
    submit(api, bea, "bea.tif")
    cy_job = submit(api, cy, "cy.tif")
    submit(api, None, "anon.tif")
    assert queue.get(ada_job)[JobField.OWNER] == "ada"
    assert queue.get(ada_job)[JobField.GROUP] == "lab-a"

    assert listed(api, ada) == listed(api, bea) == {"ada.tif", "bea.tif"}
    assert listed(api, cy) == {"cy.tif"}
    assert listed(api, None) == {"anon.tif"}
    assert listed(api, ADMIN_TOKEN) == {"ada.tif", "bea.tif", "cy.tif", "anon.tif"}

    # Another user's job is as good as missing: to read, to fetch and to delete.
    for method, path in (
        ("GET", f"/api/v1/jobs/{cy_job}"),
        ("GET", f"/api/v1/jobs/{cy_job}/result"),
        ("DELETE", f"/api/v1/jobs/{cy_job}"),
    ):
        response = api.request(method, path, headers=bearer(ada))
        assert response.status_code == 404, (method, path)
    assert queue.get(cy_job)  # still there
    children = api.get("/api/v1/jobs", params={"parent": cy_job}, headers=bearer(ada))
    assert children.status_code == 404  # nor its images or frames
    # The token as a header of either kind, spaces around it forgiven.
    assert api.get(f"/api/v1/jobs/{cy_job}", headers={"X-API-Key": f" {cy} "}).status_code == 200
    assert api.get(f"/api/v1/jobs/{cy_job}", headers=bearer(f"{cy}  ")).status_code == 200
    assert api.get(f"/api/v1/jobs/{cy_job}", headers=bearer(cy)).status_code == 200
    assert api.delete(f"/api/v1/jobs/{ada_job}", headers=bearer(ADMIN_TOKEN)).status_code == 204


def test_the_original_routes_answer_another_users_job_as_a_missing_one(api: TestClient) -> None:
    ada = add_user(api, "ada")
    cy = add_user(api, "cy")
    upload = api.post("/api/upload", files={"file": ("x.tif", TIFF)}, headers=bearer(ada)).json()
    body = {"jobType": "echo", "imageName": "x.tif", "uploadedName": upload["uploadedName"]}
    key = api.post("/api/predict", json=body, headers=bearer(ada)).json()["hash"]
    assert api.post("/api/status", json={"hash": key}, headers=bearer(ada)).json() == {
        "status": "new"
    }
    assert api.post("/api/status", json={"hash": key}, headers=bearer(cy)).json() == {
        "status": None
    }
    fields = {"hash": key, "key": ["status", "owner"]}
    assert api.post("/api/redis", json=fields, headers=bearer(cy)).json() == {"value": [None, None]}
    assert api.post("/api/redis", json=fields, headers=bearer(ada)).json() == {
        "value": ["new", "ada"]
    }
    expire = api.post("/api/redis/expire", json={"hash": key}, headers=bearer(cy))
    assert expire.status_code == 404


def test_without_anonymous_use_a_request_needs_a_token(
    frontend_settings: FrontendSettings,
) -> None:
    settings = frontend_settings.model_copy(update={"api_token": SecretStr(ADMIN_TOKEN)})
    assert not settings.anonymous_allowed  # with an admin token set, anonymous is off unless asked
    with TestClient(create_app(settings)) as api:
        denied = api.get("/api/v1/jobs")
        assert denied.status_code == 401 and "needs an API token" in denied.json()["message"]
        token = add_user(api, "ada")
        assert api.get("/api/v1/jobs", headers=bearer(token)).status_code == 200
        wrong = api.get("/api/v1/jobs", headers=bearer("kiosk_wrong"))
        assert wrong.status_code == 401 and "not valid" in wrong.json()["message"]


def test_the_cli_adds_lists_and_revokes_users_and_a_user_sees_only_their_jobs(
    env: dict, queue: JobQueue, processes: ServiceGroup, tmp_path: Path
) -> None:
    """`kiosk users` and `kiosk whoami` against a real frontend and consumer."""
    env = {**env, "KIOSK_API_TOKEN": ADMIN_TOKEN, "KIOSK_ANONYMOUS": "true"}
    stack = start_stack(env, queue, processes, {"echo": 1, "echo-zip": 1})

    def kiosk(*args: str, token: str | None = ADMIN_TOKEN):
        options = ["--url", stack.url, *(["--token", token] if token else [])]
        return runner.invoke(app, [*options, *args], catch_exceptions=False)

    added = kiosk("users", "add", "ada", "--group", "lab-a")
    assert added.exit_code == 0, added.output
    token = added.stdout.strip().splitlines()[-1]
    assert token.startswith("kiosk_")
    assert "ada" in kiosk("users", "list").stdout
    weighed = kiosk("users", "weight", "ada", "2")
    assert weighed.exit_code == 0 and "ada now weighs 2" in weighed.stdout, weighed.output
    assert kiosk("users", "add", "bob", "--weight", "3").exit_code == 0
    listed_users = kiosk("users", "list").stdout
    assert any("bob" in line and "│ 3 " in line for line in listed_users.splitlines())
    assert kiosk("whoami", token=token).stdout.strip() == "ada, group lab-a"
    assert kiosk("whoami", token=None).stdout.strip() == "anonymous"
    refused = kiosk("users", "list", token=token)
    assert refused.exit_code == 1 and "administrator" in refused.output

    image = tmp_path / "mine.tif"
    image.write_bytes(TIFF)
    done = kiosk("submit", str(image), "-j", "echo", "--out", str(tmp_path / "out"), token=token)
    assert done.exit_code == 0, done.output
    assert "mine.tif" in kiosk("jobs", token=token).stdout
    assert "mine.tif" not in kiosk("jobs", token=None).stdout
    assert "mine.tif" in kiosk("jobs").stdout  # the administrator sees every job
    plate = tmp_path / "plate.zip"
    plate.write_bytes(zip_bytes({"a.tif": TIFF, "b.tif": TIFF}))
    done = kiosk("submit", str(plate), "-j", "echo", "--out", str(tmp_path / "out"), token=token)
    assert done.exit_code == 0, done.output
    (zip_job,) = [k for k in queue.redis.scan_iter("echo-zip:*") if queue.get(k)]
    children = queue.get(zip_job)[JobField.CHILDREN].split(",")
    assert [queue.get(c)[JobField.OWNER] for c in children] == ["ada", "ada"]  # inherited

    # Every job recorded what it used; the usage sums them per user and group.
    for key in [zip_job, *children]:
        fields = queue.get(key)
        assert float(fields[JobField.CPU_SECONDS]) > 0 and float(fields[JobField.COST]) > 0
    group, totals = queue.usage_totals()["ada"]  # what the exporter gives Prometheus
    assert group == "lab-a" and totals.cpu_seconds > 0
    ada_usage = kiosk("usage", "--user", "ada")
    assert ada_usage.exit_code == 0, ada_usage.output
    (row,) = [line for line in ada_usage.stdout.splitlines() if " ada " in f" {line} "]
    assert "│ 4 " in row  # mine.tif, the zip and its two images
    assert "lab-a" in ada_usage.stdout  # the group's table
    assert "ada" in kiosk("usage", token=token).stdout
    assert "ada" not in kiosk("usage", token=None).stdout  # the anonymous user sees none of it
    late = kiosk("usage", "--since", "2999-01-01")
    assert late.exit_code == 0 and "ada" not in late.stdout
    bad = kiosk("usage", "--since", "last tuesday")
    assert bad.exit_code == 1 and "not a date" in bad.output

    assert "revoked ada" in kiosk("users", "revoke", "ada").stdout
    gone = kiosk("jobs", token=token)
    assert gone.exit_code == 1 and "revoked" in gone.output
