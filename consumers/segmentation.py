"""The segmentation job type: an image in, a label image (and an overlay preview) out.

Each frame of the image (a 2D image is one frame; a z-stack or time series is one per plane)
goes through :func:`consumers.processing.pipeline.segment`: normalise, rescale to the model's
microns per pixel, tile, Predict over gRPC in batches, untile, deep watershed, restore the size.
The label TIFF and the overlay preview are written and uploaded as the job's
:class:`~consumers.base.Finish`, while the consumer already predicts its next job.
The job's ``dimension_order``, ``channels``, ``scale``, ``model_name`` and ``model_version`` are
honoured; anything wrong with them, or with the file, fails the job at once with a reason that
says what to do. Model-server trouble that may pass (unavailable, busy, timeouts) is retried.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import numpy as np

from consumers.base import Consumer, Finish, Job, JobError, Result
from consumers.metrics import PREDICT_RETRIES
from consumers.processing.overlay import overlay_png
from consumers.processing.pipeline import Predict, segment
from kiosk import imaging
from kiosk.jobs import JobField, Stage, Stages, Status, file_url
from kiosk.serving.client import InvalidRequest, ModelNotFound, PredictError, ServingClient

log = logging.getLogger(__name__)

MODEL_INPUT = "image"
# The pipeline's timings (see consumers.processing.pipeline.STAGES) as the job's time fields.
STAGE_TIMINGS: dict[Stage, tuple[str, ...]] = {
    Stages.PREPROCESS: ("normalize", "rescale", "tile"),
    Stages.PREDICT: ("predict",),
    Stages.POSTPROCESS: ("postprocess", "restore"),
}


class SegmentationConsumer(Consumer):
    job_type = "segmentation"

    def setup(self) -> None:
        self.client = ServingClient.from_settings(self.settings)

    def process(self, job: Job) -> Finish:
        model, version = self._model(job)
        image_mpp = self._scale(job)
        with job.input_file() as path, job.stage(Stages.PREPROCESS):
            loaded = self._open(job, path)
        pixels = loaded.pixels
        labels = np.zeros(pixels.shape[:3], dtype=np.int32)
        retries = 0

        def predict(batch: np.ndarray) -> dict[str, np.ndarray]:
            nonlocal retries
            prediction = self._predict(model, version, batch)
            retries += prediction.retries
            if prediction.retries:
                PREDICT_RETRIES.labels(job.queue).inc(prediction.retries)
            return _foreground_only(prediction.outputs)

        for index, frame in enumerate(pixels):
            timings: dict[str, float] = {}
            progress = _TileProgress(job, index, len(pixels))
            labels[index] = segment(
                frame,
                progress.wrap(predict),
                image_mpp=image_mpp,
                model_mpp=self.settings.model_mpp,
                tile_size=self.settings.tile_size,
                batch_size=self.settings.predict_batch_size,
                normalize_method=self.settings.normalization,
                timings=timings,
                progress=progress,
            )
            job.record_times(
                {
                    stage: sum(timings.get(name, 0.0) for name in names)
                    for stage, names in STAGE_TIMINGS.items()
                }
            )
        fields = {
            JobField.PREDICT_RETRIES: str(retries),
            JobField.DIM_ORDER: loaded.dimension_order,
            JobField.SCALE: f"{image_mpp:g}",
        }
        return Finish(lambda: self._save(job, loaded, labels, fields))

    def _save(
        self,
        job: Job,
        loaded: imaging.LoadedImage,
        labels: np.ndarray,
        fields: Mapping[str, str],
    ) -> Result:
        """The label TIFF and the overlay preview, encoded and uploaded: the job's finish,
        which runs while the consumer's next job predicts."""
        stem = PurePosixPath(job.get(JobField.ORIGINAL_NAME, "image")).stem or "image"
        with job.stage(Stages.POSTPROCESS):
            axes = _label_axes(loaded.frame_axes, labels)
            label_tiff = imaging.encode_labels_tiff(labels if axes else labels[0], axes=axes)
            preview_png = overlay_png(loaded.pixels[0], labels[0])
        output = job.put_output(f"{stem}_labels.tif", label_tiff)
        preview = job.put_output(f"{stem}_overlay.png", preview_png)
        return Result(
            output,
            {
                **fields,
                JobField.PREVIEW_URL: file_url(self.settings.public_url, preview),
                JobField.OBJECTS: str(_count_objects(labels)),
            },
        )

    # ------------------------------------------------------------------ job options

    def _model(self, job: Job) -> tuple[str, int | None]:
        name = job.get(JobField.MODEL_NAME) or self.settings.segmentation_model
        version_text = job.get(JobField.MODEL_VERSION) or str(
            self.settings.segmentation_model_version
        )
        try:
            version = int(version_text)
        except ValueError:
            raise JobError(
                f"model_version {version_text!r} is not a whole number: give a version such "
                "as 1, or leave it empty for the newest"
            ) from None
        return name, (version if version > 0 else None)

    def _scale(self, job: Job) -> float:
        """Microns per pixel of the input: the job's ``scale``, else the model's own."""
        text = job.get(JobField.SCALE).strip()
        if not text:
            return self.settings.model_mpp
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and 0.01 <= value <= 100):
            raise JobError(
                f"scale {text!r} is not a pixel size: give microns per pixel between 0.01 and "
                f"100 (the model works at {self.settings.model_mpp} um/px), or leave it empty"
            )
        return value

    def _open(self, job: Job, path: Path) -> imaging.LoadedImage:
        name = job.get(JobField.ORIGINAL_NAME) or path.name
        try:
            return imaging.open_image(
                path,
                name=name,
                dimension_order=job.get(JobField.DIMENSION_ORDER) or "infer",
                channels=job.get(JobField.CHANNELS) or None,
                required_channels=1,
                max_pixels=self.settings.max_image_pixels,
            )
        except imaging.ImageError as exc:
            raise JobError(str(exc)) from exc

    # ------------------------------------------------------------------ model server

    def _predict(self, model: str, version: int | None, batch: np.ndarray):
        try:
            return self.client.predict(model, {MODEL_INPUT: batch}, version=version, check=True)
        except (ModelNotFound, InvalidRequest) as exc:
            raise JobError(str(exc)) from exc
        except PredictError as exc:
            if not exc.transient:
                raise JobError(str(exc)) from exc
            raise


