"""Queue positions and ETAs: the pace a queue's consumers keep, measured in Redis as they settle
jobs; positions under fair share from the owners' standings alone; and both in the API."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from rich.console import Console

from frontend.app import create_app
from kiosk import pace
from kiosk.fairshare import Line, jobs_before, start_order
from kiosk.keys import WAITING_TOKEN, JobField
from kiosk.pace import Estimate, Pace
from kiosk.queue import JobQueue
from kiosk.settings import FrontendSettings
from local.cli import eta_words, status_table
from tests.helpers import TIFF
from tests.test_fairshare import submit

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def test_a_waiting_job_starts_after_those_ahead_and_one_more_settle() -> None:
    estimate = pace.waiting(NOW, 3, Pace(rate=2.0, seconds=10.0))
    assert estimate == Estimate(3, NOW + timedelta(seconds=2), NOW + timedelta(seconds=12))
    assert pace.waiting(NOW, 3, Pace()) == Estimate(3), "nothing measured: no time promised"


def test_a_running_job_finishes_a_jobs_time_after_it_started_never_before_now() -> None:
    started = NOW - timedelta(seconds=4)
    assert pace.running(NOW, started, Pace(seconds=10)).finish == NOW + timedelta(seconds=6)
    assert pace.running(NOW, started, Pace(seconds=1)).finish == NOW


@pytest.mark.parametrize("seed", range(20))
def test_positions_from_the_standings_are_the_places_in_the_start_order(seed: int) -> None:
    rng = random.Random(seed)
    lines = [
        Line(
            owner,
            rng.choice([0.0, 0.5, 1.0, 3.0, 7.25]),
            [f"{owner}{i}" for i in range(rng.randint(1, 9))],
            rng.choice([1.0, 2.0, 0.5, 4.0]),
        )
        for owner in rng.sample(["ada", "bob", "cy", "dee", "eve"], rng.randint(1, 5))
    ]
    order = list(start_order(lines))
    standings = [line.standing for line in lines]
    for line in lines:
        for index, job in enumerate(line.jobs):
            assert jobs_before(standings, line.owner, index) == order.index(job)


def fill(queue: JobQueue, jobs: int) -> None:
    """Waiting work on the queue, so settles count toward its throughput."""
    queue.redis.lpush("echo", *[WAITING_TOKEN] * jobs)


def test_the_pace_counts_settles_while_work_waits_and_not_idle_time(queue: JobQueue) -> None:
    fill(queue, 5)
    for step in range(21):  # a settle every half second while work waits: 2 jobs/s
        queue.note_settled("echo", 4.0, now=1000 + step * 0.5)
    measured = queue.pace("echo")
    assert measured.rate == pytest.approx(2.0)
    assert measured.seconds == pytest.approx(4.0)
    queue.redis.delete("echo")
    queue.note_settled("echo", 9.0, now=1011)  # the queue ran dry here
    fill(queue, 5)
    queue.note_settled("echo", None, now=5000)  # an hour idle: not a slow settle
    assert queue.pace("echo").rate == pytest.approx(2.0, rel=0.05)
    # the job seconds are a moving average: the 9 s job moved it a fifth of the way
    assert queue.pace("echo").seconds == pytest.approx(4.0 + 0.2 * 5.0)


def test_the_pace_follows_a_change_within_minutes(queue: JobQueue) -> None:
    fill(queue, 5)
    now = 0.0
    for _ in range(600):  # ten minutes at 1 job/s
        now += 1.0
        queue.note_settled("echo", 1.0, now=now)
    for _ in range(1200):  # then ten minutes at 2 jobs/s (a second consumer)
        now += 0.5
        queue.note_settled("echo", 1.0, now=now)
    assert queue.pace("echo").rate == pytest.approx(2.0, rel=0.15)


@pytest.fixture
def api(frontend_settings: FrontendSettings) -> Iterator[TestClient]:
    with TestClient(create_app(frontend_settings)) as client:
        yield client


def test_the_api_gives_waiting_jobs_their_fair_share_position_and_etas(
    api: TestClient, queue: JobQueue
) -> None:
    ada = [submit(queue, "ada", f"a{i}.tif") for i in range(4)]
    anonymous = api.post("/api/v1/jobs", data={"job_type": "echo"}, files={"file": ("x.tif", TIFF)})
    assert anonymous.status_code == 201
    created = anonymous.json()
    assert created["position"] == 1, "the anonymous user's job goes after ada's first"
    assert created["eta_start"] is None, "no pace measured yet: no time promised"
    legacy = api.post("/api/redis", json={"hash": created["id"], "key": ["status", "position"]})
    assert legacy.json() == {"value": ["new", "1"]}, "the original's route answers it too"
    for step in range(11):
        queue.note_settled("echo", 6.0, now=datetime.now(UTC).timestamp() - 10 + step)
    job = api.get(f"/api/v1/jobs/{created['id']}").json()
    eta = datetime.fromisoformat(job["eta_start"]) - datetime.now(UTC)
    assert timedelta(seconds=0) < eta <= timedelta(seconds=3)  # 2 ahead of it at 1 job/s
    assert datetime.fromisoformat(job["eta_finish"]) - datetime.fromisoformat(
        job["eta_start"]
    ) == timedelta(seconds=6)
    assert queue.get(ada[0])[JobField.OWNER] == "ada"
    for expected in (ada[0], created["id"]):
        claim = queue.claim("echo", "c1", 1)
        assert claim is not None and claim.key == expected
    running = api.get(f"/api/v1/jobs/{created['id']}").json()
    assert running["position"] is None and running["eta_start"] is None
    assert datetime.fromisoformat(running["eta_finish"]) > datetime.now(UTC)
    listed = api.get("/api/v1/jobs").json()["jobs"]
    assert [j["id"] for j in listed] == [created["id"]], "the anonymous caller sees their own"


def test_the_cli_says_where_a_job_stands_in_words() -> None:
    waiting = {
        "status": "new",
        "position": 3,
        "eta_start": (NOW + timedelta(seconds=40)).isoformat(),
        "eta_finish": (NOW + timedelta(seconds=100)).isoformat(),
    }
    assert eta_words(waiting, NOW) == "3 ahead, starts in ~40 s"
    assert eta_words({**waiting, "position": 0, "eta_start": None}, NOW) == "next in line"
    running = {"status": "predicting", "eta_finish": (NOW + timedelta(minutes=7)).isoformat()}
    assert eta_words(running, NOW) == "done in ~7 min"
    assert eta_words({**running, "status": "done"}, NOW) == ""
    table = status_table({"id": "echo:a.tif:1", "status": "new", **waiting, "eta_start": None})
    console = Console(width=120, record=True)
    console.print(table)
    text = console.export_text()
    assert "position" in text and "3 ahead" in text
