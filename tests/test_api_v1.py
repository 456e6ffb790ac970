"""/api/v1: one-request job creation, status, listing, results, deletion, queue stats."""

from __future__ import annotations

import time
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from kiosk.jobs import JobRequest, creation_fields
from kiosk.keys import (
    INPUT_USERS,
    JOB_INDEX,
    JobField,
    Status,
    all_queues,
    children_upload_prefix,
    new_job_key,
    output_prefix,
)
from kiosk.queue import JobQueue
from kiosk.storage.local import LocalBucket
from tests.helpers import TIFF, zip_bytes
from tests.support.jobtypes import QUEUES


def create(api: TestClient, name: str = "cells.tif", data: bytes = TIFF, **options: str):
    return api.post(
        "/api/v1/jobs", data={"job_type": "echo", **options}, files={"file": (name, data)}
    )


def finish_as_consumer(queue: JobQueue, bucket: LocalBucket, output: bytes = b"labels") -> str:
    claim = queue.claim("echo", "c1", 1)
    key = f"output/test/{claim.key.rsplit(':', 1)[1]}.tif"
    bucket.put_bytes(key, output)
    queue.finish(
        claim,
        "c1",
        {JobField.OUTPUT_FILE_NAME: key, JobField.OUTPUT_URL: f"http://testserver/files/{key}"},
    )
    return claim.key


def test_create_uploads_and_queues_in_one_request(
    api: TestClient, queue: JobQueue, bucket: LocalBucket
) -> None:
    response = create(api, scale="0.65", model="Nuclear:2", channels="0")
    assert response.status_code == 201, response.text
    job = response.json()
    assert response.headers["location"] == f"/api/v1/jobs/{job['id']}"
    assert (job["status"], job["job_type"], job["name"], job["progress"]) == (
        "new",
        "echo",
        "cells.tif",
        0,
    )
    assert job["options"] == {
        "model_name": "Nuclear",
        "model_version": "2",
        "scale": "0.65",
        "channels": "0",
    }
    assert queue.waiting("echo") == [job["id"]]
    assert bucket.get_bytes(queue.get(job["id"])[JobField.INPUT_FILE_NAME]) == TIFF


@pytest.mark.parametrize(
    ("options", "status", "words"),
    [
        ({"job_type": "nope"}, 400, "unknown job type 'nope'"),
        ({"scale": "big"}, 422, "scale 'big' is not a pixel size"),
        ({"scale": "-1"}, 422, "a number from 0.01 to 100"),
        ({"scale": "inf"}, 422, "scale 'inf' is not a pixel size"),
        ({"scale": "1e-9"}, 422, "scale '1e-9' is not a pixel size"),
        ({"scale": "nan"}, 422, "scale 'nan' is not a pixel size"),
        ({"channels": "red"}, 422, "channels 'red' is not a list of channel indices"),
        ({"dimension_order": "QYX"}, 422, "unknown axis letter(s) Q"),
        ({"model": "Nuclear:latest"}, 422, "NAME:VERSION"),
        ({"colour": "red"}, 422, "colour: unknown option"),
    ],
)
def test_bad_options_are_refused_and_the_upload_removed(
    api: TestClient, bucket: LocalBucket, queue: JobQueue, options: dict, status: int, words: str
) -> None:
    response = api.post(
        "/api/v1/jobs", data={"job_type": "echo", **options}, files={"file": ("cells.tif", TIFF)}
    )
    assert response.status_code == status, response.text
    assert words in response.json()["message"]
    assert list(bucket.list()) == []
    assert queue.redis.llen("echo") == 0


def test_a_missing_job_type_is_refused(api: TestClient, bucket: LocalBucket) -> None:
    response = api.post("/api/v1/jobs", files={"file": ("cells.tif", TIFF)})
    assert response.status_code == 422 and "job_type" in response.json()["message"]
    assert list(bucket.list()) == []


def test_a_job_is_read_back_by_its_id(api: TestClient) -> None:
    job = create(api, name="my cells #1.tif").json()
    fetched = api.get(f"/api/v1/jobs/{quote(job['id'])}")
    assert fetched.status_code == 200 and fetched.json()["id"] == job["id"]
    missing = api.get("/api/v1/jobs/echo:x.tif:2b1e4b0e-6d43-4b8e-9d51-8d0c7b1f9a00")
    assert missing.status_code == 404 and "expired" in missing.json()["message"]


def test_the_result_is_served_once_done(
    api: TestClient, queue: JobQueue, bucket: LocalBucket
) -> None:
    job = create(api).json()
    waiting = api.get(f"/api/v1/jobs/{job['id']}/result")
    assert waiting.status_code == 409 and "is new" in waiting.json()["message"]
    finish_as_consumer(queue, bucket, b"LABELS")
    done = api.get(f"/api/v1/jobs/{job['id']}")
    assert done.json()["status"] == Status.DONE and done.json()["progress"] == 100
    result = api.get(f"/api/v1/jobs/{job['id']}/result")
    assert result.status_code == 200 and result.content == b"LABELS"
    assert api.get(done.json()["output_url"]).content == b"LABELS"


