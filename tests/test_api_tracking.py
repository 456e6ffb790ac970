"""Where the APIs meet the tracking job type: it is listed from KIOSK_QUEUES, the DeepCell
name ``caliban`` queues a ``tracking`` job, ``.trk``/``.trks`` movies are taken for tracking and
refused for every other job type before anything is stored, a movie's frames are counted as
frames, and the routes kiosk-client and the ImageJ plugin use read a tracking job like any
other. Nothing here runs the tracking consumer: jobs are only queued, or finished by hand."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from frontend.app import create_app
from kiosk.keys import JOB_INDEX, JobField, Status
from kiosk.queue import JobQueue
from kiosk.settings import FrontendSettings
from kiosk.storage.local import LocalBucket
from tests.helpers import TIFF, zip_bytes

QUEUES = ("segmentation", "tracking")


def trk_bytes() -> bytes:
    """A .trk as DeepCell writes it: a tar.gz (the content does not matter to the frontend)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("lineage.json")
        data = b"{}"
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


TRK = trk_bytes()


def client_for(frontend_settings: FrontendSettings, queues: tuple[str, ...]) -> TestClient:
    return TestClient(create_app(frontend_settings.model_copy(update={"queues": queues})))


@pytest.fixture
def api(frontend_settings: FrontendSettings) -> Iterator[TestClient]:
    with client_for(frontend_settings, QUEUES) as client:
        yield client


def upload(api: TestClient, name: str, data: bytes) -> str:
    response = api.post("/api/upload/", files={"file": (name, data)})
    assert response.status_code == 200, response.text
    return response.json()["uploadedName"]


def predict(api: TestClient, job_type: str, name: str, uploaded: str):
    return api.post(
        "/api/predict/", json={"jobType": job_type, "imageName": name, "uploadedName": uploaded}
    )


# ----------------------------------------------------------------------------- job types


def test_tracking_is_listed_from_the_configured_queues_with_caliban_as_its_alias(
    api: TestClient,
) -> None:
    assert api.get("/api/jobtypes/").json() == {"jobTypes": list(QUEUES)}
    assert api.get("/api/v1/job-types").json() == {
        "job_types": list(QUEUES),
        "aliases": {"caliban": "tracking"},
    }


def test_caliban_is_refused_where_tracking_does_not_run(
    frontend_settings: FrontendSettings, queue: JobQueue
) -> None:
    with client_for(frontend_settings, ("segmentation",)) as api:
        assert api.get("/api/v1/job-types").json()["aliases"] == {}
        refused = predict(api, "caliban", "movie.tif", upload(api, "movie.tif", TIFF))
        assert refused.status_code == 400
        assert "this Kiosk runs segmentation" in refused.json()["message"]
    assert queue.redis.zcard(JOB_INDEX) == 0


def test_a_job_sent_as_caliban_is_a_tracking_job(api: TestClient, queue: JobQueue) -> None:
    key = predict(api, "caliban", "movie.tif", upload(api, "movie.tif", TIFF)).json()["hash"]
    assert key.startswith("tracking:movie.tif:")
    assert queue.waiting("tracking") == [key]
    assert api.get(f"/api/v1/jobs/{key}").json()["job_type"] == "tracking"
    created = api.post(
        "/api/v1/jobs", data={"job_type": "caliban"}, files={"file": ("m.tif", TIFF)}
    ).json()
    assert created["job_type"] == "tracking" and created["id"].startswith("tracking:")
    listed = api.get("/api/v1/jobs", params={"job_type": "caliban"}).json()["jobs"]
    assert {job["id"] for job in listed} == {key, created["id"]}


def test_a_movie_goes_to_the_tracking_queue_and_a_zip_of_frames_to_its_zip_queue(
    api: TestClient, queue: JobQueue
) -> None:
    movie = predict(api, "tracking", "movie.tif", upload(api, "movie.tif", TIFF)).json()["hash"]
    frames = upload(api, "frames.zip", zip_bytes({"t000.tif": TIFF, "t001.tif": TIFF}))
    zipped = predict(api, "tracking", "frames.zip", frames).json()["hash"]
    assert queue.waiting("tracking") == [movie]
    assert queue.waiting("tracking-zip") == [zipped]


