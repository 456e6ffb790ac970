"""Movies for tracking tests, and a stand-in for the segmentation job type that needs no model:
it labels the bright blobs of a frame (threshold, connected components)."""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Callable

import numpy as np
import tifffile
from scipy import ndimage as ndi

from consumers.base import Consumer, Job, Result
from consumers.movie_frames import cell_windows, cells_key, encode_cells
from consumers.processing import linking
from kiosk.keys import JobField
from kiosk.queue import JobQueue
from kiosk.storage import Bucket

THRESHOLD = 500


def moving_discs(
    frames: int = 6, shape: tuple[int, int] = (64, 80), cells: int = 3, seed: int = 0
) -> np.ndarray:
    """(T, Y, X) uint16: ``cells`` bright discs drifting a pixel or two a frame on a dim
    background, never touching."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    starts = [(16 + 30 * (i // 2), 14 + 30 * (i % 2)) for i in range(cells)]
    steps = rng.uniform(-1.5, 1.5, (cells, 2))
    movie = rng.integers(50, 150, (frames, *shape)).astype(np.uint16)
    for t in range(frames):
        for (y0, x0), (dy, dx) in zip(starts, steps, strict=True):
            disc = (yy - (y0 + dy * t)) ** 2 + (xx - (x0 + dx * t)) ** 2 < 6**2
            movie[t][disc] = 2000
    return movie


def label_frame(image: np.ndarray) -> np.ndarray:
    """What the stand-in segmentation finds: one label per bright blob, uint16."""
    labels, _ = ndi.label(np.asarray(image) > THRESHOLD)
    return labels.astype(np.uint16)


def tiff_bytes(array: np.ndarray, **kwargs: object) -> bytes:
    """TIFF bytes; grey pages unless told otherwise (tifffile would store a 3-frame movie as
    one RGB image)."""
    buffer = io.BytesIO()
    kwargs.setdefault("photometric", "minisblack")
    tifffile.imwrite(buffer, array, **kwargs)  # type: ignore[arg-type]
    return buffer.getvalue()


def frames_zip(movie: np.ndarray, name: Callable[[int], str] = lambda t: f"frame{t}.tif") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for t, frame in enumerate(movie):
            archive.writestr(name(t), tiff_bytes(frame))
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def trk_bytes(raw: np.ndarray, tracked: np.ndarray, several: bool = False) -> bytes:
    """A .trk (or .trks): DeepCell's tar.gz of raw.npy, tracked.npy and lineage(s).json."""
    lineage = ("lineages.json", b"[{}]") if several else ("lineage.json", b"{}")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in [
            ("raw.npy", npy_bytes(raw)),
            ("tracked.npy", npy_bytes(tracked)),
            lineage,
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def segment_waiting_frames(
    queue: JobQueue,
    bucket: Bucket,
    fail: dict[int, str] | None = None,
    consumer: str = "seg",
    tables: bool = False,
    limit: int | None = None,
) -> int:
    """Play the segmentation consumer in-process: label every queued frame job (or fail those
    whose frame index is in ``fail``, with that reason), with its cells table beside the labels
    when ``tables``; at most ``limit`` of them. Returns how many it ended."""
    ended = 0
    while (limit is None or ended < limit) and (
        claim := queue.claim("segmentation", consumer, 0.05)
    ) is not None:
        fields = claim.fields
        frame = int(fields[JobField.ORIGINAL_NAME].rsplit("-", 1)[1].split(".")[0])
        if fail and frame in fail:
            queue.fail(claim, consumer, fail[frame])
        else:
            image = tifffile.imread(io.BytesIO(bucket.get_bytes(fields[JobField.INPUT_FILE_NAME])))
            parsed = claim.key.rsplit(":", 1)[1]
            key = f"output/{fields[JobField.PARENT].rsplit(':', 1)[1]}/{parsed}/labels.tif"
            labels = label_frame(image)
            bucket.put_bytes(key, tiff_bytes(labels, compression="zlib"))
            if tables:
                windows = cell_windows(fields.get(JobField.CELL_WINDOWS, ""))
                cells = linking.measure(labels, image, 0, windows)
                bucket.put_bytes(cells_key(key), encode_cells(cells, labels.shape))
            queue.finish(claim, consumer, {JobField.OUTPUT_FILE_NAME: key})
        ended += 1
    return ended


class ThresholdSegmentation(Consumer):
    """The stand-in for ``segmentation`` in process tests (KIOSK_JOB_TYPE_PLUGINS)."""

    def process(self, job: Job) -> Result:
        with job.input_file() as path:
            image = tifffile.imread(path)
        key = job.put_output("labels.tif", tiff_bytes(label_frame(image), compression="zlib"))
        return Result(key)
