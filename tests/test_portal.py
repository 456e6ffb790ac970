"""The web portal in a real browser: Debian's Chromium, driven by Playwright, against a real
`kiosk up` with the embedded model server, as a biologist would use it: drop a zip, watch it
run, look at the previews, download the label images. Screenshots go to tests/artifacts/portal/.
"""

from __future__ import annotations

import base64
import io
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tifffile
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, Page, Playwright, expect

from evaluation.synthetic import generate
from kiosk.jobs import ZIP_PREVIEWS
from kiosk.keys import JobField
from kiosk.queue import JobQueue
from kiosk.storage.local import LocalBucket
from tests.helpers import PNG, TIFF, submit_file
from tests.support.kiosk_up import KioskUp
from tests.support.services import REPO

ARTIFACTS = REPO / "tests" / "artifacts" / "portal"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
UPLOAD_LIMIT = 1024 * 1024  # small, so a refused "too large" file is cheap to make
SHAPES = [(96, 128), (128, 160), (144, 112)]  # distinct, so each label image is checked
JOB_DONE_TIMEOUT_MS = 180_000
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


# ---------------------------------------------------------------- helpers (also for the script)


def chromium_path() -> str:
    """The system's Chromium; Playwright's own browser downloads are not used (no internet)."""
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "chromium is not installed, and the portal tests need it: run `make test-deps` "
            "(it installs Debian's chromium package), then run the tests again",
            pytrace=False,
        )
    return path


def launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)


def stack_env() -> dict[str, str]:
    """`kiosk up` as the demo test starts it, with one consumer and a small upload limit."""
    return {
        "KIOSK_QUEUES": "segmentation",
        "KIOSK_EMBEDDED_MODEL_SERVER": "true",
        "KIOSK_CONSUMERS_PER_QUEUE": "1",
        "KIOSK_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
    }


def tiff_bytes(shape: tuple[int, int], seed: int) -> bytes:
    image, _ = generate(shape, seed=seed, dtype="uint16")
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image)
    return buffer.getvalue()


