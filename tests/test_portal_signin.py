"""Signing in to the portal, in a real headless Chromium against `kiosk up` with authentication
on: the token becomes a session cookie the page cannot read; the user's jobs from another
device appear; uploads (with the CSRF token), downloads and usage work; a reload keeps the
session and signing out ends it. A signed-in user's waiting upload shows its place and its
estimated start and finish, then downloads."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect

from kiosk.queue import JobQueue, connect
from local.client import KioskClient
from tests.helpers import TIFF
from tests.support.servers import wait_for
from tests.test_portal import JOB_DONE_TIMEOUT_MS, job_card, open_portal
from tests.test_portal_queue import expect_next_in_line_then_estimates

ADMIN = "the-admin-token"


def test_a_user_signs_in_sees_their_jobs_from_elsewhere_uploads_downloads_and_signs_out(
    kiosk_up, page: Page, tmp_path: Path
) -> None:
    stack = kiosk_up(KIOSK_QUEUES="echo", KIOSK_API_TOKEN=ADMIN, KIOSK_ANONYMOUS="false")
    with KioskClient(stack.url, token=ADMIN) as admin:
        token = admin.add_user("ada", "lab-a")["token"]
    elsewhere = tmp_path / "elsewhere.tif"
    elsewhere.write_bytes(TIFF)
    with KioskClient(stack.url, token=token) as ada:  # another device
        job = ada.submit(elsewhere, "echo")
        assert ada.wait([job["id"]], interval=0.2, timeout=60)[job["id"]]["status"] == "done"

    open_portal(page, stack.url)
    expect(page.locator("#sign-in-form")).to_be_visible()
    expect(page.locator("#form-message")).to_contain_text("sign in")
    page.fill("#token", "kiosk_not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#sign-in-message")).to_contain_text("not valid")

    page.fill("#token", token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#who")).to_have_text("Signed in as ada, group lab-a")
    expect(page.locator("#usage")).to_contain_text("1 jobs")
    card = job_card(page, "elsewhere.tif")
    expect(card).to_have_attribute("data-status", "done", timeout=JOB_DONE_TIMEOUT_MS)
    with page.expect_download() as download:
        card.get_by_role("link", name="Download labels (TIFF)").click()
    saved = tmp_path / "downloaded.tif"
    download.value.save_as(saved)
    assert saved.read_bytes() == TIFF, "the session cookie authorises downloads"
    assert "kiosk_session" not in page.evaluate("document.cookie"), "the cookie is HttpOnly"

    mine = tmp_path / "mine.tif"
    mine.write_bytes(TIFF)
    page.select_option("#job-type", "echo")
    page.set_input_files("#file-input", mine)
    page.get_by_role("button", name="Upload and start").click()
    expect(job_card(page, "mine.tif")).to_have_attribute(
        "data-status", "done", timeout=JOB_DONE_TIMEOUT_MS
    )

    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator("#who")).to_have_text("Signed in as ada, group lab-a")
    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#sign-in-form")).to_be_visible()
    status = page.evaluate("fetch('/api/v1/session').then((r) => r.status)")
    assert status == 401, "signed out: the session is gone"


def test_a_signed_in_user_sees_where_their_upload_waits_and_when_then_downloads_it(
    kiosk_up, page: Page, tmp_path: Path
) -> None:
    stack = kiosk_up(
        KIOSK_QUEUES="slow",
        TEST_SLOW_SECONDS="6",
        KIOSK_API_TOKEN=ADMIN,
        KIOSK_ANONYMOUS="false",
    )
    queue = JobQueue(connect(stack.redis_url()))
    with KioskClient(stack.url, token=ADMIN) as admin:
        token = admin.add_user("ada", "lab-a")["token"]
    first = tmp_path / "first.tif"
    first.write_bytes(TIFF)
    with KioskClient(stack.url, token=token) as ada:  # the one consumer is busy with this
        busy = ada.submit(first, "slow")["id"]
        wait_for(lambda: ada.job(busy)["status"] != "new", 30, what="the consumer busy")

    open_portal(page, stack.url)
    page.fill("#token", token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#who")).to_have_text("Signed in as ada, group lab-a")
    mine = tmp_path / "mine.tif"
    mine.write_bytes(b"II*\x00" + b"mine" * 16)
    page.select_option("#job-type", "slow")
    page.set_input_files("#file-input", mine)
    page.get_by_role("button", name="Upload and start").click()
    card = job_card(page, "mine.tif")
    expect_next_in_line_then_estimates(card, queue)
    expect(card).to_have_attribute("data-status", "done", timeout=JOB_DONE_TIMEOUT_MS)
    with page.expect_download() as download:
        card.get_by_role("link", name="Download labels (TIFF)").click()
    saved = tmp_path / "downloaded.tif"
    download.value.save_as(saved)
    assert saved.read_bytes() == mine.read_bytes(), "downloaded with the session cookie"
