"""The DeepCell-compatible /api routes: shapes the original clients rely on, and the holes of
the original closed (only job hashes readable or expirable, uploads checked and streamed)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from frontend.app import create_app
from kiosk.keys import JobField, Status
from kiosk.queue import JobQueue
from kiosk.settings import FrontendSettings
from kiosk.storage.local import LocalBucket
from tests.helpers import PNG, TIFF, zip_bytes
from tests.support.jobtypes import QUEUES


def upload(api: TestClient, name: str = "cells.tif", data: bytes = TIFF, path: str = "/api/upload"):
    return api.post(path, files={"file": (name, data)})


def create(api: TestClient, uploaded: str, job_type: str = "echo", **extra) -> str:
    body = {"jobType": job_type, "imageName": "cells.tif", "uploadedName": uploaded, **extra}
    response = api.post("/api/predict", json=body)
    assert response.status_code == 200, response.text
    return response.json()["hash"]


@pytest.mark.parametrize("path", ["/api/health-check", "/api/health-check/"])
def test_health_check_answers_ok(api: TestClient, path: str) -> None:
    response = api.get(path)
    assert response.status_code == 200 and response.text == "OK"
    assert api.head(path).status_code == 200


@pytest.mark.parametrize("path", ["/api/upload", "/api/upload/"])
def test_upload_stores_the_file_and_returns_its_names(
    api: TestClient, bucket: LocalBucket, path: str
) -> None:
    body = upload(api, path=path).json()
    assert body["uploadedName"].startswith("uploads/") and body["uploadedName"].endswith(".tif")
    assert body["imageURL"] == f"http://testserver/files/{body['uploadedName']}"
    assert bucket.get_bytes(body["uploadedName"]) == TIFF
    assert api.get(body["imageURL"]).content == TIFF


def test_predict_creates_a_job_with_the_original_fields(api: TestClient, queue: JobQueue) -> None:
    uploaded = upload(api).json()["uploadedName"]
    key = create(
        api,
        uploaded,
        modelName="",
        modelVersion="",
        dataRescale="",
        dataLabel="",
        jobForm={
            "dimensionOrder": "YXC",
            "selectedChannels": [0, 2],
            "scale": 0.5,
            "segmentationType": "nuclear",
        },
    )
    assert key.startswith("echo:cells.tif:")
    assert queue.waiting("echo") == [key]
    fields = queue.get(key)
    assert fields[JobField.STATUS] == Status.NEW
    assert fields[JobField.INPUT_FILE_NAME] == uploaded
    assert fields[JobField.ORIGINAL_NAME] == "cells.tif"
    assert (
        fields[JobField.DIMENSION_ORDER],
        fields[JobField.CHANNELS],
        fields[JobField.SCALE],
        fields[JobField.SEGMENTATION_TYPE],
    ) == ("YXC", "0,2", "0.5", "nuclear")


def test_predict_accepts_kiosk_client_numbers_and_the_trailing_slash(
    api: TestClient, queue: JobQueue
) -> None:
    uploaded = upload(api).json()["uploadedName"]
    response = api.post(
        "/api/predict/",
        json={
            "jobType": "echo",
            "imageName": "x.tif",
            "uploadedName": uploaded,
            "modelName": "Model",
            "modelVersion": "2",
            "dataRescale": 1.5,
            "dataLabel": 1,
            "preprocessFunction": "",
            "postprocessFunction": "",
        },
    )
    fields = queue.get(response.json()["hash"])
    assert (fields["scale"], fields["label"], fields["model_version"]) == ("1.5", "1", "2")


def test_zip_jobs_wait_on_the_zip_queue_of_their_job_type(api: TestClient, queue: JobQueue) -> None:
    uploaded = upload(api, "plate.zip", zip_bytes({"a.tif": TIFF})).json()["uploadedName"]
    response = api.post(
        "/api/predict", json={"jobType": "echo", "imageName": "plate.zip", "uploadedName": uploaded}
    )
    assert response.status_code == 200
    assert queue.waiting("echo-zip") == [response.json()["hash"]]
    assert queue.redis.llen("echo") == 0


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (
            {"jobType": "nope", "imageName": "a.tif", "uploadedName": "uploads/a.tif"},
            400,
            "unknown job type 'nope': this Kiosk runs echo, slow, fails",
        ),
        (
            {"jobType": "echo", "imageName": "a.tif", "uploadedName": "uploads/missing.tif"},
            400,
            "upload the file first",
        ),
        (
            {"jobType": "echo", "imageName": "a.tif", "uploadedName": "models/x/1/a.tif"},
            400,
            "is not an upload",
        ),
        (
            {"jobType": "echo", "imageName": "a.tif", "uploadedName": "uploads/../x.tif"},
            400,
            "'..' is not allowed",
        ),
        (
            {"jobType": "echo", "imageName": "a.doc", "uploadedName": "uploads/a.doc"},
            415,
            "not a supported file type",
        ),
        ({"jobType": "echo"}, 422, "imageName"),
        (
            {"jobType": "echo", "imageName": "a.tif", "dataRescale": "inf"},
            422,
            "scale 'inf' is not a pixel size",
        ),
        (
            {
                "jobType": "echo",
                "imageName": "a.tif",
                "jobForm": {"dimensionOrder": "YY", "selectedChannels": [-1]},
            },
            422,
            "channels count from 0. dimension_order 'YY' must name exactly one Y axis",
        ),
    ],
)
def test_bad_predict_requests_get_a_clear_message(
    api: TestClient, queue: JobQueue, body: dict, status: int, words: str
) -> None:
    response = api.post("/api/predict", json=body)
    assert response.status_code == status
    assert words in response.json()["message"]
    assert queue.redis.llen("echo") == 0


def test_redis_reads_fields_of_job_hashes(api: TestClient) -> None:
    key = create(api, upload(api).json()["uploadedName"])
    assert api.post("/api/redis", json={"hash": key, "key": "status"}).json() == {"value": "new"}
    both = api.post("/api/redis/", json={"hash": key, "key": ["status", "nothing"]}).json()
    assert both == {"value": ["new", None]}
    assert api.post("/api/status", json={"hash": key}).json() == {"status": "new"}
    assert api.post("/api/status/", json={"hash": key}).json() == {"status": "new"}


@pytest.mark.parametrize(
    "target", ["echo", "kiosk:jobs", "processing-echo:c1", "kiosk:heartbeat:c1", "anything"]
)
def test_redis_and_expire_refuse_anything_but_job_hashes(
    api: TestClient, queue: JobQueue, target: str
) -> None:
    create(api, upload(api).json()["uploadedName"])
    before = queue.redis.llen("echo")
    for path, body in (
        ("/api/redis", {"hash": target, "key": "status"}),
        ("/api/status", {"hash": target}),
        ("/api/redis/expire", {"hash": target, "expireIn": 1}),
    ):
        response = api.post(path, json=body)
        assert response.status_code == 400, path
        assert "is not a job" in response.json()["message"]
    assert queue.redis.ttl("echo") == -1
    assert queue.redis.llen("echo") == before


def test_expire_sets_the_ttl_and_answers_one(api: TestClient, queue: JobQueue) -> None:
    key = create(api, upload(api).json()["uploadedName"])
    response = api.post("/api/redis/expire", json={"hash": key, "expireIn": 120})
    assert response.json() == {"value": 1}
    assert 0 < queue.redis.ttl(key) <= 120
    api.post("/api/redis/expire/", json={"hash": key})
    assert queue.redis.ttl(key) > 120  # the default, 3600


def test_expire_of_a_missing_job_is_404_with_value_zero(api: TestClient) -> None:
    missing = "echo:a.tif:2b1e4b0e-6d43-4b8e-9d51-8d0c7b1f9a00"
    response = api.post("/api/redis/expire", json={"hash": missing, "expireIn": 10})
    assert response.status_code == 404 and response.json()["value"] == 0
    assert api.post("/api/redis", json={"hash": missing, "key": "status"}).json() == {"value": None}


def test_jobtypes_lists_the_configured_queues(api: TestClient) -> None:
    assert api.get("/api/jobtypes").json() == {"jobTypes": QUEUES.split(",")}
    assert api.get("/api/jobtypes/").json() == {"jobTypes": QUEUES.split(",")}


def test_models_lists_names_and_versions_in_the_bucket(
    api: TestClient, bucket: LocalBucket
) -> None:
    for key in (
        "models/Nuclear/1/saved_model.pb",
        "models/Nuclear/10/saved_model.pb",
        "models/Nuclear/2/variables/variables.index",
        "models/Other/1/saved_model.pb",
        "models/README.txt",
    ):
        bucket.put_bytes(key, b"x")
    assert api.get("/api/models").json() == {
        "models": {"Nuclear": ["1", "2", "10"], "Other": ["1"]}
    }


@pytest.mark.parametrize(
    ("name", "data", "status", "words"),
    [
        ("notes.docx", b"PK\x03\x04....", 415, "not a supported file type"),
        ("cells.tif", PNG, 415, "content is a PNG file"),
        ("cells.tif", b"garbage-bytes", 415, "corrupt or misnamed"),
        ("cells.tif", b"", 415, "empty"),
        ("cells.tif", TIFF * 70000, 413, "KIOSK_MAX_UPLOAD_BYTES"),
    ],
)
def test_bad_uploads_are_refused_and_leave_nothing_behind(
    api: TestClient, bucket: LocalBucket, name: str, data: bytes, status: int, words: str
) -> None:
    response = upload(api, name, data)
    assert response.status_code == status, response.text
    assert words in response.json()["message"]
    assert list(bucket.list()) == []


def test_an_upload_without_a_file_or_not_multipart_is_refused(api: TestClient) -> None:
    response = api.post("/api/upload", data={"other": "x"}, files={"note": (None, "y")})
    assert response.status_code == 400 and "has no file" in response.json()["message"]
    response = api.post("/api/upload", json={"file": "x"})
    assert response.status_code == 415 and "multipart/form-data" in response.json()["message"]
    response = api.post("/api/upload", files={"image": ("a.tif", TIFF)})
    assert response.status_code == 400
    assert "in the form field 'file', not 'image'" in response.json()["message"]


def test_an_oversized_json_body_is_refused_before_it_is_read(api: TestClient) -> None:
    body = {"jobType": "echo", "imageName": "a.tif", "uploadedName": "x" * (2 * 1024 * 1024)}
    response = api.post("/api/predict", json=body)
    assert response.status_code == 413 and "larger than 1024 KiB" in response.json()["message"]

    def chunks():  # the same, with no Content-Length
        yield b'{"jobType": "echo", "imageName": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    streamed = api.post(
        "/api/predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413


def test_an_empty_field_list_is_refused(api: TestClient) -> None:
    key = create(api, upload(api).json()["uploadedName"])
    response = api.post("/api/redis", json={"hash": key, "key": []})
    assert response.status_code == 422 and "at least 1 item" in response.json()["message"]


def test_an_oversized_upload_without_a_length_is_cut_off_as_it_streams(
    api: TestClient, bucket: LocalBucket
) -> None:
    def chunks():
        yield b'--XYZ\r\nContent-Disposition: form-data; name="file"; filename="a.tif"\r\n\r\n'
        yield TIFF
        for _ in range(80):  # 5 MiB against the tests' 4 MiB limit, with no Content-Length
            yield b"\0" * 65536
        yield b"\r\n--XYZ--\r\n"

    response = api.post(
        "/api/upload",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=XYZ"},
    )
    assert response.status_code == 413 and "KIOSK_MAX_UPLOAD_BYTES" in response.json()["message"]
    assert [p for p in bucket.root.rglob("*") if p.is_file()] == []  # not even a partial file


def test_two_files_in_one_upload_are_refused(api: TestClient, bucket: LocalBucket) -> None:
    response = api.post("/api/upload", files=[("file", ("a.tif", TIFF)), ("file", ("b.tif", TIFF))])
    assert response.status_code == 400 and "one file per request" in response.json()["message"]
    assert list(bucket.list()) == []


def test_a_truncated_multipart_body_is_refused(api: TestClient, bucket: LocalBucket) -> None:
    body = b'--XYZ\r\nContent-Disposition: form-data; name="file"; filename="a.tif"\r\n\r\n' + TIFF
    response = api.post(
        "/api/upload", content=body, headers={"content-type": "multipart/form-data; boundary=XYZ"}
    )
    assert response.status_code == 400 and "cut short" in response.json()["message"]
    assert list(bucket.list()) == []


def test_an_api_token_guards_every_route_but_the_health_checks(
    frontend_settings: FrontendSettings,
) -> None:
    settings = frontend_settings.model_copy(update={"api_token": SecretStr("s3cret")})
    with TestClient(create_app(settings)) as api:
        assert api.get("/api/health-check").status_code == 200
        assert api.get("/api/v1/health").status_code == 200
        denied = api.get("/api/jobtypes")
        assert denied.status_code == 401 and "Bearer" in denied.json()["message"]
        assert (
            api.get("/api/jobtypes", headers={"Authorization": "Bearer wrong"}).status_code == 401
        )
        assert (
            api.get("/api/jobtypes", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        )
        assert api.get("/api/v1/jobs", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert api.get("/files/uploads/x.tif").status_code == 401


def test_a_set_but_empty_api_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIOSK_API_TOKEN", "")
    with pytest.raises(ValueError, match="api_token"):
        FrontendSettings()


def test_redis_outage_gives_503_with_a_clear_message(frontend_settings: FrontendSettings) -> None:
    settings = frontend_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(settings)) as api:
        response = api.post(
            "/api/status", json={"hash": "echo:a:2b1e4b0e-6d43-4b8e-9d51-8d0c7b1f9a00"}
        )
        assert response.status_code == 503
        assert "Redis" in response.json()["message"]
