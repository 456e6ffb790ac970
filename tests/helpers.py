"""Small builders shared by tests: valid file bytes of each accepted kind."""

from __future__ import annotations

import io
import zipfile

TIFF = b"II*\x00\x08\x00\x00\x00" + b"\x00" * 56
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 56


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def submit_file(queue, bucket, job_type: str, name: str = "cells.tif", data: bytes = TIFF) -> str:
    """Queue a job the way the frontend does: file in uploads/, hash and list entry in Redis."""
    from kiosk.jobs import JobRequest, creation_fields
    from kiosk.keys import new_job_key, upload_key

    key = upload_key(name)
    bucket.put_bytes(key, data)
    request = JobRequest(job_type, name, key)
    job = new_job_key(request.queue, name)
    return queue.submit(request.queue, job, creation_fields(request, "test"))