def zip_of_images(shapes: list[tuple[int, int]]) -> bytes:
    """A zip of generated nuclei images named ``cells-{i}.tif``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for i, shape in enumerate(shapes):
            archive.writestr(f"cells-{i}.tif", tiff_bytes(shape, seed=100 + i))
    return buffer.getvalue()


def open_portal(page: Page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")  # limits and job types are loaded


def drop_file(page: Page, selector: str, name: str, data: bytes, mime: str) -> None:
    """Drop a file on an element as a drag from the desktop does: a DataTransfer with the File,
    through dragenter, dragover and drop."""
    page.evaluate(
        """([selector, name, encoded, mime]) => {
            const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: mime }));
            const target = document.querySelector(selector);
            for (const type of ["dragenter", "dragover", "drop"]) {
                target.dispatchEvent(new DragEvent(type,
                    { bubbles: true, cancelable: true, dataTransfer: transfer }));
            }
        }""",
        [selector, name, base64.b64encode(data).decode(), mime],
    )


def job_card(page: Page, name: str):
    return page.locator("li.job", has=page.locator("h3", has_text=name))


def wait_until_done(page: Page, name: str):
    card = job_card(page, name)
    expect(card).to_have_attribute("data-status", "done", timeout=JOB_DONE_TIMEOUT_MS)
    return card


def wait_for_images(page: Page, card) -> None:
    """Every preview in the card has loaded and decoded (a broken image has naturalWidth 0)."""
    card.locator(".previews img").first.wait_for()
    page.wait_for_function(
        """(card) => [...card.querySelectorAll('.previews img')].every(
               (img) => img.complete && img.naturalWidth > 0)""",
        arg=card.element_handle(),
        timeout=30_000,
    )


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    return path


LOW_CONTRAST_JS = """() => {
    // Text whose colour has less than 4.5:1 contrast with the background behind it.
    const rgb = (c) => c.match(/[\\d.]+/g).map(Number);
    const lum = ([r, g, b]) => [r, g, b].map((v) => {
        v /= 255;
        return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
    }).reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
    const background = (el) => {
        for (; el; el = el.parentElement) {
            const c = rgb(getComputedStyle(el).backgroundColor);
            if (c.length < 4 || c[3] > 0) return c;
        }
        return [255, 255, 255];
    };
    const low = [];
    for (const el of document.querySelectorAll("body *")) {
        const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
        if (!own || !el.checkVisibility() || el.disabled) continue;
        const [a, b] = [lum(rgb(getComputedStyle(el).color)), lum(background(el))];
        const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
        if (ratio < 4.5) low.push(`${el.textContent.trim().slice(0, 40)}: ${ratio.toFixed(2)}`);
    }
    return low;
}"""


def job_ids(url: str) -> set[str]:
    return {
        job["id"] for job in httpx.get(f"{url}/api/v1/jobs", params={"limit": 500}).json()["jobs"]
    }


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KioskUp]:
    """One real `kiosk up` for the module (starting the model server takes a while)."""
    chromium_path()  # fail before the stack starts when there is no browser
    started = KioskUp(tmp_path_factory.mktemp("portal"), **stack_env()).start()
    yield started
    started.stop()


def open_page(browser: Browser, request: pytest.FixtureRequest, viewport: dict) -> Iterator[Page]:
    """A page in a fresh context (the ``page`` and ``phone`` fixtures in tests/conftest.py);
    a screenshot of it when the test failed."""
    context = browser.new_context(viewport=viewport, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        screenshot(page, f"FAILED-{request.node.name}")
    context.close()


# ---------------------------------------------------------------- in the browser


def test_a_dropped_zip_runs_to_done_with_previews_and_a_results_zip_of_labels(
    stack: KioskUp, page: Page, tmp_path: Path
) -> None:
    children_pages: list[str] = []
    page.on("request", lambda r: children_pages.append(r.url) if "parent=" in r.url else None)
    open_portal(page, stack.url)
    drop_file(page, "#dropzone", "plate.zip", zip_of_images(SHAPES), "application/zip")
    expect(page.locator("#chosen li")).to_have_count(1)
    expect(page.locator("#refusals")).to_be_empty()
    page.get_by_role("button", name="Upload and start").click()

    card = wait_until_done(page, "plate.zip")
    expect(card.locator(".children")).to_have_text("3 of 3 images done, 0 failed")
    expect(card.locator(".previews img")).to_have_count(3)
    # The card asks for as many children as get previews, a number the server gives.
    assert children_pages and all(f"limit={ZIP_PREVIEWS}" in url for url in children_pages)
    wait_for_images(page, card)
    expect(page.locator("#announcer")).to_contain_text("plate.zip")
    screenshot(page, "desktop-zip-done")

    with page.expect_download() as download:
        card.get_by_role("link", name="Download results zip").click()
    assert download.value.suggested_filename == "plate_labels.zip"
    saved = tmp_path / "plate_labels.zip"
    download.value.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        names = sorted(archive.namelist())
        assert names == [f"cells-{i}_labels.tif" for i in range(3)]
        for i, shape in enumerate(SHAPES):
            labels = tifffile.imread(io.BytesIO(archive.read(f"cells-{i}_labels.tif")))
            assert labels.shape == shape and labels.max() > 0, (i, labels.shape)


def test_a_picked_image_shows_upload_progress_runs_on_a_phone_and_stays_listed_after_reload(
    stack: KioskUp, phone: Page, tmp_path: Path
) -> None:
    image = tmp_path / "cells.tif"
    image.write_bytes(tiff_bytes((512, 512), seed=7))  # 512 KiB: an upload that takes a moment
    open_portal(phone, stack.url)
    phone.set_input_files("#file-input", image)
    expect(phone.locator("#chosen li")).to_have_count(1)
    phone.get_by_label("Scale").fill("0.65")
    cdp = phone.context.new_cdp_session(phone)  # a slow uplink, so the progress bar is seen
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 256 * 1024},
    )
    phone.get_by_role("button", name="Upload and start").click()
    expect(phone.get_by_role("progressbar", name="Upload of cells.tif")).to_be_visible()
    expect(job_card(phone, "cells.tif")).to_contain_text("% uploaded")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )

    card = wait_until_done(phone, "cells.tif")
    expect(card).to_contain_text("objects found")
    wait_for_images(phone, card)
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page scrolls sideways on a phone ({width} px wide)"
    screenshot(phone, "phone-image-done")

    phone.reload()
    phone.wait_for_selector("body[data-ready=true]")
    card = wait_until_done(phone, "cells.tif")  # remembered by this browser
    wait_for_images(phone, card)
    with phone.expect_download() as download:
        card.get_by_role("link", name="Download labels (TIFF)").click()
    saved = tmp_path / "labels.tif"
    download.value.save_as(saved)
    assert tifffile.imread(saved).shape == (512, 512)


def test_refused_files_say_why_and_nothing_is_uploaded(
    stack: KioskUp, page: Page, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    huge = tmp_path / "huge.tif"
    huge.write_bytes(b"II*\x00" + b"\x00" * (UPLOAD_LIMIT + 100 * 1024))
    before = job_ids(stack.url)
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    open_portal(page, stack.url)

    drop_file(page, "#dropzone", "notes.txt", b"not an image", "text/plain")
    refusals = page.locator("#refusals")
    expect(refusals).to_contain_text(
        "'notes.txt' is not a supported file type (.txt): Kiosk takes .tif/.tiff, .png, "
        ".jpg/.jpeg images or a .zip of them."
    )
    page.set_input_files("#file-input", [notes, huge])
    expect(refusals).to_contain_text("'notes.txt' is not a supported file type")
    expect(refusals).to_contain_text(
        "'huge.tif' (1.1 MiB) is larger than the 1.0 MiB this Kiosk accepts per upload"
    )
    expect(page.locator("#chosen li")).to_have_count(0)
    expect(page.get_by_role("button", name="Upload and start")).to_be_disabled()
    screenshot(page, "desktop-refused")
    assert posts == []
    assert job_ids(stack.url) == before

    # A file the page cannot judge (its content is not what its name says): the server's
    # message is shown as it is, and no job is created either.
    fake = tmp_path / "fake.tif"
    fake.write_bytes(PNG)
    page.set_input_files("#file-input", fake)
    page.get_by_role("button", name="Upload and start").click()
    card = job_card(page, "fake.tif")
    expect(card).to_have_attribute("data-status", "refused")
    expect(card).to_contain_text(
        "'fake.tif' is named like a TIFF file but its content is a PNG file; it may be corrupt "
        "or misnamed. Check the file and upload it again."
    )
    assert job_ids(stack.url) == before


def test_a_failed_job_shows_its_reason(stack: KioskUp, page: Page, tmp_path: Path) -> None:
    broken = tmp_path / "broken.tif"
    broken.write_bytes(TIFF)  # a TIFF header and nothing an image needs
    open_portal(page, stack.url)
    page.set_input_files("#file-input", broken)
    page.get_by_role("button", name="Upload and start").click()
    card = job_card(page, "broken.tif")
    expect(card).to_have_attribute("data-status", "failed", timeout=JOB_DONE_TIMEOUT_MS)
    (job_id,) = [i for i in job_ids(stack.url) if "broken.tif" in i]
    reason = httpx.get(f"{stack.url}/api/v1/jobs/{job_id}").json()["reason"]
    assert reason
    expect(card.locator(".reason")).to_have_text(reason)
    expect(card.get_by_role("link")).to_have_count(0)  # nothing to download
    screenshot(page, "desktop-failed")


def test_the_portal_works_from_the_keyboard_is_labelled_and_legible(
    stack: KioskUp, page: Page, tmp_path: Path
) -> None:
    # Playwright turns on file-chooser interception when a listener is first added, without
    # waiting for it: added only around the key press, it races the chooser (1 run in 3 lost it).
    page.on("filechooser", lambda _: None)
    open_portal(page, stack.url)
    for _ in range(5):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "dropzone":
            break
    else:
        pytest.fail("Tab never reached the drop zone")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none", "the focused drop zone shows no focus outline"
    image = tmp_path / "cells.png"
    image.write_bytes(PNG)
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(image)
    expect(page.locator("#chosen li")).to_have_count(1)
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input:not([type=file]), select')]
               .filter((field) => field.labels.length === 0).map((field) => field.id)"""
    )
    assert unlabelled == []
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    page.set_input_files("#file-input", notes)  # a refusal, so its colours are checked too
    expect(page.locator("#refusals")).not_to_be_empty()
    page.locator("details.more summary").click()
    assert page.evaluate(LOW_CONTRAST_JS) == []
    screenshot(page, "desktop-keyboard")


