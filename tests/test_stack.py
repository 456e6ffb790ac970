"""`kiosk up` as a real process tree: serve, supervise, restart, stop cleanly, resume."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import zipfile
from datetime import datetime
from pathlib import Path

import pytest
import tifffile

from kiosk.client import KioskClient
from kiosk.jobs import JobField, Status
from kiosk.queue import JobQueue, connect
from tests.helpers import TIFF
from tests.support.jobtypes import COMPLETIONS, PLUGINS
from tests.support.kiosk_client import run_kiosk_client
from tests.support.servers import free_port, wait_for
from tests.support.services import REPO


def logged_at(log: Path, text: str) -> datetime:
    """When a Kiosk service logged a line containing ``text``."""
    line = next(line for line in log.read_text().splitlines() if text in line)
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


class KioskUp:
    """`python -m kiosk up` on a free port with its own data directory."""

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
            **env,
        }

    def start(self) -> KioskUp:
        self._sink = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kiosk",
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
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == self.process.pid:
                found[int(entry.name)] = cmdline
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


def test_kiosk_up_serves_runs_jobs_and_stops_everything_on_ctrl_c(kiosk_up, tmp_path) -> None:
    stack = kiosk_up()
    image = tmp_path / "cells.tif"
    image.write_bytes(TIFF)
    with KioskClient(stack.url) as client:
        job = client.submit(image, "echo")
        final = client.wait([job["id"]], timeout=60)[job["id"]]
        assert final["status"] == Status.DONE
        assert client.download(job["id"], tmp_path / "out").read_bytes() == TIFF
    children = stack.children()
    kinds = sorted(
        " ".join(cmd.split(" -m ")[-1].split()[:2]) if " -m " in cmd else "redis"
        for cmd in children.values()
    )
    assert kinds == [
        "autoscaler.janitor",
        "consumers echo",
        "consumers echo-zip",
        "consumers slow",
        "consumers slow-zip",
        "frontend",
        "redis",
    ]
    assert (stack.data_dir / "redis" / "appendonlydir").is_dir()
    assert stack.stop() == 0
    assert "Kiosk stopped." in stack.output()
    logs = stack.data_dir / "logs"
    frontend_down = logged_at(logs / "frontend.log", "Shutting down")
    consumers_down = logged_at(logs / "consumer-echo-0.log", "stopping: no new claims")
    janitor_down = logged_at(logs / "janitor.log", "janitor stopped")
    assert frontend_down <= consumers_down <= janitor_down  # no new jobs once consumers go
    wait_for(
        lambda: not any(Path(f"/proc/{pid}").exists() for pid in children),
        10,
        what="every child of the stack to be gone",
    )


def test_kiosk_up_demo_segments_the_samples_and_kiosk_client_gets_labels_back(
    kiosk_up, tmp_path: Path
) -> None:
    stack = kiosk_up(
        args=("--demo",), KIOSK_QUEUES="segmentation", KIOSK_EMBEDDED_MODEL_SERVER="true"
    )
    wait_for(
        lambda: "demo done" in stack.output() or "demo failed" in stack.output(),
        240,
        what="the demo",
    )
    assert "demo done" in stack.output(), stack.output()[-3000:]
    results = stack.data_dir / "demo-results"
    assert str(results) in stack.output().replace("\n", "")
    saved = sorted(path.name for path in results.iterdir())
    assert saved == [
        "nuclei-1024_labels.tif",
        "nuclei-480x640_labels.tif",
        "nuclei-512_labels.tif",
        "plate_labels.zip",
    ]
    labels = tifffile.imread(results / "nuclei-480x640_labels.tif")
    assert labels.shape == (480, 640) and labels.max() > 20
    with zipfile.ZipFile(results / "plate_labels.zip") as archive:
        assert len(archive.namelist()) == 4
    # The original kiosk-client, unchanged, against the same `kiosk up`.
    out = tmp_path / "kiosk-client"
    out.mkdir()
    sample = REPO / "samples" / "nuclei-512.png"
    (job,) = run_kiosk_client(sample, "segmentation", stack.url, out, tmp_path)["job_data"]
    assert job["status"] == Status.DONE, job
    (saved,) = out.glob("*_labels.tif")
    assert tifffile.imread(saved).shape == (512, 512)
    assert stack.stop() == 0
    model_server_log = (stack.data_dir / "logs" / "model-server.log").read_text()
    assert "NuclearSegmentation" in model_server_log


def test_a_crashed_consumer_is_restarted(kiosk_up, tmp_path) -> None:
    stack = kiosk_up()
    (victim,) = [p for p, c in stack.children().items() if c.rstrip().endswith("consumers echo")]
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: any(
            c.rstrip().endswith("consumers echo") and p != victim
            for p, c in stack.children().items()
        ),
        30,
        what="a new echo consumer",
    )
    assert "consumer-echo-0 exited with code -9; restarting" in stack.output()
    image = tmp_path / "cells.tif"
    image.write_bytes(TIFF)
    with KioskClient(stack.url) as client:
        job = client.submit(image, "echo")
        assert client.wait([job["id"]], timeout=60)[job["id"]]["status"] == Status.DONE


def test_queued_and_running_jobs_survive_a_stack_restart(kiosk_up, tmp_path) -> None:
    first = kiosk_up(TEST_SLOW_SECONDS="1.5", KIOSK_SHUTDOWN_GRACE="0")
    images = []
    for i in range(4):
        images.append(tmp_path / f"{i}.tif")
        images[-1].write_bytes(TIFF)
    with KioskClient(first.url) as client:
        ids = [client.submit(p, "slow")["id"] for p in images]
    queue = JobQueue(connect(first.redis_url()))
    wait_for(
        lambda: queue.get(ids[0])[JobField.STATUS] == Status.DONE, 60, what="the first job done"
    )
    assert first.stop() == 0
    consumer_log = (first.data_dir / "logs" / "consumer-slow-0.log").read_text()
    assert "handed back" in consumer_log
    second = kiosk_up(data_dir=first.data_dir, TEST_SLOW_SECONDS="0.2")
    with KioskClient(second.url) as client:
        final = client.wait(ids, timeout=120)
    assert {job["status"] for job in final.values()} == {Status.DONE}
    queue = JobQueue(connect(second.redis_url()))
    assert all(int(queue.redis.hget(COMPLETIONS, i)) == 1 for i in ids)
    assert all(int(final[i]["attempts"]) == 1 for i in ids)  # hand-back burned none


def kiosk_up_refusing(tmp_path: Path, port: int, **env: str) -> subprocess.CompletedProcess:
    """Run `kiosk up` where it is expected to refuse to start, and return what it said."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "kiosk",
            "up",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "d"),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_kiosk_up_explains_how_to_install_a_missing_redis_server(tmp_path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    run = kiosk_up_refusing(tmp_path, free_port(), PATH=str(empty))
    assert run.returncode == 1
    assert "redis-server was not found" in run.stdout and "apt-get install" in run.stdout


def test_kiosk_up_refuses_a_port_in_use(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = kiosk_up_refusing(tmp_path, port)
    assert run.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use" in run.stdout


def test_kiosk_up_stops_at_once_when_a_job_type_cannot_start(tmp_path) -> None:
    run = kiosk_up_refusing(tmp_path, free_port(), KIOSK_QUEUES="echo")  # no plugin for it
    assert run.returncode == 1
    assert "consumer-echo-0 exited with code 2 while starting" in run.stdout
    assert "no consumer serves queue 'echo'" in run.stdout
