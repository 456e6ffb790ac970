"""Write the settings table into README.md (between its settings markers) from the code:
every service's settings and every built-in job type's own. ``make settings-table`` runs it."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from consumers.registry import job_type_settings
from kiosk.settings import settings_table

README = Path(__file__).resolve().parents[1] / "README.md"
MARKERS = re.compile(r"(<!-- settings:start -->\n)(.*?)(<!-- settings:end -->)", re.S)


def main() -> int:
    text = README.read_text()
    if not MARKERS.search(text):
        print(f"{README} has no settings markers", file=sys.stderr)
        return 1
    table = settings_table(job_type_settings())
    README.write_text(MARKERS.sub(lambda m: m[1] + table + m[3], text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