def test_a_failed_job_shows_its_reason(api: TestClient, queue: JobQueue) -> None:
    job = create(api).json()
    queue.fail(queue.claim("echo", "c1", 1), "c1", "the image is corrupt")
    body = api.get(f"/api/v1/jobs/{job['id']}").json()
    assert (body["status"], body["reason"]) == ("failed", "the image is corrupt")
    result = api.get(f"/api/v1/jobs/{job['id']}/result")
    assert result.status_code == 409 and "the image is corrupt" in result.json()["message"]


def test_jobs_are_listed_newest_first_and_filtered(
    api: TestClient, queue: JobQueue, bucket: LocalBucket
) -> None:
    ids = [create(api, name=f"{i}.tif").json()["id"] for i in range(5)]
    for i, job_id in enumerate(ids):
        queue.redis.zadd(JOB_INDEX, {job_id: 1000 + i})
    finish_as_consumer(queue, bucket)  # the oldest
    page = api.get("/api/v1/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["jobs"]] == ids[::-1][:2]
    rest = api.get("/api/v1/jobs", params={"limit": 10, "cursor": page["next_cursor"]}).json()
    assert [j["id"] for j in rest["jobs"]] == ids[::-1][2:]
    assert rest["next_cursor"] is None
    done = api.get("/api/v1/jobs", params={"status": "done"}).json()["jobs"]
    assert [j["id"] for j in done] == [ids[0]]
    assert api.get("/api/v1/jobs", params={"status": "nonsense"}).status_code == 422


def test_paging_sees_every_job_once_when_many_share_a_millisecond(
    api: TestClient, queue: JobQueue
) -> None:
    ids = [create(api, name=f"{i}.tif").json()["id"] for i in range(5)]
    queue.redis.zadd(JOB_INDEX, dict.fromkeys(ids, 1234.567))
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get("/api/v1/jobs", params=params).json()
        seen += [j["id"] for j in page["jobs"]]
        if not (cursor := page["next_cursor"]):
            break
    assert sorted(seen) == sorted(ids)


def test_a_filter_that_scans_past_its_budget_still_offers_the_next_page(
    api: TestClient, queue: JobQueue
) -> None:
    old = create(api, name="old.tif").json()["id"]
    queue.fail(queue.claim("echo", "c1", 1), "c1", "bad")
    for i in range(30):
        create(api, name=f"new-{i}.tif")
    page = api.get("/api/v1/jobs", params={"limit": 1, "status": "failed"}).json()
    while not page["jobs"] and page["next_cursor"]:
        page = api.get(
            "/api/v1/jobs", params={"limit": 1, "status": "failed", "cursor": page["next_cursor"]}
        ).json()
    assert [j["id"] for j in page["jobs"]] == [old]


@pytest.mark.parametrize("cursor", ["nan|x", "12", "abc|x", "inf|echo:a"])
def test_a_bad_cursor_is_refused(api: TestClient, cursor: str) -> None:
    response = api.get("/api/v1/jobs", params={"cursor": cursor})
    assert response.status_code == 422 and "invalid cursor" in response.json()["message"]


def test_jobs_of_job_types_this_kiosk_does_not_run_are_not_touched(
    api: TestClient, queue: JobQueue
) -> None:
    foreign = "other:x.tif:2b1e4b0e-6d43-4b8e-9d51-8d0c7b1f9a00"
    queue.redis.hset(foreign, "status", "new")
    assert api.delete(f"/api/v1/jobs/{foreign}").status_code == 404
    assert api.get(f"/api/v1/jobs/{foreign}").status_code == 404
    assert queue.redis.exists(foreign)


def test_a_zip_job_is_queued_for_the_fan_out_consumer(api: TestClient, queue: JobQueue) -> None:
    response = create(api, name="plate.zip", data=zip_bytes({"a.tif": TIFF}))
    assert response.status_code == 201, response.text
    assert queue.waiting("echo-zip") == [response.json()["id"]]


def test_delete_removes_the_job_from_its_queue(api: TestClient, queue: JobQueue) -> None:
    job = create(api).json()
    assert api.delete(f"/api/v1/jobs/{job['id']}").status_code == 204
    assert queue.redis.llen("echo") == 0
    assert api.get(f"/api/v1/jobs/{job['id']}").status_code == 404
    assert api.delete(f"/api/v1/jobs/{job['id']}").status_code == 404


def test_delete_removes_the_jobs_input_and_every_result(
    api: TestClient, queue: JobQueue, bucket: LocalBucket
) -> None:
    job = create(api).json()
    other = create(api, name="other.tif").json()
    claim = queue.claim("echo", "c1", 1)
    assert claim.key == job["id"]
    folder = output_prefix(claim.key)
    for name in ("cells_labels.tif", "preview.png", "extra/tiles.npz"):
        bucket.put_bytes(folder + name, b"result")
    queue.finish(claim, "c1", {JobField.OUTPUT_FILE_NAME: folder + "cells_labels.tif"})
    other_input = queue.get(other["id"])[JobField.INPUT_FILE_NAME]
    assert api.delete(f"/api/v1/jobs/{job['id']}").status_code == 204
    assert list(bucket.list()) == [other_input]  # another job's files are not touched
    assert queue.redis.hkeys(INPUT_USERS) == [other_input]


def test_delete_keeps_an_input_that_another_job_still_uses(
    api: TestClient, queue: JobQueue, bucket: LocalBucket
) -> None:
    upload = api.post("/api/upload", files={"file": ("cells.tif", TIFF)}).json()["uploadedName"]
    body = {"jobType": "echo", "imageName": "cells.tif", "uploadedName": upload}
    first, second = (api.post("/api/predict", json=body).json()["hash"] for _ in range(2))
    assert api.delete(f"/api/v1/jobs/{first}").status_code == 204
    assert bucket.get_bytes(upload) == TIFF  # the second job still needs it
    assert api.delete(f"/api/v1/jobs/{second}").status_code == 204
    assert list(bucket.list()) == []


def test_deleting_a_zip_of_thousands_of_images_removes_every_job_and_file_in_batches(
    api: TestClient, queue: JobQueue, bucket: LocalBucket
) -> None:
    zip_job = create(api, name="plate.zip", data=zip_bytes({"a.tif": TIFF})).json()["id"]
    children = []
    for i in range(1200):  # more than two batches of jobs; outputs for every third image
        key = new_job_key("echo", f"{i}.tif")
        upload = f"{children_upload_prefix(zip_job)}{i}.tif"
        bucket.put_bytes(upload, TIFF)
        request = JobRequest("echo", f"{i}.tif", upload, parent=zip_job)
        queue.submit("echo", key, creation_fields(request, "test"))
        if i % 3 == 0:
            bucket.put_bytes(output_prefix(key, zip_job) + "labels.tif", b"labels")
        children.append(key)
    queue.redis.hset(
        zip_job, mapping={JobField.CHILDREN: ",".join(children), JobField.TOTAL_JOBS: "1200"}
    )
    bucket.put_bytes(output_prefix(zip_job) + "plate_labels.zip", b"results")
    started = time.perf_counter()
    assert api.delete(f"/api/v1/jobs/{zip_job}").status_code == 204
    print(f"deleted a zip of 1200 images and 1601 files in {time.perf_counter() - started:.2f}s")
    assert list(bucket.list()) == []
    assert queue.redis.llen("echo") == 0 and queue.redis.zcard(JOB_INDEX) == 0
    assert not queue.redis.exists(INPUT_USERS, *children)


def test_queue_stats_count_waiting_and_running_jobs(api: TestClient, queue: JobQueue) -> None:
    for i in range(3):
        create(api, name=f"{i}.tif")
    queue.claim("echo", "c1", 1)
    stats = {q["queue"]: q for q in api.get("/api/v1/queues").json()}
    assert (stats["echo"]["queued"], stats["echo"]["in_flight"]) == (2, 1)
    assert set(stats) == set(all_queues(QUEUES.split(",")))


def test_files_outside_uploads_and_output_are_not_served(
    api: TestClient, bucket: LocalBucket
) -> None:
    bucket.put_bytes("models/M/1/saved_model.pb", b"weights")
    assert api.get("/files/models/M/1/saved_model.pb").status_code == 404
    escaped = api.get("/files/uploads/%2e%2e/models/M/1/saved_model.pb")
    assert escaped.status_code in (400, 404)
    assert b"weights" not in escaped.content
    assert api.get("/files/uploads/nothing.tif").status_code == 404


def test_health_reports_redis_and_bucket(api: TestClient) -> None:
    assert api.get("/api/v1/health").json() == {"status": "ok", "redis": True, "bucket": True}


def test_openapi_documents_the_multipart_job_creation(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    body = spec["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]
    schema = body["multipart/form-data"]["schema"]
    assert {"file", "job_type", "scale"} <= set(schema["properties"])


def test_the_root_answers_in_place_without_redirecting(api: TestClient) -> None:
    # kiosk-client uses the URL it lands on after redirects from "/" as the API base
    response = api.get("/", follow_redirects=False)
    assert response.status_code == 200 and response.json()["api"] == "/api/v1"
