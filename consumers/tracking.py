"""The tracking job type: a movie in; every frame segmented in parallel, cells linked over time
with their divisions, and a results zip out. Clients may also submit it as ``caliban``, the
original's name: the alias is resolved to ``tracking`` when a job is created
(:data:`kiosk.keys.JOB_TYPE_ALIASES`), so there is one queue and one consumer.

A movie (:mod:`consumers.movies`: a multi-page TIFF, a zip of frames, a .trk) passes through
this consumer twice, like a zip (:mod:`consumers.zips`):

1. Fan-out. Its limits are checked from headers (``KIOSK_MAX_FRAMES``, pixels per frame,
   pixels in all); each frame, the chosen channel as one 2-D plane, is written to the bucket
   under the movie's children folder and becomes a child ``segmentation`` job with the movie as
   its parent, inheriting the movie's options (model, scale). Child keys and uploads are
   derived from the movie's key and the frame's index, so a fan-out run again creates nothing
   twice. The movie then waits in ``waiting`` holding no consumer; its progress is the share of
   frames that ended, kept by the queue. While it waits, the queue wakes it early now and then
   (:mod:`consumers.link_ahead`): the frames segmented so far are linked, and it waits again.
2. Fan-in, when the last frame's job ends and the queue puts the movie back on this queue.
   Every frame must have been segmented: the first failed frame fails the movie, its reason
   naming the frame and the frame job's own reason (a track cannot be followed across a missing
   frame). Then the frames not linked ahead are read (each frame's job measured its cells) and
   linked (:func:`consumers.processing.linking.link`, shown as post-processing);
   and the results are written frame by frame (:mod:`consumers.tracking_results`). The
   fan-in depends only on the frames' results, and writes the same keys each time, so a
   consumer killed during it loses nothing: the next one runs it again.

A .trk or .trks comes with its labels: they are tracked again as they are, in one step, with
no segmentation; each movie of a .trks gets its own folder in the results zip.

The ``tracking-zip`` twin (:class:`TrackingZipConsumer`): a zip of single 2-D frames is one
movie, its frames in the natural order of their names, tracked as above; a zip of movies
(multi-page TIFFs) is split like any zip, each movie a tracking job of its own, and the
results zip holds each movie's results zip. A zip that mixes single frames and movies is
refused.
"""

from __future__ import annotations

import io
import logging
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import BinaryIO, ClassVar, cast

import numpy as np
import tifffile
from pydantic import Field

from consumers import imaging
from consumers.base import (
    Consumer,
    Job,
    JobError,
    Result,
    Waiting,
    children_queued,
    queue_child,
)
from consumers.division_scorer import DivisionModelMissing, ServedDivisionScorer
from consumers.link_ahead import Ahead, LinkersInHand, next_wake
from consumers.movie_frames import (
    SEGMENTATION,
    cells_key,
    decode_cells,
    frame_child_key,
    frame_file_name,
    frame_upload_key,
)
from consumers.movies import FramesZip, Movie, MovieLimits, open_movies
from consumers.processing import linking
from consumers.segmentation import NUCLEAR_MODEL
from consumers.tracking_results import Previews, ResultNames, write_results
from consumers.zips import ZipConsumer, ZipSettings, open_zip, plan_zip
from kiosk.filetypes import kind_from_name
from kiosk.jobs import JobRequest, JobView, Stages
from kiosk.keys import (
    JobField,
    Status,
    clean_name,
    file_url,
    parse_job_key,
)
from kiosk.options import OptionError, parse_scale
from kiosk.queue import JobQueue
from kiosk.serving.client import ServingClient
from kiosk.settings import JobTypeSettings, PredictSettings
from kiosk.storage import Bucket, ObjectNotFound

log = logging.getLogger(__name__)

BATCH = 500
"""Child jobs read from Redis in one round trip."""
PROGRESS_INTERVAL = 1.0
"""Seconds between progress writes during the fan-in."""

