"""Take the README's screenshot of the web portal (docs/portal.png) from the real page.

Starts `kiosk up` the way tests/test_portal.py does (the embedded model server, one consumer),
submits samples/plate.zip through the page, waits for it to finish and saves a 1280x800
screenshot. Needs Debian's chromium (`make test-deps`) and the dev extra (playwright).

    .venv/bin/python scripts/portal_screenshot.py [--out docs/portal.png]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests' helpers start the stack and the browser

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.support.kiosk_up import KioskUp  # noqa: E402
from tests.test_portal import (  # noqa: E402
    DESKTOP,
    launch,
    open_portal,
    stack_env,
    wait_for_images,
    wait_until_done,
)

SAMPLE = REPO / "samples" / "plate.zip"


def take(out: Path) -> Path:
    """Run a real stack and browser, finish one zip job and photograph the page."""
    with tempfile.TemporaryDirectory() as tmp:
        env = stack_env()
        del env["KIOSK_MAX_UPLOAD_BYTES"]  # the page shows the default limit
        stack = KioskUp(Path(tmp), **env).start()
        try:
            with sync_playwright() as playwright:
                browser = launch(playwright)
                page = browser.new_page(viewport=DESKTOP)
                open_portal(page, stack.url)
                page.set_input_files("#file-input", SAMPLE)
                page.get_by_role("button", name="Upload and start").click()
                card = wait_until_done(page, SAMPLE.name)
                wait_for_images(page, card)
                page.mouse.move(0, 0)
                out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=out)
                browser.close()
        finally:
            stack.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "portal.png")
    args = parser.parse_args()
    path = take(args.out)
    print(f"{path}: {path.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
