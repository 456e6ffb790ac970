"""Quotas on jobs waiting to start, per user and per group, over a real Redis: a submission past
one gets 429 naming the quota and what to do, stores no file and creates no job, in both APIs;
the administrator has none; a started job frees a place."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from frontend.app import create_app
from kiosk.janitor import Janitor
from kiosk.keys import JOB_INDEX, JobField, children_upload_prefix, output_prefix
from kiosk.queue import JobQueue
from kiosk.settings import FrontendSettings, JanitorSettings
from kiosk.storage.local import LocalBucket
from tests.helpers import TIFF, zip_bytes
from tests.test_users import ADMIN_TOKEN as ADMIN
from tests.test_users import add_user, bearer


@pytest.fixture
def api(frontend_settings: FrontendSettings) -> Iterator[TestClient]:
    settings = frontend_settings.model_copy(
        update={
            "api_token": SecretStr(ADMIN),
            "anonymous": True,
            "quota_waiting_jobs": 2,
            "group_quota_waiting_jobs": 3,
        }
    )
    with TestClient(create_app(settings)) as client:
        yield client


def submit(api: TestClient, token: str | None, name: str = "a.tif"):
    return api.post(
        "/api/v1/jobs",
        data={"job_type": "echo"},
        files={"file": (name, TIFF)},
        headers=bearer(token) if token else {},
    )


def stored(bucket_dir: Path) -> int:
    return sum(1 for path in bucket_dir.rglob("*") if path.is_file())


def test_a_user_past_their_waiting_quota_is_refused_until_a_job_starts(
    api: TestClient, queue: JobQueue, bucket_dir: Path
) -> None:
    ada = add_user(api, "ada", "lab-a")
    assert [submit(api, ada).status_code for _ in range(2)] == [201, 201]
    files, jobs = stored(bucket_dir), queue.redis.zcard(JOB_INDEX)
    refused = submit(api, ada)
    assert refused.status_code == 429
    message = refused.json()["message"]
    assert "user 'ada' has 2 jobs waiting" in message and "KIOSK_QUOTA_WAITING_JOBS" in message
    assert "delete waiting ones" in message
    assert stored(bucket_dir) == files and queue.redis.zcard(JOB_INDEX) == jobs, "nothing kept"
    # the original's routes: its upload and its job are each refused
    uploaded = api.post("/api/upload", files={"file": ("b.tif", TIFF)}, headers=bearer(ada))
    assert uploaded.status_code == 429 and stored(bucket_dir) == files
    predict = api.post(
        "/api/predict",
        json={"jobType": "echo", "imageName": "b.tif", "uploadedName": "uploads/b.tif"},
        headers=bearer(ada),
    )
    assert predict.status_code == 429 and "KIOSK_QUOTA_WAITING_JOBS" in predict.text
    # the administrator and other users are not held back by ada's quota
    assert submit(api, ADMIN).status_code == 201
    assert submit(api, None).status_code == 201
    claim = queue.claim("echo", "c1", 1)  # fair share: ada's first job goes first (by name)
    assert claim is not None and claim.fields[JobField.OWNER] == "ada"
    assert submit(api, ada).status_code == 201, "a started job frees a place"


def test_a_group_past_its_waiting_quota_is_refused_whoever_submits(
    api: TestClient, queue: JobQueue
) -> None:
    ada, bob = add_user(api, "ada", "lab-a"), add_user(api, "bob", "lab-a")
    cy = add_user(api, "cy", "lab-b")
    assert [submit(api, ada).status_code for _ in range(2)] == [201, 201]
    assert submit(api, bob).status_code == 201
    refused = submit(api, bob)
    assert refused.status_code == 429
    assert "group 'lab-a' has 3 jobs waiting" in refused.json()["message"]
    assert "KIOSK_GROUP_QUOTA_WAITING_JOBS" in refused.json()["message"]
    assert submit(api, cy).status_code == 201, "another group has its own quota"


def test_the_census_counts_what_each_user_stores_and_the_byte_quota_reads_it(
    frontend_settings: FrontendSettings,
    queue: JobQueue,
    bucket: LocalBucket,
    redis_url: str,
    bucket_dir: Path,
) -> None:
    settings = frontend_settings.model_copy(
        update={"api_token": SecretStr(ADMIN), "anonymous": True, "quota_bytes": 5000}
    )
    with TestClient(create_app(settings)) as api:
        ada = add_user(api, "ada", "lab-a")
        mine = submit(api, ada, "mine.tif").json()["id"]
        plate = api.post(
            "/api/v1/jobs",
            data={"job_type": "echo"},
            files={"file": ("plate.zip", zip_bytes({"a.tif": TIFF}))},
            headers=bearer(ada),
        ).json()["id"]
        theirs = submit(api, None, "theirs.tif").json()["id"]
        # what consumers would have written: results, and the zip's unpacked images
        bucket.put_bytes(output_prefix(mine) + "mine_labels.tif", b"x" * 3000)
        bucket.put_bytes(children_upload_prefix(plate) + "a.tif", b"x" * 1000)
        bucket.put_bytes(output_prefix(theirs) + "theirs_labels.tif", b"x" * 500)
        bucket.put_bytes(output_prefix("echo:gone.tif:" + str(uuid.uuid4())) + "x", b"x" * 99)

        janitor = Janitor(
            queue,
            JanitorSettings(redis_url=redis_url, bucket=f"file://{bucket_dir}", queues=("echo",)),
            census_bucket=bucket,
        )
        stored = janitor.count_storage()
        uploaded = {
            key: bucket.size(queue.get(key)[JobField.INPUT_FILE_NAME]) or 0
            for key in (mine, plate, theirs)
        }
        assert stored == {
            "ada": uploaded[mine] + uploaded[plate] + 3000 + 1000,
            "anonymous": uploaded[theirs] + 500,
        }, "the expired job's 99 bytes count for nobody"
        assert stored["ada"] < 5000
        assert submit(api, ada, "more.tif").status_code == 201
        bucket.put_bytes(output_prefix(mine) + "big.tif", b"x" * 2000)
        janitor.count_storage()
        refused = submit(api, ada, "too-much.tif")
        assert refused.status_code == 429
        message = refused.json()["message"]
        assert "user 'ada' stores" in message and "KIOSK_QUOTA_BYTES" in message
        assert "s ago)" in message and "kiosk delete" in message
        assert submit(api, None, "fine.tif").status_code == 201, "others store less"
