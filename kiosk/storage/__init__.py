"""Buckets: where uploads, results and models live. ``file://DIR`` or ``gs://NAME``.

Every key goes through :func:`safe_key` first, so no key can name anything outside its bucket.
"""

from __future__ import annotations

from kiosk.storage.base import (
    Bucket,
    BucketWriter,
    Deleted,
    InvalidKey,
    ObjectInfo,
    ObjectNotFound,
    safe_key,
)


def open_bucket(url: str) -> Bucket:
    """The bucket a ``KIOSK_BUCKET`` URL names."""
    if url.startswith("file://"):
        from kiosk.storage.local import LocalBucket

        return LocalBucket(url.removeprefix("file://"))
    if url.startswith("gs://"):
        from kiosk.storage.gcs import GCSBucket

        return GCSBucket(url.removeprefix("gs://").strip("/"))
    raise ValueError(
        f"unsupported bucket URL {url!r}: use file://DIRECTORY for a local directory "
        "or gs://BUCKET for Google Cloud Storage"
    )


__all__ = [
    "Bucket",
    "BucketWriter",
    "Deleted",
    "InvalidKey",
    "ObjectInfo",
    "ObjectNotFound",
    "open_bucket",
    "safe_key",
]