# ----------------------------------------------------------------------------- .trk / .trks


@pytest.mark.parametrize("name", ["movie.trk", "movies.trks", "MOVIE.TRK"])
def test_trk_movies_are_taken_for_tracking_through_both_apis(
    api: TestClient, queue: JobQueue, bucket: LocalBucket, name: str
) -> None:
    uploaded = upload(api, name, TRK)
    assert uploaded.endswith(name[name.index(".") :].lower())
    key = predict(api, "tracking", name, uploaded).json()["hash"]
    assert queue.get(key)[JobField.INPUT_FILE_NAME] == uploaded
    response = api.post("/api/v1/jobs", data={"job_type": "tracking"}, files={"file": (name, TRK)})
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["job_type"] == "tracking"
    assert bucket.get_bytes(queue.get(job["id"])[JobField.INPUT_FILE_NAME]) == TRK
    assert queue.redis.llen("tracking") == 2


def test_a_trk_for_another_job_type_is_refused_before_anything_is_stored(
    api: TestClient, queue: JobQueue, bucket: LocalBucket
) -> None:
    response = api.post(
        "/api/v1/jobs", data={"job_type": "segmentation"}, files={"file": ("movie.trk", TRK)}
    )
    assert response.status_code == 415
    assert response.json()["message"] == (
        "'movie.trk' is a tracked movie (.trk/.trks), which only the tracking job type reads; "
        "job type 'segmentation' takes .tif/.tiff, .png, .jpg/.jpeg images or a .zip of them. "
        "Choose the tracking job type, or upload the frames as a multi-page TIFF."
    )
    assert list(bucket.list()) == []
    assert queue.redis.zcard(JOB_INDEX) == 0


