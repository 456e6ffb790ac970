"""Any file name a user has works: raw UTF-8 and RFC 5987 names, scripts beyond Latin, and
characters that mean something in URLs. The name is kept as given; ids are escaped where they
travel in URLs and headers; no route answers an error after it created a job."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import pytest
from fastapi.testclient import TestClient

from frontend.app import create_app
from frontend.routes import v1
from frontend.routes.files import content_disposition
from kiosk.keys import JOB_INDEX, JobField
from kiosk.queue import JobQueue
from kiosk.settings import FrontendSettings
from kiosk.storage.local import LocalBucket
from tests.helpers import TIFF

NAMES = ["Zelle µm.tif", "né.tif", "細胞.tif", "Клетка 1.tif", "a b%#?&.tif", "plate+1 (2).tif"]


@pytest.mark.parametrize("name", NAMES)
def test_a_job_keeps_the_file_name_as_given_and_its_location_works(
    api: TestClient, queue: JobQueue, name: str
) -> None:
    response = api.post("/api/v1/jobs", data={"job_type": "echo"}, files={"file": (name, TIFF)})
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["name"] == name
    assert queue.get(job["id"])[JobField.ORIGINAL_NAME] == name
    location = response.headers["location"]
    assert location.isascii() and "#" not in location and " " not in location
    assert unquote(location) == f"/api/v1/jobs/{job['id']}"
    again = api.get(location)
    assert again.status_code == 200 and again.json()["id"] == job["id"]


def _post_file_part(api: TestClient, disposition: bytes) -> str:
    """POST /api/v1/jobs with the file part's Content-Disposition as given; the job's name."""
    body = (
        b'--b\r\nContent-Disposition: form-data; name="job_type"\r\n\r\necho\r\n'
        b"--b\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + TIFF + b"\r\n--b--\r\n"
    )
    response = api.post(
        "/api/v1/jobs", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert response.status_code == 201, response.text
    return response.json()["name"]


def test_an_rfc_5987_file_name_wins_over_the_plain_one(api: TestClient) -> None:
    disposition = (
        b'form-data; name="file"; filename="Zelle m.tif"; filename*=UTF-8\'\'Zelle%20%C2%B5m.tif'
    )
    assert _post_file_part(api, disposition) == "Zelle µm.tif"


def test_a_name_that_is_not_utf_8_loses_no_byte(api: TestClient) -> None:
    disposition = b'form-data; name="file"; filename="Zelle \xb5m.tif"'
    assert _post_file_part(api, disposition) == "Zelle µm.tif"


@pytest.mark.parametrize("name", ["Zelle µm.tif", "細胞.tif"])
def test_the_original_routes_take_any_name(api: TestClient, queue: JobQueue, name: str) -> None:
    uploaded = api.post("/api/upload", files={"file": (name, TIFF)})
    assert uploaded.status_code == 200, uploaded.text
    body = {"jobType": "echo", "imageName": name, "uploadedName": uploaded.json()["uploadedName"]}
    created = api.post("/api/predict", json=body)
    assert created.status_code == 200, created.text
    assert queue.get(created.json()["hash"])[JobField.ORIGINAL_NAME] == name


def test_a_result_named_in_any_script_downloads_under_its_name(
    api: TestClient, bucket: LocalBucket
) -> None:
    bucket.put_bytes("output/abc/細胞_labels.tif", b"labels")
    response = api.get("/files/output/abc/%E7%B4%B0%E8%83%9E_labels.tif")
    assert response.status_code == 200 and response.content == b"labels"
    header = response.headers["content-disposition"].lower()
    assert "filename*=utf-8''%e7%b4%b0%e8%83%9e_labels.tif" in header


def test_the_download_header_carries_any_name_in_ascii() -> None:
    header = content_disposition("細胞 µm.tif")
    assert header.isascii()
    assert header.endswith("filename*=UTF-8''%E7%B4%B0%E8%83%9E%20%C2%B5m.tif")
    assert content_disposition("cells.tif") == 'attachment; filename="cells.tif"'


def test_no_error_answer_leaves_a_job_behind(
    frontend_settings: FrontendSettings,
    queue: JobQueue,
    bucket: LocalBucket,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    def broken(view: object) -> object:
        raise RuntimeError("the answer could not be built")

    monkeypatch.setattr(v1.JobOut, "of", broken)
    with TestClient(create_app(frontend_settings), raise_server_exceptions=False) as client:
        response = client.post(
            "/api/v1/jobs", data={"job_type": "echo"}, files={"file": ("a.tif", TIFF)}
        )
    assert response.status_code == 500
    assert queue.redis.zcard(JOB_INDEX) == 0
    assert queue.redis.llen("echo") == 0
    assert list(bucket.list()) == []
