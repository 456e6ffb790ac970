"""Portal sign-in over a real Redis: a token becomes an HttpOnly, SameSite=Strict session cookie
that reads jobs and files with authentication on; anything that changes something also needs
the session's CSRF token; revoking the user or signing out ends the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from frontend.app import create_app
from frontend.sessions import COOKIE, CSRF_HEADER
from kiosk.keys import SESSION_PREFIX, JobField
from kiosk.queue import JobQueue
from kiosk.settings import FrontendSettings
from tests.helpers import TIFF
from tests.test_users import ADMIN_TOKEN, add_user, bearer


@pytest.fixture
def settings(frontend_settings: FrontendSettings) -> FrontendSettings:
    return frontend_settings.model_copy(
        update={"api_token": SecretStr(ADMIN_TOKEN), "anonymous": False}
    )


@pytest.fixture
def api(settings: FrontendSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def submit(client: TestClient, headers: dict[str, str]):
    return client.post(
        "/api/v1/jobs", data={"job_type": "echo"}, files={"file": ("a.tif", TIFF)}, headers=headers
    )


def test_a_signed_in_browser_reads_jobs_and_files_and_changes_only_with_its_csrf_token(
    api: TestClient, settings: FrontendSettings, queue: JobQueue
) -> None:
    token = add_user(api, "ada", "lab-a")
    with TestClient(create_app(settings)) as browser:
        assert browser.get("/api/v1/jobs").status_code == 401, "authentication is on"
        wrong = browser.post("/api/v1/session", json={"token": "kiosk_wrong"})
        assert wrong.status_code == 401 and "not valid" in wrong.json()["message"]

        signed = browser.post("/api/v1/session", json={"token": token})
        assert signed.status_code == 200
        cookie = signed.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie
        assert "SameSite=strict" in cookie and "Path=/" in cookie
        session = signed.json()
        assert (session["name"], session["group"], session["admin"]) == ("ada", "lab-a", False)
        session_id = browser.cookies[COOKIE]
        assert not list(queue.redis.scan_iter(f"*{session_id}*")), "only its hash is stored"
        assert len(list(queue.redis.scan_iter(SESSION_PREFIX + "*"))) == 1

        refused = submit(browser, {})
        assert refused.status_code == 403 and CSRF_HEADER in refused.json()["message"]
        created = submit(browser, {CSRF_HEADER: session["csrf_token"]})
        assert created.status_code == 201, created.text
        job = created.json()
        assert queue.get(job["id"])[JobField.OWNER] == "ada"
        assert browser.get(f"/api/v1/jobs/{job['id']}").status_code == 200
        upload = queue.get(job["id"])[JobField.INPUT_FILE_NAME]
        assert browser.get(f"/files/{upload}").content == TIFF, "downloads work signed in"
        assert browser.get("/api/v1/session").json()["csrf_token"] == session["csrf_token"]

        other = api.get(f"/api/v1/jobs/{job['id']}")  # no cookie, no token
        assert other.status_code == 401

        no_csrf = browser.delete("/api/v1/session")
        assert no_csrf.status_code == 403
        out = browser.delete("/api/v1/session", headers={CSRF_HEADER: session["csrf_token"]})
        assert out.status_code == 204
        assert not list(queue.redis.scan_iter(SESSION_PREFIX + "*"))
        browser.cookies.set(COOKIE, session_id)  # a copy of the old cookie is no good either
        ended = browser.get("/api/v1/jobs")
        assert ended.status_code == 401 and "sign in again" in ended.json()["message"]


def test_revoking_a_user_ends_their_sessions(api: TestClient, settings: FrontendSettings) -> None:
    token = add_user(api, "bob", "")
    with TestClient(create_app(settings)) as browser:
        assert browser.post("/api/v1/session", json={"token": token}).status_code == 200
        assert browser.get("/api/v1/me").json()["name"] == "bob"
        assert api.delete("/api/v1/users/bob", headers=bearer(ADMIN_TOKEN)).status_code == 200
        ended = browser.get("/api/v1/me")
        assert ended.status_code == 401 and "expired or was ended" in ended.json()["message"]


def test_the_administrator_signs_in_with_the_admin_token(
    api: TestClient, settings: FrontendSettings
) -> None:
    with TestClient(create_app(settings)) as browser:
        signed = browser.post("/api/v1/session", json={"token": ADMIN_TOKEN})
        assert signed.status_code == 200 and signed.json()["admin"] is True
        assert browser.get("/api/v1/users").status_code == 200


def test_a_new_admin_token_ends_the_old_ones_sessions_and_a_dead_cookie_can_be_cleared(
    settings: FrontendSettings,
) -> None:
    with TestClient(create_app(settings)) as browser:
        assert browser.post("/api/v1/session", json={"token": ADMIN_TOKEN}).status_code == 200
        rotated = settings.model_copy(
            update={"api_token": SecretStr("a-new-admin-token"), "anonymous": True}
        )
        with TestClient(create_app(rotated)) as after:
            after.cookies.set(COOKIE, browser.cookies[COOKIE])
            ended = after.get("/api/v1/users")
            assert ended.status_code == 401, "the leaked old token's session ends with it"
            # the dead session is cleared without its CSRF token, and anonymous use resumes
            cleared = after.delete("/api/v1/session")
            assert cleared.status_code == 204
            assert f"{COOKIE}=" in cleared.headers["set-cookie"]
            assert "Max-Age=0" in cleared.headers["set-cookie"]
            after.cookies.clear()  # as the browser does with that answer
            assert after.get("/api/v1/jobs").status_code == 200


def test_a_sign_in_that_is_not_json_sets_no_cookie(api: TestClient) -> None:
    """A cross-site form cannot sign a browser in as someone else (login CSRF)."""
    for headers in ({"Content-Type": "text/plain"}, {}):
        sent = api.post("/api/v1/session", content=b'{"token": "x"}', headers=headers)
        assert sent.status_code == 422 and "set-cookie" not in sent.headers
        assert sent.json()["message"].startswith("invalid request")
