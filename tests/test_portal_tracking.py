"""The web portal with the tracking job type, in a real browser (Debian's Chromium, driven by
Playwright) against a real `kiosk up`: drop a movie, choose tracking, watch its frames being
segmented, then linked, see the animated preview, download the results zip; .trk/.trks are
taken for tracking only. Screenshots go to tests/artifacts/portal/.

The stack runs a stand-in for the tracking consumer (tests/support/tracking_standin.py) that
writes the fields the real one does and stops at each stage until the test lets it go on, so
every state is seen; the real job type end to end is tested with the job type itself."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
from playwright.sync_api import Page, expect

from kiosk.queue import connect
from tests.support import tracking_standin
from tests.support.jobtypes import PLUGINS
from tests.support.kiosk_up import KioskUp
from tests.test_portal import (
    LOW_CONTRAST_JS,
    PHONE,
    chromium_path,
    drop_file,
    job_card,
    job_ids,
    open_portal,
    screenshot,
    wait_for_images,
    wait_until_done,
)

FRAMES = 4
TRK = b"\x1f\x8b\x08\x00" + b"\x00" * 60  # gzip's magic: what a .trk (a tar.gz) starts with


def movie_tiff(frames: int = FRAMES) -> bytes:
    movie = np.random.default_rng(1).integers(0, 4000, (frames, 40, 56), dtype=np.uint16)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, movie, photometric="minisblack", metadata={"axes": "TYX"})
    return buffer.getvalue()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KioskUp]:
    chromium_path()
    started = KioskUp(
        tmp_path_factory.mktemp("portal-tracking"),
        KIOSK_QUEUES="echo,tracking",
        KIOSK_JOB_TYPE_PLUGINS=f"{PLUGINS},{tracking_standin.PLUGIN}",
        TEST_TRACKING_GATED="1",
    ).start()
    yield started
    started.stop()


def let_go(stack: KioskUp, name: str, times: int = 1) -> None:
    """Let the stand-in working on the movie ``name`` past its next ``times`` stops."""
    redis = connect(stack.redis_url())
    redis.rpush(tracking_standin.gate(name), *["go"] * times)
    redis.close()


def test_a_movie_shows_frames_segmented_then_linking_then_its_animated_preview_and_zip(
    stack: KioskUp, page: Page, tmp_path: Path
) -> None:
    children_pages: list[str] = []
    page.on("request", lambda r: children_pages.append(r.url) if "parent=" in r.url else None)
    open_portal(page, stack.url)
    expect(page.locator("#tracking-intro")).to_be_visible()
    expect(page.locator("#accepted")).to_contain_text("tracking also takes .trk/.trks movies")
    page.get_by_label("Job type").select_option("tracking")
    hint = page.locator("#job-type-hint")
    expect(hint).to_contain_text("a multi-page TIFF (TYX, or TCYX")
    expect(hint).to_contain_text("lineage.json and Cell Tracking Challenge files")
    drop_file(page, "#dropzone", "movie.tif", movie_tiff(), "image/tiff")
    expect(page.locator("#chosen li")).to_have_count(1)
    page.get_by_role("button", name="Upload and start").click()

    card = job_card(page, "movie.tif")
    expect(card.locator(".status")).to_have_text("Segmenting frames", timeout=60_000)
    expect(card.locator(".children")).to_have_text(f"Frames segmented 2 / {FRAMES}")
    progress = card.get_by_role("progressbar", name="Progress of movie.tif")
    expect(progress).to_have_attribute("value", "50")
    assert page.evaluate(LOW_CONTRAST_JS) == []
    screenshot(page, "desktop-tracking-frames")

    let_go(stack, "movie.tif")
    expect(card.locator(".status")).to_have_text("Linking")
    expect(card.locator(".linking")).to_have_text("Linking cells over time")
    expect(card.locator(".children")).to_have_text(f"Frames segmented {FRAMES} / {FRAMES}")
    screenshot(page, "desktop-tracking-linking")

    let_go(stack, "movie.tif")
    card = wait_until_done(page, "movie.tif")
    expect(card.locator(".status")).to_have_text("Done")
    expect(card.locator(".tracks")).to_have_text("3 tracks")
    preview = card.locator(".previews img")
    expect(preview).to_have_count(1)  # the movie's own, not one per frame
    expect(preview).to_have_attribute(
        "alt", "Tracked cell outlines over movie.tif, animated through its frames"
    )
    wait_for_images(page, card)
    assert (
        page.evaluate(
            "(img) => fetch(img.src).then((r) => r.headers.get('content-type'))",
            preview.element_handle(),
        )
        == "image/gif"
    )
    screenshot(page, "desktop-tracking-done")
    assert children_pages == []  # a movie's frames are not listed as thumbnails

    with page.expect_download() as download:
        card.get_by_role("link", name="Download results zip").click()
    assert download.value.suggested_filename == "movie_tracking.zip"
    saved = tmp_path / "results.zip"
    download.value.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        assert archive.namelist()[0] == "movie_tracked.tif"
        assert tifffile.imread(io.BytesIO(archive.read("movie_tracked.tif"))).shape == (
            FRAMES,
            40,
            56,
        )
    assert card.get_by_role("link", name="Download the tracking results of movie.tif").count()


def test_a_trk_is_refused_for_another_job_type_and_taken_for_tracking_on_a_phone(
    stack: KioskUp, phone: Page
) -> None:
    before = job_ids(stack.url)
    posts: list[str] = []
    phone.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    open_portal(phone, stack.url)
    drop_file(phone, "#dropzone", "cells.trk", TRK, "application/gzip")
    expect(phone.locator("#chosen li")).to_have_count(1)  # tracking runs here: it is taken
    phone.get_by_label("Job type").select_option("echo")
    expect(phone.locator("#job-type-hint")).to_be_hidden()
    phone.get_by_role("button", name="Upload and start").click()
    message = phone.locator("#form-message")
    expect(message).to_have_text(
        "'cells.trk' is a tracked movie (.trk/.trks), which only the tracking job type reads: "
        "choose it, or remove the file."
    )
    assert posts == [] and job_ids(stack.url) == before
    screenshot(phone, "phone-trk-refused")

    let_go(stack, "cells.trk", times=2)  # the stand-in need not stop for this one
    phone.get_by_label("Job type").select_option("tracking")
    expect(phone.locator("#job-type-hint")).to_be_visible()
    phone.get_by_role("button", name="Upload and start").click()
    card = wait_until_done(phone, "cells.trk")
    expect(card.locator(".children")).to_have_text("Frames segmented 4 / 4")
    wait_for_images(phone, card)
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page scrolls sideways on a phone ({width} px wide)"
    screenshot(phone, "phone-tracking-done")


def test_the_server_refuses_a_trk_for_another_job_type_when_the_page_lets_it_through(
    stack: KioskUp, page: Page
) -> None:
    """An old page (or a script) that sends a .trk as echo gets the server's refusal."""
    before = job_ids(stack.url)
    open_portal(page, stack.url)
    page.evaluate("() => { state.limits.movie_extensions = []; }")  # as if the page knew less
    page.get_by_label("Job type").select_option("echo")
    drop_file(page, "#dropzone", "old.trk", TRK, "application/gzip")
    page.get_by_role("button", name="Upload and start").click()
    card = job_card(page, "old.trk")
    expect(card).to_have_attribute("data-status", "refused")
    expect(card.locator(".reason")).to_have_text(
        "'old.trk' is a tracked movie (.trk/.trks), which only the tracking job type reads; "
        "job type 'echo' takes .tif/.tiff, .png, .jpg/.jpeg images or a .zip of them. Choose "
        "the tracking job type, or upload the frames as a multi-page TIFF."
    )
    assert job_ids(stack.url) == before


