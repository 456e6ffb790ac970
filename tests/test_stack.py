"""`kiosk up` as a real process tree: serve, supervise, restart, stop cleanly, resume."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import tifffile

from kiosk.keys import JobField, Status
from kiosk.queue import JobQueue, connect
from local.client import KioskClient
from tests.helpers import TIFF
from tests.support.jobtypes import COMPLETIONS
from tests.support.kiosk_client import run_kiosk_client
from tests.support.kiosk_up import logged_at
from tests.support.servers import free_port, wait_for
from tests.support.services import REPO


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
        "consumers echo",
        "consumers echo-zip",
        "consumers slow",
        "consumers slow-zip",
        "frontend",
        "kiosk.janitor",
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
    stack = kiosk_up(  # as `make run` starts it: the autoscaler runs the model server
        args=("--demo",),
        KIOSK_QUEUES="segmentation",
        KIOSK_EMBEDDED_MODEL_SERVER="true",
        KIOSK_CONSUMERS_PER_QUEUE="0",
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
            "local",
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
    run = kiosk_up_refusing(
        tmp_path, free_port(), KIOSK_QUEUES="echo", KIOSK_CONSUMERS_PER_QUEUE="1"
    )  # no plugin for it
    assert run.returncode == 1
    assert "consumer-echo-0 exited with code 2 while starting" in run.stdout
    assert "no consumer serves queue 'echo'" in run.stdout


def test_an_autoscaled_kiosk_up_refuses_a_job_type_that_cannot_start(tmp_path) -> None:
    run = kiosk_up_refusing(tmp_path, free_port(), KIOSK_QUEUES="echo")  # consumers start later
    assert run.returncode == 1
    assert "consumer-echo cannot start" in run.stdout
    assert "no consumer serves queue 'echo'" in run.stdout
