"""The zip job type: fan a zip of images out into child jobs, then zip the children's results.

A zip parent passes through this consumer twice:

1. Fan-out. The zip is read entry by entry (never whole in memory); each image is streamed to
   the bucket and becomes a child job of the parent's job type, on that type's queue. Entries
   that are not images (``__MACOSX``, folders, other files) are skipped and listed; unsafe names
   (``..``, absolute paths), encrypted or oversized entries, and images padded with bulk their
   pixels do not need, are refused and listed. The parent then waits in ``waiting`` holding no
   consumer (:class:`~consumers.base.Waiting`).
2. Fan-in. The queue protocol counts each child's end on the parent; the last one puts the
   parent back on this queue. The results zip gets every finished child's output; failed
   children are listed in ``failures``, not fatal.

Child keys and upload keys are derived from the parent, so a fan-out that is interrupted and
run again creates no duplicates.

What a zip may write is bounded by its size. Its images together may unpack to at most
``max_zip_ratio`` times the zip's size plus :data:`RATIO_ALLOWANCE` (refused whole otherwise,
from the zip's directory, before anything is unpacked); an image that compresses better than
``max_zip_ratio``:1 must have pixels that account for its size (:func:`padding_problem`, from
its header); and no entry is written past the size the directory declares for it. So what a
zip writes to ``uploads/`` never exceeds ``max_zip_ratio`` x its size + 64 MiB.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import BinaryIO, ClassVar, cast

from pydantic import Field

from consumers.base import (
    Consumer,
    Job,
    JobError,
    JobLost,
    Result,
    Waiting,
    children_queued,
    queue_child,
)
from consumers.imaging import ImageError, pixel_bytes
from kiosk.filetypes import MOVIE_JOB_TYPES, FileKind, human_bytes, kind_from_name, sniff
from kiosk.jobs import NO_PREVIEW, ZIP_PREVIEWS, JobRequest, JobView, Stages, creation_fields
from kiosk.keys import (
    JobField,
    Status,
    child_uuid,
    children_upload_prefix,
    clean_name,
    job_type_of,
)
from kiosk.queue import JobQueue, Outcome, ParentGone
from kiosk.settings import GIB, JobTypeSettings
from kiosk.storage import BucketWriter

IMAGE_KINDS = frozenset({FileKind.TIFF, FileKind.PNG, FileKind.JPEG})
COPY_CHUNK = 1024 * 1024
MIB = 1024 * 1024
RATIO_ALLOWANCE = 64 * MIB
"""Bytes any zip may unpack to beyond ``max_zip_ratio`` x its size, so that a small zip of a
few highly compressible images (mostly-black TIFFs) passes."""
UNPACKED_GONE = "the zip job was deleted while it was unpacked"
IMAGE_SLACK = MIB
"""Bytes an image file may hold beyond twice what its pixels take (metadata, pyramids,
compression that did not pay); entries up to this size are never checked."""


@dataclass(frozen=True)
class Entry:
    """An image in the zip that becomes a child job."""

    index: int
    info: zipfile.ZipInfo

    @property
    def name(self) -> str:
        return self.info.filename


@dataclass(frozen=True)
class Skipped:
    """An entry that is not a child job, and why; listed in the parent's ``failures``."""

    name: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason}


def unsafe_name(name: str) -> str | None:
    """Why a member name could escape a folder it is extracted to, or None when it is safe."""
    normal = name.replace("\\", "/")
    if normal.startswith("/") or (len(normal) > 1 and normal[1] == ":"):
        return "absolute path refused"
    if ".." in PurePosixPath(normal).parts:
        return "path with '..' refused"
    if any(ord(ch) < 32 for ch in normal):
        return "control character in the name refused"
    return None


def max_unpacked(zip_size: int, max_ratio: float) -> int:
    """The most bytes a zip of this size may unpack to, its images together."""
    return int(max_ratio * zip_size) + RATIO_ALLOWANCE


