"""The `kiosk` CLI with the tracking job type: a movie submitted with -j tracking (or its
alias caliban) is followed frame by frame, then through linking, and its results zip is saved
as it is; `kiosk status` counts a movie's frames; .trk/.trks go to tracking only.

The stack runs a stand-in for the tracking consumer (tests/support/tracking_standin.py) that
writes the fields the real one does; the real job type end to end is tested with it."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner

from kiosk.keys import JOB_INDEX
from kiosk.queue import JobQueue
from local import cli
from local.cli import app, collect_files, job_progress, status_table
from tests.conftest import RunningStack, ServiceGroup, start_stack
from tests.helpers import TIFF
from tests.support import tracking_standin
from tests.support.jobtypes import PLUGINS

runner = CliRunner()
FRAMES = 5


def kiosk(url: str, *args: str):
    return runner.invoke(app, ["--url", url, *args], catch_exceptions=False)


def movie_tiff(frames: int = FRAMES) -> bytes:
    buffer = io.BytesIO()
    movie = np.zeros((frames, 24, 32), np.uint16)
    tifffile.imwrite(buffer, movie, photometric="minisblack", metadata={"axes": "TYX"})
    return buffer.getvalue()


def movie_job(status: str, done: int, total: int = 40, progress: int = 0, **more) -> dict:
    return {
        "id": "tracking:movie.tif:x",
        "status": status,
        "progress": progress,
        "children": {"total": total, "done": done, "failed": more.pop("failed", 0), **more},
    }


@pytest.fixture
def tracking_stack(env: dict, queue: JobQueue, processes: ServiceGroup) -> RunningStack:
    env = {
        **env,
        "KIOSK_QUEUES": "echo,tracking",
        "KIOSK_JOB_TYPE_PLUGINS": f"{PLUGINS},{tracking_standin.PLUGIN}",
        "TEST_FRAME_SECONDS": "0.3",
    }
    return start_stack(env, queue, processes, {"tracking": 1})


# ----------------------------------------------------------------------------- in words


@pytest.mark.parametrize(
    ("job", "words", "percent"),
    [
        (movie_job("waiting", 12, unit="frames"), "frames segmented 12 / 40", 30),
        (
            movie_job("waiting", 12, failed=2, unit="frames"),
            "frames segmented 12 / 40, 2 failed",
            35,
        ),
        (movie_job("post-processing", 40, progress=60, unit="frames"), "linking", 60),
        (movie_job("saving-results", 40, progress=90, unit="frames"), "saving-results", 90),
        (movie_job("done", 40, progress=100, unit="frames"), "done", 100),
        (movie_job("waiting", 3, total=4, unit="images"), "images done 3 / 4", 75),
        (movie_job("waiting", 1, total=2, unit="movies"), "movies done 1 / 2", 50),
        ({"status": "predicting", "progress": 20}, "predicting", 20),
    ],
)
def test_a_movies_progress_is_its_frames_then_linking(job: dict, words: str, percent: int):
    assert job_progress(job) == (words, percent)


def test_waiting_gives_each_movie_a_bar_that_counts_frames_then_says_linking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    steps = [
        {"id": "tracking:movie.tif:x", "status": "started", "progress": 0},
        movie_job("waiting", 2, total=4, unit="frames"),
        movie_job("post-processing", 4, total=4, progress=50, unit="frames"),
        movie_job("done", 4, total=4, progress=100, unit="frames"),
    ]

    class Client:
        def wait(self, ids, on_update, timeout=None):
            for job in steps:
                on_update(job)
            return {steps[-1]["id"]: steps[-1]}

    shown: list[str] = []

    class Recording(Progress):
        def update(self, task_id, **fields):
            if "description" in fields:
                shown.append(fields["description"])
            super().update(task_id, **fields)

    monkeypatch.setattr(cli, "Progress", Recording)
    final = cli._wait(Client(), {Path("movie.tif"): steps[0]}, None)
    assert final[Path("movie.tif")]["status"] == "done"
    movie_lines = [line.strip() for line in shown if "movie.tif" in line]
    assert movie_lines == [
        "movie.tif: frames segmented 2 / 4",
        "movie.tif: linking",
        "movie.tif: done",
    ]


def test_status_counts_a_movies_frames_and_shows_its_preview() -> None:
    job = {
        **movie_job("post-processing", 39, failed=1, progress=40, unit="frames"),
        "job_type": "tracking",
        "objects": 17,
        "preview_url": "http://k/files/output/1/movie_preview.gif",
        "failures": [{"name": "frame 7", "reason": "unreadable"}],
    }
    console = Console(width=200, record=True)
    console.print(status_table(job))
    text = console.export_text()
    assert "frames" in text and "39 of 40 segmented, 1 failed" in text
    assert "linking" in text and "40%" in text
    assert re.search(r"tracks\s+│ 17", text), text
    assert "movie_preview.gif" in text and "frame 7: unreadable" in text


def test_trk_movies_are_collected_for_tracking_only(tmp_path: Path) -> None:
    folder = tmp_path / "movies"
    folder.mkdir()
    for name in ("a.trk", "b.trks", "c.tif"):
        (folder / name).write_bytes(b"\x1f\x8b")
    chosen, refused, skipped = collect_files([folder], "tracking")
    assert [p.name for p in chosen] == ["a.trk", "b.trks", "c.tif"] and skipped == 0
    chosen, refused, skipped = collect_files([folder], "segmentation")
    assert [p.name for p in chosen] == ["c.tif"] and skipped == 2 and refused == []
    chosen, refused, _ = collect_files([folder / "a.trk"], "segmentation")
    assert chosen == [] and "only the tracking job type reads" in refused[0][1]


# ----------------------------------------------------------------------------- end to end


def test_submit_a_movie_with_tracking_saves_its_results_zip_and_status_counts_frames(
    tracking_stack: RunningStack, tmp_path: Path
) -> None:
    movie = tmp_path / "movie.tif"
    movie.write_bytes(movie_tiff())
    out = tmp_path / "results"
    result = kiosk(tracking_stack.url, "submit", str(movie), "-j", "tracking", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "submitted 1 of 1 files" in result.output
    (saved,) = out.iterdir()
    assert saved.name == "movie_tracking.zip"  # kept packed, named after the movie
    with zipfile.ZipFile(saved) as archive:
        names = archive.namelist()
        assert names[0] == "movie_tracked.tif" and "lineage.json" in names
        assert archive.read("movie_tracked.tif") == movie.read_bytes()

    (job_id,) = tracking_stack.queue.redis.zrange(JOB_INDEX, 0, -1)
    shown = kiosk(tracking_stack.url, "status", job_id)
    assert shown.exit_code == 0
    assert f"{FRAMES} of {FRAMES} segmented, 0 failed" in shown.output
    assert "preview_url" in shown.output and "done" in shown.output
    as_json = json.loads(kiosk(tracking_stack.url, "status", job_id, "--json").output)
    assert as_json["preview_url"].endswith("/movie_preview.gif")
    assert as_json["children"] == {"total": FRAMES, "done": FRAMES, "failed": 0, "unit": "frames"}


def test_caliban_submits_a_tracking_job_and_a_trk_is_refused_for_other_job_types(
    tracking_stack: RunningStack, tmp_path: Path
) -> None:
    movie = tmp_path / "cells.trk"
    movie.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 60)
    refused = kiosk(tracking_stack.url, "submit", str(movie), "-j", "echo")
    assert refused.exit_code == 1 and "only the tracking job type reads" in refused.output
    assert tracking_stack.queue.redis.zcard(JOB_INDEX) == 0

    result = kiosk(tracking_stack.url, "submit", str(movie), "-j", "caliban", "--wait")
    assert result.exit_code == 0, result.output
    (job_id,) = tracking_stack.queue.redis.zrange(JOB_INDEX, 0, -1)
    assert job_id.startswith("tracking:cells.trk:")


def test_a_tiff_refused_as_a_trk_by_content_says_so(tracking_stack: RunningStack, tmp_path):
    fake = tmp_path / "fake.trk"
    fake.write_bytes(TIFF)
    result = kiosk(tracking_stack.url, "submit", str(fake), "-j", "tracking")
    assert result.exit_code == 1
    assert "named like a trk file but its content is a TIFF file" in result.output
