"""The web portal with the mesmer job type, in a real headless Chromium against a real `kiosk
up` (Redis, the embedded model server with the bundled whole-cell model, a mesmer consumer):
choosing mesmer offers the labels to return, and the choice reaches the job."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tifffile
from playwright.sync_api import Page, expect

from evaluation.cells import generate_cells
from tests.support.kiosk_up import KioskUp
from tests.test_portal import (
    chromium_path,
    drop_file,
    open_portal,
    screenshot,
    wait_until_done,
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KioskUp]:
    chromium_path()
    started = KioskUp(
        tmp_path_factory.mktemp("portal-mesmer"),
        KIOSK_QUEUES="segmentation,mesmer",
        KIOSK_EMBEDDED_MODEL_SERVER="true",
    ).start()
    yield started
    started.stop()


def two_channel_tiff() -> bytes:
    drawn = generate_cells((192, 192), seed=48, setting="tissue")
    image = np.clip(drawn.stack(("nuclear", "membrane")), 0, 65535).astype(np.uint16)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, photometric="minisblack")
    return buffer.getvalue()


def test_choosing_mesmer_offers_the_labels_and_both_gives_a_two_channel_label_image(
    stack: KioskUp, page: Page
) -> None:
    open_portal(page, stack.url)
    compartment = page.get_by_label("Label", exact=True)
    expect(compartment).to_be_hidden()  # segmentation takes no compartment
    page.get_by_label("Job type").select_option("mesmer")
    expect(compartment).to_be_visible()
    expect(page.locator("#compartment-hint")).to_contain_text("nuclear channel first")
    compartment.select_option("both")
    drop_file(page, "#dropzone", "tissue.tif", two_channel_tiff(), "image/tiff")
    page.get_by_role("button", name="Upload and start").click()
    card = wait_until_done(page, "tissue.tif")
    expect(card.locator("img")).to_be_visible()
    screenshot(page, "desktop-mesmer-both")

    (job,) = httpx.get(f"{stack.url}/api/v1/jobs", params={"job_type": "mesmer"}).json()["jobs"]
    assert job["options"]["compartment"] == "both"
    labels = tifffile.imread(
        io.BytesIO(httpx.get(f"{stack.url}/api/v1/jobs/{job['id']}/result").content)
    )
    assert labels.shape == (2, 192, 192) and labels[0].max() > 10 and labels[1].max() > 10
