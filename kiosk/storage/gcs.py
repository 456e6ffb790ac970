"""``gs://NAME``: Google Cloud Storage through google-cloud-storage.

Credentials come from the environment (Workload Identity on GKE, ADC elsewhere); with
``STORAGE_EMULATOR_HOST`` set the client talks to an emulator instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import BinaryIO

from google.api_core.exceptions import NotFound
from google.cloud import storage

from kiosk.storage.base import Bucket, BucketWriter, ObjectInfo, ObjectNotFound, safe_key

CHUNK_SIZE = 8 * 1024 * 1024  # resumable upload chunk; a multiple of 256 KiB
BATCH_CALLS = 100  # the most calls Cloud Storage takes in one batch request


class _GCSWriter(BucketWriter):
    """A resumable upload: the object appears only when the last chunk is sent on commit."""

    def __init__(self, blob: storage.Blob) -> None:
        self._file = blob.open("wb", chunk_size=CHUNK_SIZE, ignore_flush=True)

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def commit(self) -> None:
        self._file.close()

    def abort(self) -> None:
        self._file.terminate()  # cancels the resumable session; no object is created


class GCSBucket(Bucket):
    def __init__(self, name: str, client: storage.Client | None = None) -> None:
        if not name or "/" in name:
            raise ValueError(f"invalid GCS bucket name {name!r}: give gs://BUCKET")
        self._client = client or storage.Client()
        self._bucket = self._client.bucket(name)
        self.url = f"gs://{name}"

    def _blob(self, key: str) -> storage.Blob:
        return self._bucket.blob(safe_key(key))

    def open_write(self, key: str) -> BucketWriter:
        return _GCSWriter(self._blob(key))

    def open_read(self, key: str) -> BinaryIO:
        blob = self._blob(key)
        try:
            blob.reload()
        except NotFound as exc:
            raise ObjectNotFound(f"no object {key!r} in {self.url}") from exc
        return blob.open("rb", chunk_size=CHUNK_SIZE)

    def size(self, key: str) -> int | None:
        blob = self._bucket.get_blob(safe_key(key))
        return None if blob is None else int(blob.size or 0)

    def delete(self, key: str) -> bool:
        try:
            self._blob(key).delete()
        except NotFound:
            return False
        return True

    def delete_many(self, keys: Iterable[str]) -> None:
        """Deletes in batch requests of up to 100 objects each."""
        names = iter(keys)
        while blobs := [self._blob(key) for key in islice(names, BATCH_CALLS)]:
            try:
                with self._client.batch():
                    for blob in blobs:
                        blob.delete()
            except NotFound:
                pass  # the others in the batch were deleted; a missing one is skipped

    def list(self, prefix: str = "") -> Iterator[str]:
        for blob in self._client.list_blobs(self._bucket, prefix=prefix):
            yield blob.name

    def list_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for blob in self._client.list_blobs(self._bucket, prefix=prefix):
            written = blob.updated or blob.time_created
            modified = written.timestamp() if written else 0.0
            yield ObjectInfo(blob.name, int(blob.size or 0), modified)