def ratio_problem(unpacked: int, zip_size: int, max_ratio: float) -> str | None:
    """Why a zip whose images unpack to ``unpacked`` bytes is refused, or None."""
    if unpacked <= max_unpacked(zip_size, max_ratio):
        return None
    return (
        f"the zip's images unpack to {human_bytes(unpacked)}, "
        f"{unpacked / max(zip_size, 1):.0f} times the zip's {human_bytes(zip_size)}; Kiosk "
        f"unpacks at most {max_ratio:g} times a zip's size plus {human_bytes(RATIO_ALLOWANCE)} "
        "(KIOSK_MAX_ZIP_RATIO), so that a small upload cannot fill its storage. Images padded "
        "with zeros compress like this; if these are real images, save them compressed (TIFF "
        "with deflate or LZW, or PNG) before zipping them, or split them across smaller zips"
    )


def needs_accounting(info: zipfile.ZipInfo, max_ratio: float) -> bool:
    """An entry that compresses better than ``max_ratio``:1 must show, from its image header,
    that its pixels account for its size (small entries cannot hide much and are let be)."""
    return info.file_size > IMAGE_SLACK and info.file_size > max_ratio * info.compress_size


def padding_problem(size: int, compressed: int, pixels: int | None) -> str | None:
    """Why an image file of ``size`` bytes whose header says its pixels take ``pixels`` bytes
    (None: unreadable) is refused, or None when its pixels account for its size."""
    ratio = f"it compresses {size / max(compressed, 1):.0f}:1"
    if pixels is None:
        return (
            f"refused: {ratio} and its image header cannot be read to account for its "
            f"{human_bytes(size)}; save the image again and zip it"
        )
    allowed = 2 * pixels + IMAGE_SLACK
    if size <= allowed:
        return None
    return (
        f"refused: {human_bytes(size)}, but its pixels take {human_bytes(pixels)} and {ratio}: "
        "the rest is not image data (bulk such as zeros after the image). Save the image "
        "again and zip it"
    )


def plan_zip(
    archive: zipfile.ZipFile, path: Path, limits: ZipSettings
) -> tuple[list[Entry], list[Skipped]]:
    """:func:`plan_entries` of the open zip at ``path`` under a job type's zip limits."""
    return plan_entries(
        archive.infolist(),
        max_entries=limits.max_zip_entries,
        max_entry_bytes=limits.max_zip_entry_bytes,
        max_total_bytes=limits.max_zip_total_bytes,
        zip_size=path.stat().st_size,
        max_ratio=limits.max_zip_ratio,
    )


def plan_entries(
    infos: list[zipfile.ZipInfo],
    *,
    max_entries: int,
    max_entry_bytes: int,
    max_total_bytes: int,
    zip_size: int,
    max_ratio: float,
) -> tuple[list[Entry], list[Skipped]]:
    """Split a zip's members into images to run and entries to list; a pure function of the
    central directory (and the zip's size). Raises :class:`JobError` for a zip that must be
    refused as a whole."""
    if len(infos) > max_entries:
        raise JobError(
            f"the zip has {len(infos)} entries; the limit is {max_entries} "
            "(KIOSK_MAX_ZIP_ENTRIES): split it into smaller zips"
        )
    declared = sum(info.file_size for info in infos)
    if declared > max_total_bytes:
        raise JobError(
            f"the zip unpacks to {declared} bytes, over the limit of {max_total_bytes} "
            "(KIOSK_MAX_ZIP_TOTAL_BYTES): split it into smaller zips"
        )
    entries: list[Entry] = []
    skipped: list[Skipped] = []
    for info in infos:
        name = info.filename
        if info.is_dir():
            continue
        why = unsafe_name(name)
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if why is None and ("__MACOSX" in parts or parts[-1].startswith("._")):
            why = "macOS metadata skipped"
        if why is None and kind_from_name(name) not in IMAGE_KINDS:
            why = "not an image (.tif, .tiff, .png, .jpg or .jpeg) skipped"
        if why is None and info.flag_bits & 0x1:
            why = "encrypted entry refused: zip the images without a password"
        if why is None and info.file_size > max_entry_bytes:
            why = (
                f"{info.file_size} bytes unpacked, over the limit of {max_entry_bytes} "
                "(KIOSK_MAX_ZIP_ENTRY_BYTES)"
            )
        if why is None and info.file_size == 0:
            why = "empty file skipped"
        if why:
            skipped.append(Skipped(name, why))
        else:
            entries.append(Entry(len(entries), info))
    problem = ratio_problem(sum(e.info.file_size for e in entries), zip_size, max_ratio)
    if problem:
        raise JobError(problem)
    return entries, skipped