TableReader = Callable[[int, int], "tuple[linking.Cells, tuple[int, int]] | None"]
"""Frame ``t``'s measured cells (windows of the given size) and shape, or None: measure it."""


class TrackingSettings(JobTypeSettings):
    """Limits on the movies the tracking job type takes, checked from their headers before any
    frame is segmented. Pixels per frame are segmentation's own limit."""

    service_name: ClassVar[str] = "tracking"

    max_frames: int = Field(
        3000, ge=2, description="Most frames a movie may have; longer movies are refused."
    )
    max_image_pixels: int = Field(
        8192 * 8192,
        ge=1,
        description="Largest image plane (height x width) a segmentation job takes; larger ones "
        "fail with a message before they are decoded.",
    )
    max_movie_pixels: int = Field(
        4 * 1024**3,
        ge=1,
        description="Most pixels a movie may hold, all frames together (a .trks: all its "
        "movies); larger movies are refused before anything is segmented.",
    )
    link_ahead: bool = Field(
        True,
        description="Link a movie's segmented frames while the rest are still being segmented "
        "(the queue wakes the waiting movie when half the frames left have ended), so that "
        "little linking is left once the last frame is done.",
    )
    division_model: str = Field(
        "",
        description="Model on the model server that scores division candidates: DivisionScoring, "
        "the bundled one (higher division F1 than the feature score on generated movies; off by "
        "default until checked on real lineages); empty: the linker's feature score, with no "
        "model server needed.",
    )

    def limits(self) -> MovieLimits:
        return MovieLimits(self.max_frames, self.max_image_pixels, self.max_movie_pixels)


class TrackingZipSettings(ZipSettings, TrackingSettings):
    """A tracking zip is bounded as a zip, and its frames (or movies) as movies."""

    service_name: ClassVar[str] = "tracking"


# ------------------------------------------------------------------------------ frame jobs


def division_scorer(
    settings: TrackingSettings, predict: PredictSettings
) -> ServedDivisionScorer | None:
    """The learned division scorer ``KIOSK_DIVISION_MODEL`` names, on the model server the
    segmentation job type uses; None (the feature score) when it is empty."""
    if not settings.division_model:
        return None
    return ServedDivisionScorer(ServingClient.from_settings(predict), settings.division_model)


def link_params(job: Job) -> linking.LinkParams:
    """Linking's distances are pixels at the nuclear model's pixel size; a movie whose ``scale``
    says otherwise has them converted to its own pixels (areas are compared as ratios)."""
    try:
        scale = parse_scale(job.get(JobField.SCALE))
    except OptionError as exc:
        raise JobError(f"{exc} (the model works at {NUCLEAR_MODEL.mpp} um/px)") from None
    return scaled_link_params(scale)


def scaled_link_params(scale: float | None) -> linking.LinkParams:
    """The linking settings for a movie of ``scale`` um/px (None: the model's own); the
    evaluation links the same way."""
    params = linking.LinkParams()
    if scale is None:
        return params
    factor = NUCLEAR_MODEL.mpp / scale
    return replace(
        params,
        max_distance=params.max_distance * factor,
        division_distance=params.division_distance * factor,
    )


def children_ended(job: Job) -> bool:
    """The parent is back from ``waiting``: every child it created has ended."""
    total = job.get(JobField.TOTAL_JOBS)
    if not job.get(JobField.CHILDREN) or not total:
        return False
    done = int(job.get(JobField.CHILDREN_DONE, "0"))
    failed = int(job.get(JobField.CHILDREN_FAILED, "0"))
    return done + failed >= int(total)


def movie_stem(job: Job) -> str:
    name = job.get(JobField.ORIGINAL_NAME, "movie").replace("\\", "/")
    return clean_name(PurePosixPath(name).stem or "movie").replace("/", "_")


