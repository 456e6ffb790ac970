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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, ClassVar, cast

import numpy as np
from pydantic import Field

from consumers import imaging
from consumers.base import Consumer, Finish, Job, JobError, Result
from consumers.metrics import PREDICT_RETRIES
from consumers.movie_frames import (
    LABELS_SUFFIX,
    cell_windows,
    cells_key,
    encode_cells,
    is_movie_frame,
)
from consumers.processing import linking
from consumers.processing.contract import (
    BUNDLED_REACH,
    CYTOPLASM_MODEL,
    LEAN_SIGNATURE,
    WHOLE_CELL_MODEL,
    ModelContract,
)
from consumers.processing.overlay import overlay_png
from consumers.processing.pipeline import Postprocess, Predict, segment_frames
from kiosk.jobs import NO_PREVIEW, Stage, Stages
from kiosk.keys import JobField, Status, file_url
from kiosk.options import OptionError, parse_channel_slots, parse_scale
from kiosk.serving.client import (
    DEFAULT_SIGNATURE,
    InvalidRequest,
    ModelNotFound,
    PredictError,
    Prediction,
    ServingClient,
)
from kiosk.settings import JobTypeSettings

log = logging.getLogger(__name__)

NUCLEAR_MODEL = ModelContract(
    name="NuclearSegmentation",
    mpp=0.65,
    size_multiple=16,
    reach=BUNDLED_REACH,
    lean_signature=LEAN_SIGNATURE,
    postprocessing=MappingProxyType(
        {
            "radius": 5,
            "maxima_threshold": 0.2,
            "interior_threshold": 0.01,
            "fgbg_threshold": 0.6,
            "interior_smooth": 0.0,
            "maxima_smooth": 2.0,
            "small_objects_threshold": 0,
        }
    ),
)
"""The bundled nuclear model (models/NuclearSegmentation): input ``image``, float32
(batch, y, x, 1); heads ``inner_distance``, ``outer_distance`` and ``fgbg`` (softmax, channel 1
the foreground); trained on nuclei at 0.65 um/px. The post-processing settings are those tuned
on held-out generated images (models/NuclearSegmentation/training.json)."""

BUNDLED_CONTRACTS = (NUCLEAR_MODEL, WHOLE_CELL_MODEL, CYTOPLASM_MODEL)
"""Every bundled deep-watershed model's contract."""

CONTRACTS: dict[str, ModelContract] = {c.name: c for c in (NUCLEAR_MODEL, CYTOPLASM_MODEL)}
"""The bundled single-channel models by name: a job naming one runs under its contract (its
post-processing settings); any other name runs under the slot's (the nuclear model's)."""

# The pipeline's timings (see consumers.processing.pipeline.STAGES) as the job's time fields.
STAGE_TIMINGS: dict[Stage, tuple[str, ...]] = {
    Stages.PREPROCESS: ("normalize", "rescale", "tile"),
    Stages.PREDICT: ("predict",),
    Stages.POSTPROCESS: ("postprocess", "restore"),
}


class PipelineSettings(JobTypeSettings):
    """Settings of every job type that runs the segmentation pipeline (segmentation, mesmer):
    one tiling, batching, normalisation and size limit for all of them."""

    tile_size: int = Field(
        1024,
        ge=256,
        description="Side of the square tiles images larger than whole_image_pixels are cut "
        "into, in pixels (they overlap by twice the model's receptive field).",
    )
    whole_image_pixels: int = Field(
        2048 * 2048,
        ge=0,
        description="Images up to this many pixels (at the model's pixel size) go to the model "
        "in one piece; larger ones are tiled (0: always tile).",
    )
    predict_batch_size: int = Field(4, ge=1, description="Tiles sent in one Predict call.")
    lean_wire: bool = Field(
        True,
        description="Ask the model server for the model's float16 signature (half the bytes "
        "in, 3/8 out) when the served version has one, and only the heads the job uses.",
    )
    normalization: str = Field(
        "percentile",
        pattern="^(percentile|clahe)$",
        description="How images are normalised before the model: percentile or clahe.",
    )
    max_image_pixels: int = Field(
        8192 * 8192,
        ge=1,
        description="Largest image plane (height x width) a segmentation job takes; larger ones "
        "fail with a message before they are decoded.",
    )

    def pipeline_options(self, contract: ModelContract) -> dict[str, Any]:
        """``pipeline.segment``'s keywords for a model under these settings: the one place the
        consumer, the evaluation and the benchmarks take its tiling and normalisation from."""
        return {
            "model_mpp": contract.mpp,
            "size_multiple": contract.size_multiple,
            "reach": contract.reach,
            "tile_size": self.tile_size,
            "whole_pixels": self.whole_image_pixels,
            "batch_size": self.predict_batch_size,
            "normalize_method": self.normalization,
        }


