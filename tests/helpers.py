"""Small builders shared by tests: valid file bytes of each accepted kind, and jobs queued and
awaited as the frontend and a client would."""

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


def submit_file(
    queue, bucket, job_type: str, name: str = "cells.tif", data: bytes = TIFF, **options: str
) -> str:
    """Queue a job the way the frontend does: file in uploads/, hash and list entry in Redis;
    ``options`` are the request's (channels, compartment, ...)."""
    from kiosk.jobs import JobRequest, creation_fields
    from kiosk.keys import new_job_key, upload_key

    key = upload_key(name)
    bucket.put_bytes(key, data)
    request = JobRequest(job_type, name, key, **options)
    job = new_job_key(request.queue, name)
    return queue.submit(request.queue, job, creation_fields(request, "test"))


def finished(queue, key: str, timeout: float = 120) -> dict[str, str]:
    """The job's fields once it is done or failed."""
    from kiosk.keys import JobField
    from tests.support.servers import wait_for

    wait_for(lambda: queue.get(key)[JobField.STATUS] in ("done", "failed"), timeout, 0.1)
    return queue.get(key)


def labels_of(bucket, job: dict[str, str]):
    """A done job's label image."""
    import tifffile

    from kiosk.keys import JobField

    assert job[JobField.STATUS] == "done", job.get(JobField.REASON)
    return tifffile.imread(io.BytesIO(bucket.get_bytes(job[JobField.OUTPUT_FILE_NAME])))


def predict_bytes(metrics_text: str, model: str) -> dict[tuple[str, str], float]:
    """The model server's Predict tensor bytes for ``model``: {(signature, direction): bytes}."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.labels["signature"], s.labels["direction"]): s.value
        for family in text_string_to_metric_families(metrics_text)
        if family.name == "kiosk_model_server_predict_bytes"
        for s in family.samples
        if s.name.endswith("_total") and s.labels["model"] == model
    }
