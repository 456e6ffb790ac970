"""What each owner stores in the bucket, counted from the objects themselves.

The janitor lists ``uploads/`` and ``output/`` (each object's size as the bucket gives it) and
attributes every object through the jobs: an upload to a job created from it (the inputs
registry), a folder (``uploads/{job}/``, a zip's unpacked images; ``output/{job}/``, results,
a zip's images' inside the zip's) to the job whose uuid names it, and each job to its owner.
Objects no job claims any more (their jobs expired) count for nobody: the retention removes
them. The counts replace the last ones in Redis (``kiosk:storage``), where the frontend's
byte quotas read them.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import redis

from kiosk.keys import (
    ANONYMOUS,
    INPUT_USERS,
    JOB_INDEX,
    OUTPUT_PREFIX,
    STORAGE_COUNTED_AT,
    STORAGE_USE,
    UPLOAD_PREFIX,
    JobField,
    parse_job_key,
)
from kiosk.queue import JobQueue
from kiosk.storage import Bucket

LINE = "\n"


def census(queue: JobQueue, bucket: Bucket) -> dict[str, int]:
    """Bytes per owner, from a listing of the bucket."""
    folders: Counter[str] = Counter()  # job uuid -> bytes under its folders
    uploads: dict[str, int] = {}  # an upload's key -> its bytes
    for prefix in (UPLOAD_PREFIX, OUTPUT_PREFIX):
        for info in bucket.list_objects(prefix):
            head, sep, _ = info.key[len(prefix) :].partition("/")
            if sep:
                folders[head] += info.size
            elif prefix == UPLOAD_PREFIX:
                uploads[info.key] = info.size
    jobs = _jobs_by_uuid(queue, set(folders))
    users = _first_users(queue, list(uploads))
    owners = _owners(queue, {*jobs.values(), *users.values()})
    stored: Counter[str] = Counter()
    for uuid, size in folders.items():
        if (owner := owners.get(jobs.get(uuid, ""))) is not None:
            stored[owner] += size
    for key, size in uploads.items():
        if (owner := owners.get(users.get(key, ""))) is not None:
            stored[owner] += size
    return dict(stored)


def record(queue: JobQueue, stored: dict[str, int], now: float | None = None) -> None:
    """Replace the last census with this one, in one step."""
    with queue.redis.pipeline(transaction=True) as pipe:
        pipe.delete(STORAGE_USE)
        mapping: dict[Any, Any] = {owner: str(size) for owner, size in stored.items()}
        mapping[STORAGE_COUNTED_AT] = repr(time.time() if now is None else now)
        pipe.hset(STORAGE_USE, mapping=mapping)
        pipe.execute()


def stored_bytes(queue: JobQueue, owners: Iterable[str]) -> tuple[int, float | None]:
    """What these owners store together at the last census, and when that was (None: never)."""
    names = list(owners)
    *values, counted = queue.redis.hmget(STORAGE_USE, [*names, STORAGE_COUNTED_AT])
    return sum(int(v) for v in values if v), (float(counted) if counted else None)


def _jobs_by_uuid(queue: JobQueue, uuids: set[str]) -> dict[str, str]:
    found = {}
    if uuids:
        for key, _ in queue.redis.zscan_iter(JOB_INDEX, count=1000):
            parsed = parse_job_key(str(key))
            if parsed is not None and parsed.uuid in uuids:
                found[parsed.uuid] = str(key)
    return found


def _first_users(queue: JobQueue, uploads: list[str]) -> dict[str, str]:
    if not uploads:
        return {}
    try:
        users = queue.redis.hmget(INPUT_USERS, uploads)
    except redis.ResponseError:  # the registry is not a hash: nothing to attribute through
        return {}
    return {key: str(u).split(LINE, 1)[0] for key, u in zip(uploads, users, strict=True) if u}


def _owners(queue: JobQueue, keys: set[str]) -> dict[str, str]:
    """Job key -> owner, for the jobs that still exist."""
    ordered = sorted(keys)
    with queue.redis.pipeline(transaction=False) as pipe:
        for key in ordered:
            pipe.hmget(key, [JobField.OWNER, JobField.STATUS])
        replies = pipe.execute(raise_on_error=False)  # a key that is no hash: nobody's
    return {
        key: reply[0] or ANONYMOUS
        for key, reply in zip(ordered, replies, strict=True)
        if isinstance(reply, list) and reply[1] is not None
    }