def entry_uuid(parent_key: str, entry: Entry) -> str:
    return child_uuid(parent_key, f"{entry.index}:{entry.name}")


def child_key(parent_key: str, job_type: str, entry: Entry) -> str:
    """``{queue}:{path-in-zip}:{uuid}``, as the original names zip children."""
    return f"{job_type}:{clean_name(entry.name)}:{entry_uuid(parent_key, entry)}"


def child_upload_key(parent_key: str, entry: Entry) -> str:
    """``uploads/{zip uuid}/{child uuid}.tif``: a zip's images share a folder, which goes
    with the zip when it is deleted."""
    suffix = PurePosixPath(entry.name).suffix.lower()
    return f"{children_upload_prefix(parent_key)}{entry_uuid(parent_key, entry)}{suffix}"


def result_name(original_name: str, output_key: str, taken: set[str]) -> str:
    """A unique name in the results zip: the child's path in the zip, with its output's
    suffix (``cells/a.png`` -> ``cells/a_labels.tif``)."""
    source = PurePosixPath(original_name.replace("\\", "/"))
    suffix = PurePosixPath(output_key).suffix
    stem = str(source.with_suffix("")) if source.suffix else str(source)
    base = f"{stem}_labels{suffix}"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{stem}_labels_{n}{suffix}"
    taken.add(name)
    return name


class ZipSettings(JobTypeSettings):
    """Limits on what a zip may hold, checked from its directory before anything is unpacked
    (and, for images that compress suspiciously well, from their headers)."""

    service_name: ClassVar[str] = "zips"

    max_zip_entries: int = Field(
        10000, ge=1, description="Most entries a zip may hold; larger zips are refused."
    )
    max_zip_entry_bytes: int = Field(
        GIB, ge=1, description="Largest unpacked image in a zip; larger entries are refused."
    )
    max_zip_total_bytes: int = Field(
        64 * GIB,
        ge=1,
        description="Most bytes a zip may unpack to, all entries together (zip-bomb guard).",
    )
    max_zip_ratio: float = Field(
        100.0,
        ge=1,
        description="A zip's images may unpack to at most this many times the zip's size, "
        "plus 64 MiB (refused whole otherwise); an image compressing better than this must "
        "have pixels (from its header) that account for its size. Microscopy images compress "
        "2-10:1; images on an exactly black background, hundreds to one.",
    )