def encode_frame(plane: np.ndarray) -> bytes:
    """A frame for its segmentation job: one 2-D plane, stored as it is (as a zip's frames
    are): deflating it cost more than the rest of the fan-out."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, plane, photometric="minisblack")
    return buffer.getvalue()


class _Progress:
    """The fan-in's progress on the job, from ``start`` to ``end`` percent, written at most
    once per :data:`PROGRESS_INTERVAL`."""

    def __init__(self, job: Job, start: int, end: int) -> None:
        self.job, self.start, self.end = job, start, end
        self._written = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._written < PROGRESS_INTERVAL:
            return
        self._written = now
        self.job.set_progress(self.start + (self.end - self.start) * done // max(1, total))


# ------------------------------------------------------------------------------ the engine


class MovieTracker:
    """Fan-out and fan-in of one movie's frames; the tracking consumer and the tracking zip
    consumer (a zip of frames) share it."""

    def __init__(
        self,
        bucket: Bucket,
        queue: JobQueue | None,
        settings: TrackingSettings,
        public_url: str,
        scorer: ServedDivisionScorer | None = None,
        linkers: LinkersInHand | None = None,
    ) -> None:
        self.bucket = bucket
        self.queue = queue
        self.settings = settings
        self.public_url = public_url
        self.scorer = scorer
        self.linkers = linkers if settings.link_ahead else None

    def _require_queue(self) -> JobQueue:
        if self.queue is None:
            raise RuntimeError("the tracking consumer needs the job queue to create frame jobs")
        return self.queue

    # ---------------------------------------------------------------- fan-out

    def fan_out(self, job: Job, movie: Movie) -> Waiting:
        """Queue one segmentation job per frame (each once, however often run); wait."""
        queue = self._require_queue()
        link_params(job)  # a bad scale fails the movie now, not in every frame's job
        stem = movie_stem(job)
        frames = movie.frames
        keys = [frame_child_key(job.key, stem, t, frames) for t in range(frames)]
        job.update(
            **{
                JobField.CHILDREN: ",".join(keys),
                JobField.TOTAL_JOBS: frames,
                JobField.DIM_ORDER: movie.dimension_order,
            }
        )
        inherited = JobRequest.of_job(SEGMENTATION, job.fields)
        with job.stage(Stages.UPLOAD):
            for start in range(0, frames, BATCH):
                chunk = keys[start : start + BATCH]
                for offset, (key, fields) in enumerate(
                    zip(chunk, queue.get_many(chunk), strict=True)
                ):
                    if fields:
                        continue  # created by an earlier run of this fan-out
                    t = start + offset
                    self._spawn(
                        job, queue, inherited, movie, t, key, frame_file_name(stem, t, frames)
                    )
        return self._wait_for_frames(children_queued(job), 0, frames)

    def _wait_for_frames(self, waiting: Waiting, ended: int, total: int) -> Waiting:
        """``waiting`` with the next early wake, when this consumer links ahead."""
        wake = next_wake(ended, total) if self.linkers is not None else None
        if wake is None:
            return waiting
        return replace(waiting, fields={**waiting.fields, JobField.WAKE_AT: str(wake)})

    # ---------------------------------------------------------------- linking ahead

    def link_ahead(self, job: Job) -> Waiting:
        """Woken early: link the frames segmented in a row since those linked already, keep
        the linker for the next wake, and wait again. Nothing here fails the movie: a frame
        that cannot be linked (its model gone, its labels unreadable) ends the linking ahead,
        and the fan-in, which checks every frame first, says what went wrong."""
        queue = self._require_queue()
        keys = [k for k in job.get(JobField.CHILDREN).split(",") if k]
        ended = int(job.get(JobField.CHILDREN_DONE, "0")) + int(
            job.get(JobField.CHILDREN_FAILED, "0")
        )
        waiting = Waiting(woken_early=True)
        if self.linkers is None:
            return waiting
        ahead = self.linkers.take(job.key)
        start = ahead.linker.frames if ahead else 0
        ready = _segmented_in_a_row(queue, keys[start:])
        if ready:
            # Post-processing time, but not its status: the movie still waits for frames.
            began = time.perf_counter()
            try:
                if ahead is None:
                    ahead = Ahead(linking.Linker(link_params(job), self._checked_scorer()))
                read = self._cells_reader(*self._frame_readers(ready, start))
                for t in range(start, start + len(ready)):
                    ahead.linker.add(self._same_shape(ahead, t, read(t)))
            except (JobError, DivisionModelMissing) as exc:
                log.warning("%s: no more linking ahead (the fan-in will tell): %s", job.key, exc)
                return waiting  # parked with no early wake: only the last frame wakes it
            finally:
                job.record_time(Stages.POSTPROCESS, time.perf_counter() - began)
        if ahead is not None:
            self.linkers.keep(job.key, ahead)
        return self._wait_for_frames(waiting, ended, len(keys))

    def _spawn(
        self,
        job: Job,
        queue: JobQueue,
        inherited: JobRequest,
        movie: Movie,
        t: int,
        key: str,
        name: str,
    ) -> None:
        try:
            plane = movie.frame(t)
        except imaging.ImageError as exc:
            raise JobError(str(exc)) from exc
        upload = frame_upload_key(job.key, t)
        self.bucket.put_bytes(upload, encode_frame(plane))
        request = replace(
            inherited,
            original_name=name,
            input_file_name=upload,
            url="",
            parent=job.key,
            dimension_order="YX",  # the chosen channel, as one plane
            channels="",
            cell_windows=str(self.scorer.contract.patch_size) if self.scorer else "",
        )
        queue_child(
            job,
            queue,
            SEGMENTATION,
            key,
            request,
            "the movie was deleted while its frames were queued",
        )

    # ---------------------------------------------------------------- fan-in

    def fan_in(self, job: Job) -> Result:
        """Link the segmented frames and write the results (the same, however often run)."""
        queue = self._require_queue()
        keys = [k for k in job.get(JobField.CHILDREN).split(",") if k]
        children = list(_children(queue, keys))
        _fail_on_failed_frame(children)
        frames = len(children)
        labels_of, image_of, table_of = self._frame_readers(children)
        ahead = self.linkers.take(job.key) if self.linkers is not None else None

        with tempfile.TemporaryDirectory(prefix="kiosk-tracking-") as tmp:
            stem = movie_stem(job)
            results = Path(tmp) / f"{stem}_tracking.zip"
            with job.stage(Stages.POSTPROCESS), zipfile.ZipFile(results, "w") as out:
                job.set_progress(0)
                tracking, previews = self._track_and_write(
                    job,
                    out,
                    Path(tmp),
                    ResultNames(stem),
                    frames,
                    labels_of,
                    image_of,
                    table_of,
                    ahead=ahead,
                )
            key = job.upload_output(results)
            return self._result(job, key, stem, previews, tracking, frames)

    def _frame_readers(
        self, children: Sequence[JobView], first: int = 0
    ) -> tuple[Callable[[int], np.ndarray], Callable[[int], np.ndarray], TableReader]:
        """Frame ``t``'s labels, image and cells table, from its segmentation job's results
        (``children``: the jobs of frames ``first``, ``first`` + 1, ...)."""

        def labels_of(t: int) -> np.ndarray:
            key = children[t - first].fields[JobField.OUTPUT_FILE_NAME]
            return self._read_plane(key, f"the labels of frame {t}")

        def image_of(t: int) -> np.ndarray:
            key = children[t - first].fields.get(JobField.INPUT_FILE_NAME, "")
            return self._read_plane(key, f"the image of frame {t}")

        def table_of(t: int, patch_size: int) -> tuple[linking.Cells, tuple[int, int]] | None:
            key = children[t - first].fields[JobField.OUTPUT_FILE_NAME]
            return self._read_table(cells_key(key), t, patch_size)

        return labels_of, image_of, table_of

    def _checked_scorer(self) -> ServedDivisionScorer | None:
        """The division scorer, its model checked on the model server (None: the feature
        score)."""
        if self.scorer is not None:
            try:
                self.scorer.check()
            except DivisionModelMissing as exc:
                raise JobError(str(exc)) from None
        return self.scorer

    def _cells_reader(
        self,
        labels_of: Callable[[int], np.ndarray],
        image_of: Callable[[int], np.ndarray],
        table_of: TableReader | None,
    ) -> Callable[[int], tuple[linking.Cells, tuple[int, int]]]:
        """``read(t)``: frame ``t``'s cells and shape: the table its job measured, else
        measured here from its labels and image."""
        patch_size = self.scorer.contract.patch_size if self.scorer else 0

        def read(t: int) -> tuple[linking.Cells, tuple[int, int]]:
            table = table_of(t, patch_size) if table_of is not None else None
            if table is not None:
                return table
            labels = labels_of(t)
            shape = (int(labels.shape[0]), int(labels.shape[1]))
            return linking.measure(labels, image_of(t), t, patch_size), shape

        return read

    @staticmethod
    def _same_shape(
        ahead: Ahead, t: int, read: tuple[linking.Cells, tuple[int, int]]
    ) -> linking.Cells:
        """Frame ``t``'s cells, once its shape is checked against frame 0's."""
        cells, shape = read
        if ahead.shape is None:
            ahead.shape = shape
        elif shape != ahead.shape:
            height, width = ahead.shape
            raise JobError(
                f"the labels of frame {t} are {shape[0]} x {shape[1]} but those of frame 0 are "
                f"{height} x {width}; submit the movie again"
            )
        return cells

    def _track_and_write(
        self,
        job: Job,
        out: zipfile.ZipFile,
        workdir: Path,
        names: ResultNames,
        frames: int,
        labels_of: Callable[[int], np.ndarray],
        image_of: Callable[[int], np.ndarray],
        table_of: TableReader | None = None,
        share: tuple[int, int] = (0, 100),
        ahead: Ahead | None = None,
    ) -> tuple[linking.Tracking, Previews]:
        """Read the table each frame's job measured (or measure the frame) and link, a thread
        reading ahead while the linker works through the frames; then write. ``ahead``: the
        frames linked while the movie waited. The progress runs over ``share`` percent: reading
        and linking the first 60 % of it."""
        low, high = share
        span = high - low
        if ahead is None:
            ahead = Ahead(linking.Linker(link_params(job), self._checked_scorer()))
        read = self._cells_reader(labels_of, image_of, table_of)
        start = ahead.linker.frames

        def measured() -> Iterator[linking.Cells]:
            pool = ThreadPoolExecutor(1, thread_name_prefix="tracking-tables")
            try:
                later = range(start, frames)
                for t, found in zip(later, pool.map(read, later), strict=True):
                    yield self._same_shape(ahead, t, found)
            finally:
                pool.shutdown(cancel_futures=True)

        try:
            tracking = linking.link(
                measured(),
                progress=_Progress(job, low, low + span * 60 // 100),
                total=frames,
                linker=ahead.linker,
            )
        except DivisionModelMissing as exc:
            raise JobError(str(exc)) from None
        previews = write_results(
            out,
            workdir,
            names,
            frames=frames,
            shape=ahead.shape or (0, 0),
            labels_of=labels_of,
            image_of=image_of,
            tracking=tracking,
            progress=_Progress(job, low + span * 60 // 100, high),
        )
        return tracking, previews

    def _result(
        self,
        job: Job,
        key: str,
        stem: str,
        previews: Previews,
        tracking: linking.Tracking,
        frames: int,
    ) -> Result:
        preview = job.put_output(f"{stem}_preview.gif", previews.animation)
        job.put_output(f"{stem}_lineage.png", previews.lineage)
        return Result(
            key,
            {
                JobField.PREVIEW_URL: file_url(self.public_url, preview),
                JobField.OBJECTS: str(len(tracking.tracks)),
                JobField.TOTAL_JOBS: str(frames),
                JobField.CLEANUP_TIME: "0",
            },
        )

    def _read_table(
        self, key: str, t: int, patch_size: int
    ) -> tuple[linking.Cells, tuple[int, int]] | None:
        """The cells table frame ``t``'s job measured; None (measure the frame) when it has
        none (jobs from before the tables) or none with the windows the scorer needs."""
        try:
            with self.bucket.open_read(key) as src:
                data = src.read()
            return decode_cells(data, t, patch_size)
        except (ObjectNotFound, FileNotFoundError, ValueError):
            return None

    def _read_plane(self, key: str, what: str) -> np.ndarray:
        """A frame's labels or image from the bucket, as one 2-D plane."""
        gone = JobError(
            f"{what} is no longer in the bucket (removed after KIOSK_RETENTION, or deleted); "
            "submit the movie again"
        )
        if not key:
            raise gone
        try:
            local = self.bucket.local_path(key)
            if local is not None:
                data = tifffile.imread(local)
            else:
                with self.bucket.open_read(key) as src:
                    data = tifffile.imread(io.BytesIO(src.read()))
        except (ObjectNotFound, FileNotFoundError) as exc:
            raise gone from exc
        except Exception as exc:
            raise JobError(f"{what} cannot be read ({exc}); submit the movie again") from exc
        plane = np.squeeze(np.asarray(data))
        if plane.ndim != 2:
            raise JobError(f"{what} is not one plane (shape {data.shape}); submit the movie again")
        return plane

    # ---------------------------------------------------------------- labelled movies

    def track_labelled(self, job: Job, movies: Sequence[Movie]) -> Result:
        """A .trk's (or each of a .trks's) labels tracked again, in this one step."""
        stem = movie_stem(job)
        with tempfile.TemporaryDirectory(prefix="kiosk-tracking-") as tmp:
            results = Path(tmp) / f"{stem}_tracking.zip"
            first: tuple[linking.Tracking, Previews] | None = None
            tracks = 0
            with job.stage(Stages.POSTPROCESS), zipfile.ZipFile(results, "w") as out:
                job.set_progress(0)
                for b, movie in enumerate(movies):
                    folder = f"movie_{b:03d}" if len(movies) > 1 else ""
                    share = (100 * b // len(movies), 100 * (b + 1) // len(movies))
                    done = self._track_and_write(
                        job,
                        out,
                        Path(tmp),
                        ResultNames(stem, folder),
                        movie.frames,
                        _labels_reader(movie),
                        _frame_reader(movie),
                        share=share,
                    )
                    tracks += len(done[0].tracks)
                    first = first or done
            key = job.upload_output(results)
        assert first is not None  # a .trk holds at least one movie
        result = self._result(job, key, stem, first[1], first[0], movies[0].frames)
        fields = {
            **result.fields,
            JobField.OBJECTS: str(tracks),
            JobField.TOTAL_JOBS: "1",
            JobField.DIM_ORDER: movies[0].dimension_order,
        }
        return Result(result.output_file_name, fields)

    # ---------------------------------------------------------------- reading

    @contextmanager
    def open(self, job: Job, path: Path, workdir: Path) -> Iterator[list[Movie]]:
        """The job's movies, refused with a :class:`JobError` that says why and what to do."""
        try:
            with open_movies(
                path,
                name=job.get(JobField.ORIGINAL_NAME) or path.name,
                dimension_order=job.get(JobField.DIMENSION_ORDER) or None,
                channels=job.get(JobField.CHANNELS) or None,
                limits=self.settings.limits(),
                workdir=workdir,
            ) as movies:
                yield movies
        except imaging.ImageError as exc:
            raise JobError(str(exc)) from exc


def _labels_reader(movie: Movie) -> Callable[[int], np.ndarray]:
    def read(t: int) -> np.ndarray:
        try:
            labels = movie.labels(t)
        except imaging.ImageError as exc:
            raise JobError(str(exc)) from exc
        if labels is None:
            raise JobError(f"{movie.name!r} comes without labels")
        return labels

    return read


def _frame_reader(movie: Movie) -> Callable[[int], np.ndarray]:
    def read(t: int) -> np.ndarray:
        try:
            return movie.frame(t)
        except imaging.ImageError as exc:
            raise JobError(str(exc)) from exc

    return read


def _children(queue: JobQueue, keys: list[str]) -> Iterator[JobView]:
    for start in range(0, len(keys), BATCH):
        chunk = keys[start : start + BATCH]
        for key, fields in zip(chunk, queue.get_many(chunk), strict=True):
            yield JobView(key, fields or {})


def _segmented_in_a_row(queue: JobQueue, keys: list[str]) -> list[JobView]:
    """The first frames of ``keys`` whose jobs are done, up to the first that is not."""
    ready = []
    for child in _children(queue, keys):
        if child.status != Status.DONE or not child.fields.get(JobField.OUTPUT_FILE_NAME):
            break
        ready.append(child)
    return ready


def _fail_on_failed_frame(children: Sequence[JobView]) -> None:
    """A movie is tracked only when every frame was segmented: name the first that was not."""
    failed = [
        (t, child)
        for t, child in enumerate(children)
        if child.status != Status.DONE or not child.fields.get(JobField.OUTPUT_FILE_NAME)
    ]
    if not failed:
        return
    t, child = failed[0]
    name = child.fields.get(JobField.ORIGINAL_NAME) or f"frame {t}"
    if not child.fields:
        why = "its job expired or was deleted before the frames were linked"
    else:
        why = child.fields.get(JobField.REASON) or f"it ended {child.status or 'without a status'}"
    more = f" ({len(failed)} of {len(children)} frames failed)" if len(failed) > 1 else ""
    raise JobError(
        f"frame {t} ({name}) could not be segmented: {why}{more}. A movie is tracked only when "
        "every frame is segmented: fix that and submit the movie again"
    )


# ------------------------------------------------------------------------------ consumers


class _TracksMovies(Consumer):
    """What both tracking consumers share: the movie pipeline, and the movies linked ahead in
    this process."""

    @cached_property
    def linkers(self) -> LinkersInHand:
        return LinkersInHand()

    @cached_property
    def tracker(self) -> MovieTracker:
        """One for the life of the process: its division scorer's channel to the model server
        is opened once, not at every claim (early wakes claim a movie several times)."""
        settings = cast(TrackingSettings, self.job_settings)
        return MovieTracker(
            self.bucket,
            self.queue,
            settings,
            self.settings.public_url,
            division_scorer(settings, self.settings),
            self.linkers,
        )


def woken_early(job: Job) -> bool:
    """The parent is back from ``waiting`` before its last child ended: the queue woke it."""
    return bool(job.get(JobField.WAKE_AT)) and not children_ended(job)


class TrackingConsumer(_TracksMovies):
    """Serves the ``tracking`` queue (jobs submitted as ``caliban`` too)."""

    job_type = "tracking"
    settings_class = TrackingSettings
    zip_consumer: ClassVar[str] = "consumers.tracking:TrackingZipConsumer"

    def process(self, job: Job) -> Result | Waiting:
        tracker = self.tracker
        if children_ended(job):
            return tracker.fan_in(job)
        if woken_early(job):
            return tracker.link_ahead(job)
        with ExitStack() as stack:
            path = stack.enter_context(job.input_file())
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kiosk-movie-")))
            with job.stage(Stages.PREPROCESS):
                movies = stack.enter_context(tracker.open(job, path, workdir))
            done: Result | Waiting = (
                tracker.track_labelled(job, movies)
                if movies[0].labelled
                else tracker.fan_out(job, movies[0])
            )
        return done


class TrackingZipConsumer(ZipConsumer, _TracksMovies):
    """Serves ``tracking-zip``: a zip of single frames is one movie; a zip of movies is split
    into tracking jobs like any zip (see the module docstring)."""

    settings_class = TrackingZipSettings

    def process(self, job: Job) -> Result | Waiting:
        if children_ended(job):
            if tracked_as_one_movie(job):
                return self.tracker.fan_in(job)
            return self._fan_in(job)
        if woken_early(job) and tracked_as_one_movie(job):
            return self.tracker.link_ahead(job)
        with job.input_file() as path:
            with job.stage(Stages.PREPROCESS):
                movie = self._frames_of(job, path)
            if movie is None:
                return self._fan_out_file(job, path)
            with movie:
                return self.tracker.fan_out(job, movie)

    def _frames_of(self, job: Job, path: Path) -> FramesZip | None:
        """The zip as one movie when it holds single frames; None for a zip of movies."""
        limits = cast(TrackingZipSettings, self.job_settings)
        name = job.get(JobField.ORIGINAL_NAME) or path.name
        archive = open_zip(path, name)
        try:
            entries, skipped = plan_zip(archive, path, limits)
            infos = [entry.info for entry in entries]
            if not holds_single_frames(archive, infos):
                archive.close()
                return None
            # A frame left out would join the frames either side of it: refuse instead.
            lost = [s for s in skipped if kind_from_name(s.name) and "macOS" not in s.reason]
            if lost:
                raise JobError(
                    f"frame {lost[0].name!r} of the movie cannot be read: {lost[0].reason}; "
                    "fix it and submit the zip again"
                )
            return FramesZip(
                archive,
                infos,
                name=name,
                dimension_order=job.get(JobField.DIMENSION_ORDER) or None,
                channels=job.get(JobField.CHANNELS) or None,
                limits=limits.limits(),
                owns_archive=True,
            )
        except imaging.ImageError as exc:
            archive.close()
            raise JobError(str(exc)) from exc
        except BaseException:
            archive.close()
            raise


def tracked_as_one_movie(job: Job) -> bool:
    """A tracking zip's children are its frames' segmentation jobs (one movie), not movies."""
    first = job.get(JobField.CHILDREN).split(",", 1)[0]
    parsed = parse_job_key(first)
    return parsed is not None and parsed.job_type == SEGMENTATION


def _planes(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> int | None:
    """Planes of an image entry from its header (None: unreadable; its frame says why later)."""
    try:
        with archive.open(info) as src:
            header = imaging.probe(cast(BinaryIO, src), name=info.filename, size=info.file_size)
        order = imaging.resolve_dimension_order(header.shape, "infer", header.axes)
    except (imaging.ImageError, zipfile.BadZipFile, EOFError, OSError, RuntimeError):
        return None
    sizes = dict(zip(order, header.shape, strict=True))
    return int(np.prod([n for a, n in sizes.items() if a not in "YXCS"], dtype=np.int64))


def holds_single_frames(archive: zipfile.ZipFile, infos: Sequence[zipfile.ZipInfo]) -> bool:
    """Whether a tracking zip is one movie (every image a single 2-D plane) or a zip of movies
    (every image several planes); a mix is refused."""
    planes = {info.filename: _planes(archive, info) for info in infos}
    single = [name for name, n in planes.items() if n == 1]
    several = [name for name, n in planes.items() if n is not None and n > 1]
    if single and several:
        raise JobError(
            f"the zip mixes single frames ({single[0]!r}) with movies ({several[0]!r}); zip "
            "either the frames of one movie (one 2-D image per frame) or whole movies "
            "(multi-page TIFFs), and submit it again"
        )
    return not several