def test_a_trk_whose_job_type_comes_after_the_file_is_refused_and_its_upload_removed(
    api: TestClient, queue: JobQueue, bucket: LocalBucket
) -> None:
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="movie.trk"\r\n\r\n'
    ).encode() + TRK
    body += (
        f"\r\n--{boundary}\r\n"
        'Content-Disposition: form-data; name="job_type"\r\n\r\n'
        f"segmentation\r\n--{boundary}--\r\n"
    ).encode()
    response = api.post(
        "/api/v1/jobs",
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 415 and "only the tracking job type" in response.text
    assert list(bucket.list()) == []
    assert queue.redis.zcard(JOB_INDEX) == 0


def test_the_deepcell_routes_refuse_a_trk_for_segmentation_with_the_users_file_name(
    api: TestClient, queue: JobQueue
) -> None:
    uploaded = upload(api, "movie.trk", TRK)  # the upload does not know its job type yet
    refused = predict(api, "segmentation", "movie.trk", uploaded)
    assert refused.status_code == 415
    assert refused.json()["message"].startswith("'movie.trk' is a tracked movie (.trk/.trks)")
    assert queue.redis.zcard(JOB_INDEX) == 0


def test_a_trk_that_is_not_gzip_is_refused_as_misnamed(api: TestClient) -> None:
    response = api.post("/api/upload", files={"file": ("movie.trk", TIFF)})
    assert response.status_code == 415
    assert "named like a trk file but its content is a TIFF file" in response.json()["message"]


def test_limits_offer_trk_only_where_a_tracking_job_type_runs(
    api: TestClient, frontend_settings: FrontendSettings
) -> None:
    limits = api.get("/api/v1/limits").json()
    assert {".trk", ".trks"} <= set(limits["extensions"])
    assert limits["movie_job_types"] == ["tracking"]
    assert limits["movie_extensions"] == [".trk", ".trks"]
    assert limits["accepted"].endswith("(tracking also takes .trk/.trks movies)")
    with client_for(frontend_settings, ("segmentation",)) as other:
        plain = other.get("/api/v1/limits").json()
    assert ".trk" not in plain["extensions"] and ".tif" in plain["extensions"]
    assert plain["movie_job_types"] == [] and plain["movie_extensions"] == []
    assert "trk" not in plain["accepted"]


# ----------------------------------------------------------------------------- following


def test_a_movies_frames_are_counted_as_frames_and_a_zips_images_as_images(
    api: TestClient, queue: JobQueue
) -> None:
    movie = predict(api, "tracking", "movie.tif", upload(api, "movie.tif", TIFF)).json()["hash"]
    plate = api.post(
        "/api/v1/jobs",
        data={"job_type": "segmentation"},
        files={"file": ("plate.zip", zip_bytes({"a.tif": TIFF}))},
    ).json()["id"]
    for key, total in ((movie, 40), (plate, 3)):
        queue.redis.hset(
            key,
            mapping={
                JobField.STATUS: Status.WAITING,
                JobField.CHILDREN: ",".join(f"{key}-{i}" for i in range(total)),
                JobField.TOTAL_JOBS: str(total),
                JobField.CHILDREN_DONE: "12" if key == movie else "1",
                JobField.CHILDREN_FAILED: "0",
            },
        )
    assert api.get(f"/api/v1/jobs/{movie}").json()["children"] == {
        "total": 40,
        "done": 12,
        "failed": 0,
        "unit": "frames",
    }
    assert api.get(f"/api/v1/jobs/{plate}").json()["children"]["unit"] == "images"


def test_a_zip_of_movies_counts_movies(api: TestClient, queue: JobQueue) -> None:
    """A tracking zip of several movies is split into one tracking job per movie."""
    movies = upload(api, "movies.zip", zip_bytes({"a.tif": TIFF, "b.tif": TIFF}))
    parent = predict(api, "tracking", "movies.zip", movies).json()["hash"]
    children = [f"tracking:{n}:{'0' * 8}-0000-4000-8000-{i:012d}" for i, n in enumerate("ab")]
    queue.redis.hset(
        parent,
        mapping={
            JobField.CHILDREN: ",".join(children),
            JobField.TOTAL_JOBS: "2",
            JobField.CHILDREN_DONE: "1",
        },
    )
    assert api.get(f"/api/v1/jobs/{parent}").json()["children"] == {
        "total": 2,
        "done": 1,
        "failed": 0,
        "unit": "movies",
    }


def test_the_imagej_plugin_reads_a_done_tracking_job_and_its_results_zip(
    api: TestClient, queue: JobQueue, bucket: LocalBucket
) -> None:
    """The plugin polls /api/status/, reads output_url and reason through /api/redis/ and
    opens output_url itself: for tracking that is the results zip, served like any result."""
    key = predict(api, "tracking", "movie.tif", upload(api, "movie.tif", TIFF)).json()["hash"]
    claim = queue.claim("tracking", "c1", 1)
    assert claim.key == key
    results = zip_bytes({"movie_tracked.tif": TIFF, "lineage.json": b"{}"})
    output = f"output/{key.rsplit(':', 1)[1]}/movie_tracking.zip"
    bucket.put_bytes(output, results)
    url = f"http://testserver/files/{output}"
    queue.finish(claim, "c1", {JobField.OUTPUT_FILE_NAME: output, JobField.OUTPUT_URL: url})

    assert api.post("/api/status/", json={"hash": key}).json() == {"status": "done"}
    read = api.post("/api/redis/", json={"hash": key, "key": ["output_url", "reason"]}).json()
    assert read == {"value": [url, None]}
    served = api.get(url)
    assert served.status_code == 200 and served.content == results
    assert served.headers["content-type"] == "application/zip"
    assert api.get(f"/api/v1/jobs/{key}/result").content == results
    assert api.post("/api/redis/expire/", json={"hash": key, "expireIn": 60}).json() == {"value": 1}