class ZipConsumer(Consumer):
    """Serves ``TYPE-zip`` queues for every job type."""

    settings_class = ZipSettings

    def process(self, job: Job) -> Result | Waiting:
        if self._children_ended(job):
            return self._fan_in(job)
        return self._fan_out(job)

    # ------------------------------------------------------------------ fan-out

    def _children_ended(self, job: Job) -> bool:
        total = job.get(JobField.TOTAL_JOBS)
        if not job.get(JobField.CHILDREN) or not total:
            return False
        ended = int(job.get(JobField.CHILDREN_DONE, "0")) + int(
            job.get(JobField.CHILDREN_FAILED, "0")
        )
        return ended >= int(total)

    def _fan_out(self, job: Job) -> Result | Waiting:
        with job.input_file() as path:
            return self._fan_out_file(job, path)

    def _fan_out_file(self, job: Job, path: Path) -> Result | Waiting:
        """:meth:`_fan_out` of the zip at ``path`` (for job types that look into it first)."""
        queue = self._require_queue()
        job_type = job_type_of(job.queue)
        limits = cast(ZipSettings, self.job_settings)
        with job.stage(Stages.PREPROCESS):
            archive = open_zip(path, job.get(JobField.ORIGINAL_NAME))
            entries, skipped = plan_zip(archive, path, limits)
            entries, padded = _account(archive, entries, limits.max_zip_ratio)
            skipped += padded
        if not entries:
            listed = "; ".join(f"{s.name}: {s.reason}" for s in skipped[:5]) or "it is empty"
            raise JobError(
                f"the zip holds no images Kiosk can segment ({listed}); "
                "zip .tif, .png or .jpg images and submit it again"
            )
        keys = [child_key(job.key, job_type, entry) for entry in entries]
        failures = [s.as_dict() for s in skipped]
        job.update(
            **{
                JobField.CHILDREN: ",".join(keys),
                JobField.TOTAL_JOBS: len(keys),
                JobField.FAILURES: json.dumps(failures),
            }
        )
        with job.stage(Stages.UPLOAD), archive:
            for position, (entry, key) in enumerate(zip(entries, keys, strict=True)):
                self._spawn(job, queue, job_type, archive, entry, key, position)
        return children_queued(job)

    def _spawn(
        self,
        job: Job,
        queue: JobQueue,
        job_type: str,
        archive: zipfile.ZipFile,
        entry: Entry,
        key: str,
        position: int,
    ) -> None:
        """Stream one image to the bucket and queue its child job (once, however often run).
        No more than the size the zip's directory declares is written, whatever the entry's
        data unpacks to. ``position``: the child's among the zip's children."""
        if queue.get(key) is not None:
            return
        upload = child_upload_key(job.key, entry)
        try:
            with archive.open(entry.info) as src, self.bucket.open_write(upload) as dst:
                copy_entry(cast(BinaryIO, src), dst, entry.info.file_size)
        except (BadEntry, zipfile.BadZipFile, EOFError, OSError) as exc:
            self._record_failed_child(queue, job, job_type, key, entry, position, upload, str(exc))
            return
        request = self._child_request(job, job_type, entry, position, upload)
        queue_child(job, queue, job_type, key, request, UNPACKED_GONE)

    def _record_failed_child(
        self,
        queue: JobQueue,
        job: Job,
        job_type: str,
        key: str,
        entry: Entry,
        position: int,
        upload: str,
        why: str,
    ) -> None:
        """An entry that cannot be read still counts as a child: it is created failed, so the
        parent's count of ended children stays right and the reason is listed."""
        self.bucket.delete(upload)
        request = self._child_request(job, job_type, entry, position, "")
        fields = creation_fields(request, job.get(JobField.IDENTITY_UPLOAD))
        fields |= {
            JobField.STATUS: Status.FAILED,
            JobField.REASON: f"could not read {entry.name!r} from the zip: {why}",
            JobField.FINISHED_AT: fields[JobField.CREATED_AT],
        }
        try:
            queue.submit_ended_child(job_type, key, fields)
        except ParentGone as exc:
            raise JobLost(f"{UNPACKED_GONE} ({exc})", Outcome.GONE) from exc

    @staticmethod
    def _child_request(
        job: Job, job_type: str, entry: Entry, position: int, upload: str
    ) -> JobRequest:
        """The parent's request (model, scale, channels, ...) for one image of the zip, the
        ``position``-th child. Past the first :data:`ZIP_PREVIEWS`, an image draws no overlay
        preview (a movie always draws its own: its preview is one of its results)."""
        inherited = JobRequest.of_job(job_type, job.fields)
        drawn = position < ZIP_PREVIEWS or job_type in MOVIE_JOB_TYPES
        return replace(
            inherited,
            original_name=entry.name,
            input_file_name=upload,
            url="",
            parent=job.key,
            preview="" if drawn else NO_PREVIEW,
        )

    # ------------------------------------------------------------------ fan-in

    def _fan_in(self, job: Job) -> Result:
        queue = self._require_queue()
        keys = [k for k in job.get(JobField.CHILDREN).split(",") if k]
        failures = json.loads(job.get(JobField.FAILURES) or "[]")
        done = 0
        with tempfile.TemporaryDirectory() as tmp:
            stem = Path(job.get(JobField.ORIGINAL_NAME, "images")).stem
            results = Path(tmp) / f"{stem}_labels.zip"
            with job.stage(Stages.POSTPROCESS), zipfile.ZipFile(results, "w") as out:
                taken: set[str] = set()
                for child in _children(queue, keys):
                    name = child.fields.get(JobField.ORIGINAL_NAME, child.key)
                    output = child.fields.get(JobField.OUTPUT_FILE_NAME, "")
                    if child.status != Status.DONE or not output:
                        failures.append({"name": name, "reason": _reason(child)})
                        continue
                    try:
                        self._copy_into(out, output, result_name(name, output, taken))
                    except FileNotFoundError:
                        failures.append({"name": name, "reason": "its result file is missing"})
                        continue
                    done += 1
                if failures:
                    out.writestr("failures.csv", _failures_csv(failures))
            if done == 0:
                raise JobError(
                    f"none of the {len(keys)} images in the zip could be segmented; "
                    f"first failure: {failures[0]['name']}: {failures[0]['reason']}"
                )
            key = job.upload_output(results)
        return Result(
            key,
            {
                JobField.TOTAL_JOBS: str(len(keys)),
                JobField.FAILURES: json.dumps(failures),
                JobField.CLEANUP_TIME: "0",
            },
        )

    def _copy_into(self, out: zipfile.ZipFile, key: str, name: str) -> None:
        # Label TIFFs are compressed already: store them, don't deflate them again.
        with self.bucket.open_read(key) as src, out.open(name, "w", force_zip64=True) as dst:
            while chunk := src.read(COPY_CHUNK):
                dst.write(chunk)

    def _require_queue(self) -> JobQueue:
        if self.queue is None:
            raise RuntimeError("the zip consumer needs the job queue to create child jobs")
        return self.queue