class SegmentationSettings(PipelineSettings):
    """The segmentation job type's own settings."""

    service_name: ClassVar[str] = "segmentation"

    segmentation_model: str = Field(
        NUCLEAR_MODEL.name,
        description="Model the segmentation job type runs when a job names none.",
    )
    segmentation_model_version: int = Field(
        0, ge=0, description="Version of that model (0: the newest the model server has)."
    )
    cytoplasm_model: str = Field(
        CYTOPLASM_MODEL.name,
        description="Model a segmentation job runs when its channels fill the cytoplasm slot "
        "(channels=',0'): whole cells from a fluorescent cytoplasm or brightfield channel.",
    )


@dataclass(frozen=True)
class ModelPlan:
    """What one job runs: the model's contract, its name and version on the model server, and
    the channels to read from the image (the job's ``channels`` or a slot's one channel)."""

    contract: ModelContract
    name: str
    version: int | None
    channels: str | None


class SegmentationConsumer(Consumer):
    job_type = "segmentation"
    settings_class: ClassVar[type[PipelineSettings]] = SegmentationSettings

    def setup(self) -> None:
        self.client = ServingClient.from_settings(self.settings)

    @property
    def options(self) -> PipelineSettings:
        return cast(PipelineSettings, self.job_settings)

    # ------------------------------------------------------------ what a job type changes

    def plan(self, job: Job) -> ModelPlan:
        """The model a job runs, chosen the way the original chose one: by the channel slot
        its ``channels`` fill (``0`` or ``0,,``: the nuclear model on channel 0; ``,0``: the
        cytoplasm model on channel 0), or by the model the job names."""
        options = cast(SegmentationSettings, self.job_settings)
        channels = job.get(JobField.CHANNELS) or None
        try:
            slots = parse_channel_slots(channels)
        except OptionError as exc:
            raise JobError(str(exc)) from None
        contract, name, version = NUCLEAR_MODEL, options.segmentation_model, None
        if slots is not None:
            nuclear, cytoplasm, *rest = (*slots, None)
            if any(slot is not None for slot in rest):
                raise JobError(
                    f"channels {channels!r} fills a third slot: a segmentation job has two, "
                    "nuclear then cytoplasm (e.g. '0,' or ',0')"
                )
            if nuclear is not None and cytoplasm is not None:
                raise JobError(
                    f"channels {channels!r} fills both the nuclear and the cytoplasm slot: for "
                    f"whole cells from both channels submit a mesmer job with "
                    f"channels='{nuclear},{cytoplasm}'; else leave one slot empty"
                )
            if cytoplasm is not None:
                contract, name, channels = CYTOPLASM_MODEL, options.cytoplasm_model, str(cytoplasm)
            else:
                channels = None if nuclear is None else str(nuclear)
        if name == options.segmentation_model:
            version = options.segmentation_model_version or None
        named = job.get(JobField.MODEL_NAME)
        if named:
            contract, name, version = CONTRACTS.get(named, contract), named, None
        return ModelPlan(contract, name, self._version(job, version), channels)

    def postprocess_for(self, job: Job, contract: ModelContract) -> Postprocess:
        """Labels from the blended heads: (y, x), or (y, x, K) for K label images."""
        return contract.postprocess

    def outputs_for(self, job: Job, contract: ModelContract) -> tuple[str, ...]:
        """The heads that post-processing reads: all the model has."""
        return contract.output_names

    def channel_advice(self, plan: ModelPlan) -> str:
        """Said after a channel error: what the model needs."""
        return ""

    def preview(self, job: Job, loaded: imaging.LoadedImage, labels: np.ndarray) -> bytes:
        """The job's preview PNG of its first plane."""
        return overlay_png(loaded.pixels[0], labels[0])

    # ------------------------------------------------------------------ the job

    def process(self, job: Job) -> Finish:
        plan = self.plan(job)
        contract = plan.contract
        image_mpp = self._scale(job, contract)
        postprocess = self.postprocess_for(job, contract)
        outputs = self.outputs_for(job, contract)
        with job.input_file() as path, job.stage(Stages.PREPROCESS):
            loaded = self._open(job, path, plan)
        retries = 0

        def predict(batch: np.ndarray) -> dict[str, np.ndarray]:
            nonlocal retries
            prediction = self._predict(plan, batch, outputs)
            retries += prediction.retries
            if prediction.retries:
                PREDICT_RETRIES.labels(job.queue).inc(prediction.retries)
            return contract.foreground_only(prediction.outputs)

        progress = _TileProgress(job, len(loaded.pixels))
        labels = segment_frames(
            loaded.pixels,
            progress.wrap(predict),
            image_mpp=image_mpp,
            postprocess=postprocess,
            progress=progress,
            **self.options.pipeline_options(contract),
            frame_done=lambda index, timings: job.record_times(
                {
                    stage: sum(timings.get(name, 0.0) for name in names)
                    for stage, names in STAGE_TIMINGS.items()
                }
            ),
        )
        fields: dict[str, str] = {
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
        which runs while the consumer's next job predicts. A movie's frame keeps its cells
        table instead of a preview: the movie shows its own animated one, never a frame's; a
        zip's image past the first ``ZIP_PREVIEWS`` gets none."""
        stem = PurePosixPath(job.get(JobField.ORIGINAL_NAME, "image")).stem or "image"
        with job.stage(Stages.POSTPROCESS):
            planes, axes = _label_planes(loaded.frame_axes, labels)
            label_tiff = imaging.encode_labels_tiff(planes, axes=axes)
            table = _movie_frame_cells(job, loaded, labels)
            drawn = table is None and job.get(JobField.PREVIEW) != NO_PREVIEW
            preview_png = self.preview(job, loaded, labels) if drawn else None
        output = job.put_output(f"{stem}{LABELS_SUFFIX}", label_tiff)
        results = {**fields, JobField.OBJECTS: str(_count_objects(labels))}
        if table is not None:
            job.put_output(PurePosixPath(cells_key(output)).name, table)
        if preview_png is not None:
            preview = job.put_output(f"{stem}_overlay.png", preview_png)
            results[JobField.PREVIEW_URL] = file_url(self.settings.public_url, preview)
        return Result(output, results)

    # ------------------------------------------------------------------ job options

    def _version(self, job: Job, default: int | None) -> int | None:
        """The job's ``model_version``, else ``default`` (None: the newest)."""
        version_text = job.get(JobField.MODEL_VERSION)
        if not version_text:
            return default
        try:
            version = int(version_text)
        except ValueError:
            raise JobError(
                f"model_version {version_text!r} is not a whole number: give a version such "
                "as 1, or leave it empty for the newest"
            ) from None
        return version if version > 0 else None

    def _scale(self, job: Job, contract: ModelContract) -> float:
        """Microns per pixel of the input: the job's ``scale``, else the model's own."""
        try:
            scale = parse_scale(job.get(JobField.SCALE))
        except OptionError as exc:
            raise JobError(f"{exc} (the model works at {contract.mpp} um/px)") from None
        return contract.mpp if scale is None else scale

    def _open(self, job: Job, path: Path, plan: ModelPlan) -> imaging.LoadedImage:
        name = job.get(JobField.ORIGINAL_NAME) or path.name
        try:
            return imaging.open_image(
                path,
                name=name,
                dimension_order=job.get(JobField.DIMENSION_ORDER) or "infer",
                channels=plan.channels,
                required_channels=plan.contract.input_channels,
                max_pixels=self.options.max_image_pixels,
            )
        except imaging.ChannelError as exc:
            raise JobError(f"{exc} {self.channel_advice(plan)}".strip()) from exc
        except imaging.ImageError as exc:
            raise JobError(str(exc)) from exc

    # ------------------------------------------------------------------ model server

    def _predict(self, plan: ModelPlan, batch: np.ndarray, outputs: Sequence[str]) -> Prediction:
        try:
            signature = self._signature(plan)
            return self.client.predict(
                plan.name,
                plan.contract.inputs(batch, lean=signature != DEFAULT_SIGNATURE),
                version=plan.version,
                signature_name=signature,
                output_filter=outputs if self.options.lean_wire else None,
                check=True,
            )
        except (ModelNotFound, InvalidRequest) as exc:
            raise JobError(str(exc)) from exc
        except PredictError as exc:
            if not exc.transient:
                raise JobError(str(exc)) from exc
            raise

    def _signature(self, plan: ModelPlan) -> str:
        """The contract's lean signature where the served version has it (the model server's
        metadata, cached by the client), else ``serving_default``."""
        lean = plan.contract.lean_signature
        if not (self.options.lean_wire and lean):
            return DEFAULT_SIGNATURE
        served = self.client.metadata(plan.name, plan.version).signatures
        return lean if lean in served else DEFAULT_SIGNATURE


class _TileProgress:
    """Shows the pipeline's progress on the job: predicting from a frame's first tile sent,
    progress by tiles done over all frames, post-processing once a frame's last tile is back."""

    def __init__(self, job: Job, frames: int) -> None:
        self.job = job
        self.frames = frames
        self.predicting = False

    def wrap(self, predict: Predict) -> Predict:
        def wrapped(batch: np.ndarray) -> Mapping[str, np.ndarray]:
            if not self.predicting:
                self.predicting = True
                self.job.set_status(Status.PREDICTING)
            return predict(batch)

        return wrapped

    def __call__(self, frame: int, done: int, total: int) -> None:
        progress = int(90 * (frame + done / total) / self.frames)
        if done == total:  # one write for both
            self.job.set_status(Status.POST_PROCESSING, progress)
            self.predicting = False
        else:
            self.job.set_progress(progress)


def _movie_frame_cells(job: Job, loaded: imaging.LoadedImage, labels: np.ndarray) -> bytes | None:
    """A movie frame's cells table, measured from the labels and image in hand, so that the
    movie's fan-in need not decode and measure the frame again; None for any other job."""
    if not is_movie_frame(job.get(JobField.PARENT)) or labels.shape[0] != 1:
        return None
    image = loaded.pixels[0, ..., 0]
    cells = linking.measure(labels[0], image, 0, cell_windows(job.get(JobField.CELL_WINDOWS)))
    return encode_cells(cells, (int(labels.shape[1]), int(labels.shape[2])))


def _label_planes(frame_axes: str, labels: np.ndarray) -> tuple[np.ndarray, str]:
    """The label TIFF's array and axes: (Y, X) for one plane, the folded axes (Z, T, ...)
    before YX for several; a C axis for several label images per plane (mesmer's ``both``)."""
    planes = labels if labels.ndim == 3 else np.moveaxis(labels, -1, 1)  # (F, [C,] Y, X)
    channels = "C" if labels.ndim == 4 else ""
    if labels.shape[0] == 1:
        return planes[0], f"{channels}YX"
    axes = frame_axes if len(frame_axes) == 1 else "Z"
    return planes, f"{axes}{channels}YX"


def _count_objects(labels: np.ndarray) -> int:
    """Objects over all planes, of the first label image where a plane has several (a mesmer
    job's cells); label ids are small and dense: a bincount beats a sort."""
    first = labels if labels.ndim == 3 else labels[..., 0]
    return sum(int(np.count_nonzero(np.bincount(plane.ravel())[1:])) for plane in first)