def test_a_zip_of_movies_shows_each_movies_animated_preview(stack: KioskUp, page: Page) -> None:
    """A tracking zip of multi-page TIFFs is split into one tracking job per movie; the card
    counts movies and shows each one's animated preview."""
    let_go(stack, "a.tif", times=2)
    let_go(stack, "b.tif", times=2)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as movies:
        movies.writestr("a.tif", movie_tiff(3))
        movies.writestr("b.tif", movie_tiff(5))
    open_portal(page, stack.url)
    page.get_by_label("Job type").select_option("tracking")
    drop_file(page, "#dropzone", "movies.zip", archive.getvalue(), "application/zip")
    page.get_by_role("button", name="Upload and start").click()
    card = wait_until_done(page, "movies.zip")
    expect(card.locator(".children")).to_have_text("2 of 2 movies done, 0 failed")
    previews = card.locator(".previews img")
    expect(previews).to_have_count(2)
    expect(previews.first).to_have_attribute(
        "alt", "Tracked cell outlines over a.tif, animated through its frames"
    )
    expect(card.locator("figcaption").first).to_contain_text("a.tif (3 tracks)")
    wait_for_images(page, card)
    expect(card.get_by_role("link", name="Download results zip")).to_be_visible()
    screenshot(page, "desktop-tracking-zip-of-movies")