# ---------------------------------------------------------------- the routes the page uses


def test_the_root_is_the_portal_for_browsers_and_json_for_api_clients(api: TestClient) -> None:
    page = api.get("/", headers={"Accept": BROWSER_ACCEPT}, follow_redirects=False)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/portal.js"' in page.text
    for accept in ("*/*", "application/json", "application/json, text/html;q=0.9"):
        answer = api.get("/", headers={"Accept": accept}, follow_redirects=False)
        assert answer.json()["api"] == "/api/v1", accept
    assert api.get("/", headers={"Accept": ""}).json()["api"] == "/api/v1"
    for asset in ("portal.js", "portal.css"):
        assert api.get(f"/static/{asset}").status_code == 200
    limits = api.get("/api/v1/limits").json()
    assert limits["max_upload_bytes"] == 4 * 1024 * 1024
    assert {".tif", ".png", ".jpg", ".zip"} <= set(limits["extensions"])


def test_jobs_can_be_listed_by_their_zip_parent(
    api: TestClient, queue: JobQueue, bucket: LocalBucket
) -> None:
    children = [submit_file(queue, bucket, "echo", f"c{i}.tif") for i in range(3)]
    parent = submit_file(queue, bucket, "echo", "plate.zip")
    queue.redis.hset(parent, JobField.CHILDREN, ",".join(children))
    queue.redis.hset(parent, JobField.TOTAL_JOBS, "3")
    first = api.get("/api/v1/jobs", params={"parent": parent, "limit": 2}).json()
    assert [job["id"] for job in first["jobs"]] == children[:2]
    rest = api.get("/api/v1/jobs", params={"parent": parent, "cursor": first["next_cursor"]})
    assert [job["id"] for job in rest.json()["jobs"]] == children[2:]
    assert rest.json()["next_cursor"] is None
    assert api.get("/api/v1/jobs", params={"parent": children[0]}).json()["jobs"] == []
    missing = api.get("/api/v1/jobs", params={"parent": "echo:x.zip:nope"})
    assert missing.status_code == 404 and "no job" in missing.json()["message"]
