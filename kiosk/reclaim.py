"""Reclaiming storage: the files of a deleted job, and files older than the retention.

Deleting a job (``DELETE /api/v1/jobs/{id}``) is two steps. :func:`remove_job` takes the job
and its children (a zip's images, a movie's frames) out of Redis, in batches, each job in one
atomic step (a consumer working on one stops at its next write); it says which files they
leave. Then :func:`remove_files` deletes them: each input that no other job uses, the job's
output folder (a zip's holds its images' results too) and its children's unpacked images,
which share a folder. The frontend runs the second step after answering, so a 10,000-image zip
does not hold the request; whatever a crash leaves behind goes with the retention.

The retention (:func:`reclaim_expired`, run by the janitor on a ``file://`` bucket) deletes
objects under ``uploads/`` and ``output/`` last written more than ``KIOSK_RETENTION`` seconds
ago, keeping inputs that a job which has not ended still uses (a job queued longer than the
retention keeps its input). On ``gs://`` the bucket's lifecycle rules do this instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import TypeVar

from kiosk.keys import (
    OUTPUT_PREFIX,
    UPLOAD_PREFIX,
    ZIP_SUFFIX,
    JobField,
    children_upload_prefix,
    output_prefix,
    parse_job_key,
)
from kiosk.queue import JobQueue
from kiosk.storage import Bucket, Deleted, ObjectInfo
from kiosk.storage.local import LocalBucket

BATCH = 500  # jobs per Redis round trip, objects per registry look-up
T = TypeVar("T")


@dataclass(frozen=True)
class JobFiles:
    """What deleting jobs leaves to remove from the bucket."""

    inputs: list[str] = field(default_factory=list)
    """Uploads no remaining job uses."""
    folders: list[str] = field(default_factory=list)
    """Folders removed whole: output folders."""
    shared_folders: list[str] = field(default_factory=list)
    """Folders whose objects go unless a remaining job uses them: a zip's unpacked images."""

    def __add__(self, other: JobFiles) -> JobFiles:
        return JobFiles(
            self.inputs + other.inputs,
            self.folders + other.folders,
            self.shared_folders + other.shared_folders,
        )


@dataclass(frozen=True)
class Reclaimed:
    """What a retention pass removed, and the old inputs it kept for unfinished jobs."""

    files: int = 0
    bytes: int = 0
    kept: int = 0

    def __add__(self, other: Reclaimed) -> Reclaimed:
        return Reclaimed(self.files + other.files, self.bytes + other.bytes, self.kept + other.kept)


def _queue_of(key: str) -> str:
    parsed = parse_job_key(key)
    return parsed.queue if parsed else ""


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def remove_job(queue: JobQueue, key: str, fields: Mapping[str, str]) -> JobFiles:
    """Delete a job from Redis and its children's jobs (a zip's images, a movie's frames, and
    theirs: a zip of movies); the files they leave.

    The parent goes first, so its children's ends are counted nowhere and nothing queues it
    again.
    """
    parent = fields.get(JobField.PARENT, "")
    removed = queue.remove([(key, _queue_of(key))])
    folders = [output_prefix(key, parent)]
    shared: list[str] = []
    children = [c for c in fields.get(JobField.CHILDREN, "").split(",") if c]
    if children or _queue_of(key).endswith(ZIP_SUFFIX):
        # Children keep their results inside output_prefix(key), which is the folder above
        # unless this job is itself a child.
        folders.append(output_prefix(key))
        shared.append(children_upload_prefix(key))  # images of children already expired too
    nested = JobFiles()
    for chunk in _chunks(children, BATCH):
        parents = [
            (child, child_fields)
            for child, child_fields in zip(chunk, queue.get_many(chunk), strict=True)
            if child_fields.get(JobField.CHILDREN)
        ]
        removed += queue.remove([(child, _queue_of(child)) for child in chunk])
        for child, child_fields in parents:
            nested += remove_job(queue, child, child_fields)
    return nested + JobFiles(
        [r.input for r in removed if r.input_free], sorted(set(folders)), shared
    )


def remove_files(queue: JobQueue, bucket: Bucket, files: JobFiles) -> Deleted:
    """Delete what :func:`remove_job` left, sparing anything a remaining job uses (looked up
    again here: a job created since may have named one of the inputs)."""
    used = queue.inputs_in_use(files.inputs, unfinished_only=False)
    inputs = [key for key in files.inputs if key not in used]
    bucket.delete_many(inputs)
    deleted = Deleted(len(inputs))
    for folder in files.folders:
        deleted += bucket.delete_prefix(folder)
    for folder in files.shared_folders:
        for chunk in _chunks(bucket.list_objects(folder), BATCH):
            used = queue.inputs_in_use([info.key for info in chunk], unfinished_only=False)
            gone = [info for info in chunk if info.key not in used]
            bucket.delete_many(info.key for info in gone)
            deleted += Deleted(len(gone), sum(info.size for info in gone))
    return deleted


def expired(info: ObjectInfo, now: float, retention: float) -> bool:
    """An object last written longer ago than the retention."""
    return now - info.modified > retention


def reclaim_expired(queue: JobQueue, bucket: Bucket, retention: float, now: float) -> Reclaimed:
    """Delete objects under ``uploads/`` and ``output/`` (and, on a local bucket, writes that
    a process abandoned there) older than ``retention`` seconds, except inputs of jobs that
    have not ended."""
    reclaimed = Reclaimed()
    for prefix in (UPLOAD_PREFIX, OUTPUT_PREFIX):
        old = (info for info in bucket.list_objects(prefix) if expired(info, now, retention))
        for chunk in _chunks(old, BATCH):
            used = queue.inputs_in_use([i.key for i in chunk]) if prefix == UPLOAD_PREFIX else set()
            gone = [info for info in chunk if info.key not in used]
            bucket.delete_many(info.key for info in gone)
            reclaimed += Reclaimed(len(gone), sum(info.size for info in gone), len(used))
        if isinstance(bucket, LocalBucket):
            abandoned = [i for i in bucket.list_partials(prefix) if expired(i, now, retention)]
            bucket.delete_many(info.key for info in abandoned)
            reclaimed += Reclaimed(len(abandoned), sum(info.size for info in abandoned))
    return reclaimed
