"""The `kiosk` CLI against a running frontend and consumers, over HTTP."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kiosk.keys import JOB_INDEX
from kiosk.queue import JobQueue
from local.cli import app, result_name
from tests.conftest import RunningStack, ServiceGroup, start_stack
from tests.helpers import PNG, TIFF, zip_bytes
from tests.support.jobtypes import QUEUES

runner = CliRunner()


def kiosk(stack_url: str, *args: str):
    return runner.invoke(app, ["--url", stack_url, *args], catch_exceptions=False)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    (folder / "a.tif").write_bytes(TIFF + b"a")
    (folder / "b.png").write_bytes(PNG + b"b")
    (folder / "nested" / "c.tif").write_bytes(TIFF + b"c")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_submit_a_folder_waits_and_downloads_every_result(
    stack: RunningStack, images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    result = kiosk(stack.url, "submit", str(images), "--job-type", "echo", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "skipped 1 files" in result.output
    assert "submitted 3 of 3 files" in result.output
    assert result.output.count("done") >= 3
    saved = {p.name: p.read_bytes() for p in out.iterdir()}
    assert saved == {
        "a_result.tif": TIFF + b"a",
        "b_result.png": PNG + b"b",
        "c_result.tif": TIFF + b"c",
    }


def test_a_zip_is_split_run_and_its_results_zip_downloaded(
    env: dict, queue: JobQueue, processes: ServiceGroup, tmp_path: Path
) -> None:
    running = start_stack(env, queue, processes, {"echo": 1, "echo-zip": 1})
    archive = tmp_path / "plate.zip"
    archive.write_bytes(zip_bytes({"a.tif": TIFF + b"a", "b.png": PNG + b"b"}))
    out = tmp_path / "results"
    result = kiosk(running.url, "submit", str(archive), "-j", "echo", "--out", str(out))
    assert result.exit_code == 0, result.output
    (saved,) = out.iterdir()
    with zipfile.ZipFile(saved) as results:
        assert sorted(results.namelist()) == ["a_labels.tif", "b_labels.png"]
        assert results.read("a_labels.tif") == TIFF + b"a"


def test_status_download_jobs_and_delete(stack: RunningStack, images: Path, tmp_path: Path) -> None:
    kiosk(stack.url, "submit", str(images / "a.tif"), "-j", "echo", "--wait")
    job_id = stack.queue.redis.zrange("kiosk:jobs", 0, 0)[0]
    shown = kiosk(stack.url, "status", job_id)
    assert shown.exit_code == 0 and "done" in shown.output and "download_time" in shown.output
    assert '"status": "done"' in kiosk(stack.url, "status", job_id, "--json").output
    saved = kiosk(stack.url, "download", job_id, "--out", str(tmp_path / "dl"))
    assert saved.exit_code == 0
    assert (tmp_path / "dl" / "result.tif").read_bytes() == TIFF + b"a"
    listed = kiosk(stack.url, "jobs", "--status", "done")
    assert "a.tif" in listed.output
    assert kiosk(stack.url, "delete", job_id).exit_code == 0
    gone = kiosk(stack.url, "status", job_id)
    assert gone.exit_code == 1 and "expired" in gone.output


def test_failures_give_a_non_zero_exit_and_say_why(
    stack: RunningStack, images: Path, tmp_path: Path
) -> None:
    corrupt = tmp_path / "bad.tif"
    corrupt.write_bytes(TIFF[:8] + b"CORRUPT")
    result = kiosk(stack.url, "submit", str(corrupt), "-j", "echo", "--wait")
    assert result.exit_code == 1
    assert "failed" in result.output and "corrupt" in result.output

    unknown = kiosk(stack.url, "submit", str(images / "a.tif"), "-j", "nope")
    assert unknown.exit_code == 1 and "unknown job type 'nope'" in unknown.output

    refused = kiosk(stack.url, "submit", str(images / "notes.txt"), "-j", "echo")
    assert refused.exit_code == 1 and "not a supported file type" in refused.output


def test_an_unreachable_kiosk_is_reported_plainly() -> None:
    result = kiosk("http://127.0.0.1:9", "job-types")
    assert result.exit_code == 1 and "cannot reach Kiosk" in result.output
    assert "kiosk up" in result.output


def test_job_types_are_listed(stack: RunningStack) -> None:
    assert kiosk(stack.url, "job-types").output.split() == QUEUES.split(",")


def test_result_names_keep_the_input_name_and_never_collide() -> None:
    taken: set[str] = set()
    assert (
        result_name(Path("x/a.tif"), "http://h/files/output/1/result.tif", taken) == "a_result.tif"
    )
    assert (
        result_name(Path("y/a.tif"), "http://h/files/output/2/result.tif", taken)
        == "a_result-2.tif"
    )
    assert (
        result_name(Path("a.tif"), "http://h/files/output/3/a_labels.tif", taken) == "a_labels.tif"
    )


def test_submit_refuses_a_bad_option_before_uploading(stack: RunningStack, images: Path) -> None:
    jobs_before = stack.queue.redis.zcard(JOB_INDEX)
    result = kiosk(stack.url, "submit", str(images), "-j", "echo", "--scale", "inf")
    assert result.exit_code == 2
    assert "scale 'inf' is not a pixel size" in result.output
    assert stack.queue.redis.zcard(JOB_INDEX) == jobs_before
    result = kiosk(stack.url, "submit", str(images), "-j", "echo", "--compartment", "nuclear")
    assert result.exit_code == 2
    assert "compartment is an option of mesmer jobs" in result.output
    assert stack.queue.redis.zcard(JOB_INDEX) == jobs_before


def test_submit_names_results_after_inputs_in_any_script(
    stack: RunningStack, tmp_path: Path
) -> None:
    folder = tmp_path / "named"
    folder.mkdir()
    for name in ("Zelle µm.tif", "細胞.tif"):
        (folder / name).write_bytes(TIFF + name.encode())
    out = tmp_path / "named-results"
    result = kiosk(stack.url, "submit", str(folder), "-j", "echo", "--out", str(out))
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["Zelle µm_result.tif", "細胞_result.tif"]
    assert (out / "細胞_result.tif").read_bytes() == TIFF + "細胞.tif".encode()