class _TileProgress:
    """Shows the pipeline's progress on the job: predicting from the first tile sent, progress
    by tiles done, post-processing once the last tile is back."""

    def __init__(self, job: Job, frame: int, frames: int) -> None:
        self.job = job
        self.frame = frame
        self.frames = frames
        self.predicting = False

    def wrap(self, predict: Predict) -> Predict:
        def wrapped(batch: np.ndarray) -> Mapping[str, np.ndarray]:
            if not self.predicting:
                self.predicting = True
                self.job.set_status(Status.PREDICTING)
            return predict(batch)

        return wrapped

    def __call__(self, done: int, total: int) -> None:
        progress = int(90 * (self.frame + done / total) / self.frames)
        if done == total:  # one write for both
            self.job.set_status(Status.POST_PROCESSING, progress)
        else:
            self.job.set_progress(progress)


def _foreground_only(outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keep only the foreground channel of a two-channel softmax: the background channel is its
    complement, and blending it back over a large image would cost a full-size buffer."""
    kept = dict(outputs)
    fgbg = kept.get("fgbg")
    if fgbg is not None and fgbg.ndim == 4 and fgbg.shape[-1] == 2:
        kept["fgbg"] = fgbg[..., 1:]
    return kept


def _label_axes(frame_axes: str, labels: np.ndarray) -> str | None:
    """Axes for the label TIFF: None for one plane, else the folded axes (Z, T, ...) + YX."""
    if labels.shape[0] == 1:
        return None
    axes = frame_axes if len(frame_axes) == 1 else "Z"
    return f"{axes}YX"


def _count_objects(labels: np.ndarray) -> int:
    """Objects over all planes (label ids are small and dense: a bincount beats a sort)."""
    return sum(int(np.count_nonzero(np.bincount(plane.ravel())[1:])) for plane in labels)
