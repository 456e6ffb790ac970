"""What a hostile or careless user tries, kept as tests so that none of it can come back:
tokens on every route, traversal through /files, odd zip entries (encrypted, symbolic links,
zips inside zips), and uploads that are empty, cut short or misnamed."""

from __future__ import annotations

import io
import re
import stat
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from consumers.zips import plan_entries
from frontend.app import create_app
from kiosk.keys import JOB_INDEX
from kiosk.queue import JobQueue
from kiosk.settings import FrontendSettings
from kiosk.storage.local import LocalBucket
from tests.helpers import PNG, TIFF

TOKEN = "s3cret"
# Also open: the portal's sign-in, where a token is presented (a wrong one is 401, see
# tests/test_sessions.py), and signing out, which without a session changes nothing.
OPEN = {"/api/health-check", "/api/health-check/", "/api/v1/health", "/", "/api/v1/session"}
LIMITS = {
    "max_entries": 100,
    "max_entry_bytes": 10**9,
    "max_total_bytes": 10**10,
    "zip_size": 10**6,
    "max_ratio": 100.0,
}


def _guarded_routes(settings: FrontendSettings) -> list[tuple[str, str]]:
    """(method, path with its parameters filled in) for every documented route that needs the
    token, and the file routes."""
    schema = create_app(settings).openapi()
    routes = [("GET", "/files/uploads/x.tif"), ("HEAD", "/files/output/x/y.tif")]
    for path, methods in schema["paths"].items():
        if path in OPEN:
            continue
        filled = re.sub(r"\{[^}]+\}", "echo:a.tif:x", path)
        variants = [filled, f"{filled}/"] if not path.startswith("/api/v1") else [filled]
        routes += [(method.upper(), variant) for method in methods for variant in variants]
    return routes


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer "},
        {"Authorization": ""},
        {"X-API-Key": ""},
        {"Authorization": f"Basic {TOKEN}"},
    ],
    ids=["missing", "wrong", "empty-bearer", "empty-header", "empty-key", "not-bearer"],
)
def test_every_route_but_health_needs_the_token(
    frontend_settings: FrontendSettings, queue: JobQueue, headers: dict[str, str]
) -> None:
    settings = frontend_settings.model_copy(update={"api_token": SecretStr(TOKEN)})
    routes = _guarded_routes(settings)
    assert len(routes) >= 25  # both APIs (the original's with and without a slash), /files
    with TestClient(create_app(settings)) as api:
        answers = {(m, p): api.request(m, p, headers=headers).status_code for m, p in routes}
    assert {k: v for k, v in answers.items() if v != 401} == {}
    assert queue.redis.zcard(JOB_INDEX) == 0


@pytest.mark.parametrize(
    "path",
    [
        "/files/uploads/../secret.txt",
        "/files/uploads/%2e%2e/secret.txt",
        "/files/uploads/..%2fsecret.txt",
        "/files/output/%2Fetc%2Fpasswd",
        "/files/models/NuclearSegmentation/1/saved_model.pb",
        "/files/secret.txt",
    ],
)
def test_files_never_leave_uploads_and_outputs(
    api: TestClient, bucket: LocalBucket, bucket_dir: Path, path: str
) -> None:
    bucket.put_bytes("secret.txt", b"not for you")
    bucket.put_bytes("models/NuclearSegmentation/1/saved_model.pb", b"weights")
    response = api.get(path)
    assert response.status_code in (400, 404), response.text
    assert b"not for you" not in response.content and b"weights" not in response.content


def _zip(entries: list[zipfile.ZipInfo | tuple[str, bytes]]) -> list[zipfile.ZipInfo]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for entry in entries:
            if isinstance(entry, zipfile.ZipInfo):
                archive.writestr(entry, b"/etc/passwd")
            else:
                archive.writestr(*entry)
    return zipfile.ZipFile(io.BytesIO(buffer.getvalue())).infolist()


def test_an_encrypted_entry_is_listed_not_run() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("locked.tif", TIFF)
        archive.writestr("ok.tif", TIFF)
    raw = bytearray(buffer.getvalue())
    # Set the "encrypted" bit of locked.tif, the first entry, in its local and central headers.
    raw[raw.index(b"PK\x03\x04") + 6] |= 0x1
    raw[raw.index(b"PK\x01\x02") + 8] |= 0x1
    infos = zipfile.ZipFile(io.BytesIO(bytes(raw))).infolist()
    entries, skipped = plan_entries(infos, **LIMITS)
    assert [e.name for e in entries] == ["ok.tif"]
    assert [(s.name, "password" in s.reason) for s in skipped] == [("locked.tif", True)]


def test_a_zip_inside_a_zip_is_listed_not_unpacked() -> None:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        archive.writestr("a.tif", TIFF)
    entries, skipped = plan_entries(_zip([("inner.zip", inner.getvalue())]), **LIMITS)
    assert entries == [] and [s.name for s in skipped] == ["inner.zip"]
    assert "not an image" in skipped[0].reason


@pytest.mark.parametrize("name", ["../up.tif", "/abs.tif", "a/../../b.tif", "C:\\x.tif"])
def test_a_zip_entry_that_climbs_out_is_refused(name: str) -> None:
    entries, skipped = plan_entries(_zip([(name, TIFF), ("ok.tif", TIFF)]), **LIMITS)
    assert [e.name for e in entries] == ["ok.tif"]
    assert [s.name for s in skipped] == [name]


def test_a_symbolic_link_in_a_zip_is_never_followed(api: TestClient, queue: JobQueue) -> None:
    """A link entry's data is its target's path: the zip consumer reads that text, finds no
    image in it and lists the entry; nothing reads the target."""
    from consumers.zips import IMAGE_KINDS
    from kiosk.filetypes import sniff

    link = zipfile.ZipInfo("link.tif")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    (info,) = _zip([link])
    entries, _ = plan_entries([info], **LIMITS)
    assert [e.name for e in entries] == ["link.tif"]  # its name looks like an image ...
    assert sniff(b"/etc/passwd") not in IMAGE_KINDS  # ... and its content is only a path


@pytest.mark.parametrize(
    ("name", "data", "status", "words"),
    [
        ("empty.tif", b"", 415, "empty"),
        ("photo.tif", PNG, 415, "content is a PNG"),
        ("notes.tif", b"just text, no image", 415, ""),
    ],
)
def test_an_upload_that_is_no_image_is_refused_and_nothing_kept(
    api: TestClient,
    bucket: LocalBucket,
    queue: JobQueue,
    name: str,
    data: bytes,
    status: int,
    words: str,
) -> None:
    response = api.post("/api/v1/jobs", data={"job_type": "echo"}, files={"file": (name, data)})
    assert response.status_code == status, response.text
    assert words in response.json()["message"]
    assert list(bucket.list()) == []
    assert queue.redis.zcard(JOB_INDEX) == 0
