"""The original DeepCell client, kiosk-client 0.8.4 from PyPI, in a virtual environment of its
own (it pins treq and brings Twisted; it must not share the project's environment)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.services import REPO

VERSION = "0.8.4"
VENV = REPO / ".cache" / f"kiosk-client-{VERSION}"


def kiosk_client_python() -> Path:
    python = VENV / "bin" / "python"
    ready = VENV / ".installed"
    if not ready.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                f"kiosk-client=={VERSION}",
            ],
            check=True,
        )
        ready.touch()
    return python
