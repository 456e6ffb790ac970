"""The mesmer job type: whole cells and their nuclei from two channels, Mesmer's task.

Clients may also submit it as ``multiplex``, the original's name. The image carries a nuclear
stain and a membrane (or fluorescent cytoplasm) stain; ``channels`` names them in that order
(``channels=2,0``: the nuclear stain is channel 2, the membrane channel 0), and an image of
exactly two channels may leave it out (nuclear first). ``compartment`` chooses the labels:

* ``whole-cell`` (the default, ``KIOSK_MESMER_COMPARTMENT``): one label per cell;
* ``nuclear``: one label per nucleus;
* ``both``: a two-channel label TIFF, whole cells in channel 0 and nuclei in channel 1, as
  Mesmer's ``compartment='both'`` gives.

Everything else is the segmentation job type's, run by the same pipeline: stacks (one label
image per plane), ``scale``, tiling, previews (cell outlines in magenta, nuclei in green), zips.
The served model is ``models/WholeCellSegmentation`` (``WHOLE_CELL_MODEL``), each compartment
post-processed with its own tuned settings.
"""

from __future__ import annotations

from typing import ClassVar, cast

import numpy as np
from pydantic import Field

from consumers import imaging
from consumers.base import Job, JobError
from consumers.processing.contract import WHOLE_CELL_MODEL, Compartment, ModelContract
from consumers.processing.overlay import overlay_layers_png
from consumers.processing.pipeline import Postprocess
from consumers.segmentation import ModelPlan, PipelineSettings, SegmentationConsumer
from kiosk.keys import JobField
from kiosk.options import COMPARTMENTS, OptionError, parse_compartment

__all__ = ["MesmerConsumer", "MesmerSettings"]

BOTH = "both"
CELL_OUTLINE = (255, 64, 255)
NUCLEUS_OUTLINE = (64, 255, 96)


class MesmerSettings(PipelineSettings):
    """The mesmer job type's own settings (its tiling and limits are segmentation's)."""

    service_name: ClassVar[str] = "mesmer"

    mesmer_model: str = Field(
        WHOLE_CELL_MODEL.name,
        description="Model the mesmer job type runs when a job names none: two channels in "
        "(nuclear, membrane or cytoplasm), whole-cell and nuclear heads out.",
    )
    mesmer_model_version: int = Field(
        0, ge=0, description="Version of that model (0: the newest the model server has)."
    )
    mesmer_compartment: str = Field(
        "whole-cell",
        pattern="^(" + "|".join(COMPARTMENTS) + ")$",
        description="Labels a mesmer job returns when it names no compartment: whole-cell, "
        "nuclear or both (a two-channel label TIFF: cells, then nuclei).",
    )


class MesmerConsumer(SegmentationConsumer):
    """Serves the ``mesmer`` queue (jobs submitted as ``multiplex`` too)."""

    job_type = "mesmer"
    settings_class = MesmerSettings

    @property
    def mesmer_options(self) -> MesmerSettings:
        return cast(MesmerSettings, self.job_settings)

    def plan(self, job: Job) -> ModelPlan:
        options = self.mesmer_options
        name = job.get(JobField.MODEL_NAME) or options.mesmer_model
        default = options.mesmer_model_version or None if name == options.mesmer_model else None
        return ModelPlan(
            WHOLE_CELL_MODEL, name, self._version(job, default), job.get(JobField.CHANNELS) or None
        )

    def compartment(self, job: Job) -> str:
        try:
            chosen = parse_compartment(job.get(JobField.COMPARTMENT))
        except OptionError as exc:
            raise JobError(str(exc)) from None
        return chosen or self.mesmer_options.mesmer_compartment

    def postprocess_for(self, job: Job, contract: ModelContract) -> Postprocess:
        chosen = self._compartment_of(job, contract)
        return contract.postprocess_stacked if chosen is None else chosen.postprocess

    def outputs_for(self, job: Job, contract: ModelContract) -> tuple[str, ...]:
        chosen = self._compartment_of(job, contract)
        return contract.output_names if chosen is None else chosen.heads.names

    def _compartment_of(self, job: Job, contract: ModelContract) -> Compartment | None:
        """The contract's compartment the job asks for; None for ``both``."""
        chosen = self.compartment(job)
        if chosen == BOTH:
            return None
        return next(c for c in contract.compartments if c.name == chosen)

    def channel_advice(self, plan: ModelPlan) -> str:
        return (
            "A mesmer job needs two channels: the nuclear stain, then the membrane or "
            "cytoplasm stain; name them with channels='NUCLEAR,MEMBRANE' (e.g. channels='0,1')."
        )

    def preview(self, job: Job, loaded: imaging.LoadedImage, labels: np.ndarray) -> bytes:
        """The membrane channel in grey, cells outlined in magenta and nuclei in green."""
        first = labels[0]
        if first.ndim == 3:
            layers = [(first[..., 0], CELL_OUTLINE), (first[..., 1], NUCLEUS_OUTLINE)]
        elif self.compartment(job) == "nuclear":
            layers = [(first, NUCLEUS_OUTLINE)]
        else:
            layers = [(first, CELL_OUTLINE)]
        return overlay_layers_png(loaded.pixels[0], layers, channel=1)
