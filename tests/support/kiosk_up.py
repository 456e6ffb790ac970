"""`python -m local up` as a real process for tests: start, look inside, stop like Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from tests.support.jobtypes import PLUGINS
from tests.support.servers import free_port, wait_for
from tests.support.services import REPO


def logged_at(log: Path, text: str) -> datetime:
    """When a Kiosk service logged a line containing ``text``."""
    line = next(line for line in log.read_text().splitlines() if text in line)
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


class KioskUp:
    """`python -m local up` on a free port with its own data directory."""

    def __init__(
        self,
        tmp_path: Path,
        data_dir: Path | None = None,
        args: tuple[str, ...] = (),
        **env: str,
    ) -> None:
        self.args = args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir or tmp_path / "data"
        self.log = tmp_path / f"kiosk-up-{self.port}.log"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "KIOSK_QUEUES": "echo,slow",
            "KIOSK_EMBEDDED_MODEL_SERVER": "false",
            "KIOSK_JOB_TYPE_PLUGINS": PLUGINS,
            "KIOSK_HEARTBEAT_INTERVAL": "0.3",
            "KIOSK_HEARTBEAT_TTL": "1.5",
            "KIOSK_CLAIM_TIMEOUT": "0.5",
            "KIOSK_JANITOR_INTERVAL": "0.3",
            "KIOSK_CONSUMERS_PER_QUEUE": "1",  # fixed processes; autoscaling has its own tests
            **env,
        }

    def start(self) -> KioskUp:
        self._sink = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "local",
                "up",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                *self.args,
            ],
            env=self.env,
            cwd=REPO,
            stdout=self._sink,
            stderr=subprocess.STDOUT,
        )
        wait_for(
            lambda: "Kiosk is running" in self.output() or self.process.poll() is not None,
            180,
            what="kiosk up to start",
        )
        assert self.process.poll() is None, self.output()
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def children(self) -> dict[int, str]:
        """Processes whose parent is the stack: pid -> command line."""
        return {pid: cmd for pid, (ppid, cmd) in _processes().items() if ppid == self.process.pid}

    def descendants(self) -> dict[int, str]:
        """Every process below the stack (the autoscaler's model server and consumers too)."""
        table = _processes()
        found: dict[int, str] = {}
        frontier = [self.process.pid]
        while frontier:
            parent = frontier.pop()
            for pid, (ppid, cmd) in table.items():
                if ppid == parent and pid not in found:
                    found[pid] = cmd
                    frontier.append(pid)
        return found

    def redis_url(self) -> str:
        (title,) = [c for c in self.children().values() if "redis-server" in c]
        address = title.split()[1]  # redis-server retitles itself "redis-server HOST:PORT"
        return f"redis://{address}/0"

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._sink.close()
        return self.process.returncode


@pytest.fixture
def kiosk_up(tmp_path: Path):
    started: list[KioskUp] = []

    def start(**kwargs: object) -> KioskUp:
        stack = KioskUp(tmp_path, **kwargs).start()
        started.append(stack)
        return stack

    yield start
    for stack in started:
        stack.stop()


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        table[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline)
    return table
