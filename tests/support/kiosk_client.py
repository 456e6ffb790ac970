"""The original DeepCell client, kiosk-client 0.8.4 from PyPI, in a virtual environment of its
own (it pins treq and brings Twisted; it must not share the project's environment)."""

from __future__ import annotations

import json
import os
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


def run_kiosk_client(image: Path, job_type: str, url: str, out: Path, tmp_path: Path) -> dict:
    """``python -m kiosk_client IMAGE -j TYPE -t HOST -U`` as its users run it; its summary."""
    python = kiosk_client_python()
    host = url.removeprefix("http://")
    env = {
        **os.environ,
        "UPDATE_INTERVAL": "1",
        "MANAGER_REFRESH_RATE": "1",
        "OUTPUT_DIR": str(out),
        "LOG_LEVEL": "DEBUG",
    }
    log = tmp_path / "kiosk-client.log"
    with open(log, "wb") as sink:
        client = subprocess.Popen(
            [str(python), "-m", "kiosk_client", str(image), "-j", job_type, "-t", host, "-U"],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            returncode = client.wait(180)
        except subprocess.TimeoutExpired:
            client.kill()
            returncode = None
    lines = [line for line in log.read_text().splitlines() if "urllib3" not in line]
    assert returncode == 0, "\n".join(lines[-40:])
    return json.loads(next(out.glob("*jobs_*.json")).read_text())