class BadEntry(Exception):
    """An entry that cannot become a child job; the message says why."""


def copy_entry(src: BinaryIO, dst: BucketWriter, declared: int) -> None:
    """Stream an image entry into the bucket, never past the size the zip's directory
    declares for it (the entry's data may say otherwise: it is what gets unpacked)."""
    head = src.read(min(COPY_CHUNK, declared + 1))
    if sniff(head) not in IMAGE_KINDS:
        raise BadEntry("its content is not a TIFF, PNG or JPEG image")
    written = 0
    while head:
        written += len(head)
        if written > declared:
            raise BadEntry(
                f"it unpacks to more than the {declared} bytes the zip's directory declares: "
                "the zip is damaged or was made to mislead; create it again"
            )
        dst.write(head)
        head = src.read(min(COPY_CHUNK, declared + 1 - written))


def _account(
    archive: zipfile.ZipFile, entries: list[Entry], max_ratio: float
) -> tuple[list[Entry], list[Skipped]]:
    """Refuse the entries that compress better than ``max_ratio``:1 and whose image header
    does not account for their size (only their headers are read)."""
    kept: list[Entry] = []
    refused: list[Skipped] = []
    for entry in entries:
        info = entry.info
        if not needs_accounting(info, max_ratio):
            kept.append(entry)
            continue
        try:
            with archive.open(info) as src:
                pixels: int | None = pixel_bytes(
                    cast(BinaryIO, src), name=info.filename, size=info.file_size
                )
        except (ImageError, zipfile.BadZipFile, EOFError, OSError, RuntimeError):
            pixels = None
        problem = padding_problem(info.file_size, info.compress_size, pixels)
        if problem:
            refused.append(Skipped(entry.name, problem))
        else:
            kept.append(entry)
    return kept, refused


def _reason(child: JobView) -> str:
    """Why a child gave no result, for the parent's failures."""
    if not child.fields:
        return "the child job expired or was deleted before the results were collected"
    return child.fields.get(JobField.REASON) or f"ended {child.status or 'without a status'}"


def _children(queue: JobQueue, keys: list[str], batch: int = 500) -> Iterator[JobView]:
    for start in range(0, len(keys), batch):
        chunk = keys[start : start + batch]
        for key, fields in zip(chunk, queue.get_many(chunk), strict=True):
            yield JobView(key, fields or {})


def _failures_csv(failures: list[dict[str, str]]) -> str:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["name", "reason"])
    for failure in failures:
        writer.writerow([failure["name"], failure["reason"]])
    return text.getvalue()


def open_zip(path: Path, name: str) -> zipfile.ZipFile:
    """The upload at ``path`` as a zip, or a :class:`JobError` saying it is not one."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise JobError(
            f"{name or 'the upload'} is not a readable zip ({exc}); create the zip again"
        ) from exc
