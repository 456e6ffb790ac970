"""The portal shows where a waiting job stands: in a real headless Chromium against `kiosk up`,
an image uploaded while the one consumer is busy says it is next in line, then, once the
queue's pace is measured, when it should start; started, when it should finish."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Locator, Page, expect

from kiosk.queue import JobQueue, connect
from local.client import KioskClient
from tests.helpers import TIFF
from tests.support.servers import wait_for
from tests.test_portal import job_card, open_portal


def test_a_waiting_upload_says_it_is_next_in_line_and_then_when_it_starts(
    kiosk_up, page: Page, tmp_path: Path
) -> None:
    stack = kiosk_up(KIOSK_QUEUES="slow", TEST_SLOW_SECONDS="6")
    queue = JobQueue(connect(stack.redis_url()))
    image = tmp_path / "first.tif"
    image.write_bytes(TIFF)
    with KioskClient(stack.url) as client:
        first = client.submit(image, "slow")["id"]
        wait_for(lambda: client.job(first)["status"] != "new", 30, what="the consumer busy")

    mine = tmp_path / "mine.tif"
    mine.write_bytes(TIFF)
    open_portal(page, stack.url)
    page.select_option("#job-type", "slow")
    page.set_input_files("#file-input", mine)
    page.get_by_role("button", name="Upload and start").click()
    expect_next_in_line_then_estimates(job_card(page, "mine.tif"), queue)


def expect_next_in_line_then_estimates(card: Locator, queue: JobQueue) -> None:
    """A `slow` upload waiting behind the one busy consumer: it says it is next, then, once the
    queue's pace is known, when it starts, then, started, when it is done."""
    expect(card.locator(".where")).to_have_text("Next in line")
    # The queue's pace as the consumer's settles would have measured it, a job every 6 s (the
    # upload is waiting, so they count).
    now = queue.redis.time()[0]
    for step in range(4):
        queue.note_settled("slow", 6.0, now=now - 18 + 6 * step)
    expect(card.locator(".where")).to_contain_text("Next in line, starts in ~")
    expect(card.locator(".where")).to_contain_text("Done in ~", timeout=30_000)
