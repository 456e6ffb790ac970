"""What a served model takes and gives: the one description that the job type serving it, the
pipeline, evaluation and training all read. :class:`ModelContract` describes a deep-watershed
segmentation model, :class:`DivisionContract` a model scoring division candidates.

A job type declares its model's :class:`ModelContract` beside itself (the segmentation job
type: ``consumers.segmentation.NUCLEAR_MODEL``). Training exports a SavedModel whose signature
uses these names; the consumer sends its input under ``input`` and reads the heads by name; the
pipeline rescales to ``mpp`` and pads tiles to ``size_multiple``; post-processing finds the
three maps through :class:`Heads`.

A model may segment several compartments (whole cells and their nuclei, like Mesmer): each is a
:class:`Compartment`, its own three heads with its own post-processing settings, and
:meth:`ModelContract.postprocess_compartments` gives one label image per compartment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "BUNDLED_REACH",
    "CYTOPLASM_MODEL",
    "LEAN_SIGNATURE",
    "WHOLE_CELL_MODEL",
    "Compartment",
    "DivisionContract",
    "Heads",
    "ModelContract",
]


@dataclass(frozen=True)
class Heads:
    """The output heads of a deep-watershed model; the defaults are DeepCell's names."""

    inner: str = "inner_distance"
    """(1 channel) peaks at each object's centre: one marker per object."""
    outer: str = "outer_distance"
    """(1 channel) distance to the object's own boundary: the watershed's landscape."""
    foreground: str = "fgbg"
    """(2 channels) softmax over background and foreground."""
    foreground_channel: int = 1
    """The foreground's channel in :attr:`foreground`."""

    @property
    def names(self) -> tuple[str, str, str]:
        return (self.inner, self.outer, self.foreground)

    def foreground_only(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Keep only the foreground channel of a batch's (n, y, x, 2) softmax: the background is
        its complement, and blending it back over a large image would cost a full-size buffer."""
        kept = dict(outputs)
        fg = kept.get(self.foreground)
        if fg is not None and fg.ndim == 4 and fg.shape[-1] == 2:
            c = self.foreground_channel
            kept[self.foreground] = fg[..., c : c + 1]
        return kept

    def planes(
        self, maps: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(inner, outer, foreground or None) as (y, x) planes from blended (y, x, K) maps,
        with or without :meth:`foreground_only` applied before blending."""
        fg = maps.get(self.foreground)
        if fg is not None and fg.ndim == 3:
            fg = fg[..., self.foreground_channel if fg.shape[-1] == 2 else 0]
        return maps[self.inner][..., 0], maps[self.outer][..., 0], fg

    def postprocess(self, maps: Mapping[str, np.ndarray], **params: Any) -> NDArray[np.int32]:
        """Deep watershed on the heads; ``params`` go to ``deep_watershed``."""
        from consumers.processing.deep_watershed import deep_watershed  # a sibling's module

        return deep_watershed(*self.planes(maps), **params)


LEAN_SIGNATURE = "lean"
"""The bundled models' float16 signature (see :attr:`ModelContract.lean_signature`)."""

BUNDLED_REACH = 96
"""The receptive field of the bundled models' U-Net (models/training/model.py), in pixels each
side: on its 16-px grid, a crop with 96 px of context around a window gives the whole image's
outputs there to float rounding (80 px: within 7e-4; 64 px: within 0.016)."""


def _frozen(params: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(params))


@dataclass(frozen=True)
class Compartment:
    """One thing a model segments (``whole-cell``, ``nuclear``): its heads and the
    ``deep_watershed`` settings tuned for them."""

    name: str
    heads: Heads = field(default_factory=Heads)
    postprocessing: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def postprocess(self, maps: Mapping[str, np.ndarray]) -> NDArray[np.int32]:
        """This compartment's labels from blended heads, with its own settings."""
        return self.heads.postprocess(maps, **self.postprocessing)


@dataclass(frozen=True)
class ModelContract:
    """A model's signature and the pixel size it learned at."""

    name: str
    """The model's name in the bucket (``models/{name}/{version}/``): the job type's default."""
    mpp: float
    """Microns per pixel of the images the model learned from; a job's ``scale`` rescales to it."""
    input: str = "image"
    """The signature's one input: float32 (batch, y, x, input_channels)."""
    input_channels: int = 1
    heads: Heads = field(default_factory=Heads)
    size_multiple: int = 16
    """Height and width the network takes must be multiples of this (its downsampling)."""
    lean_signature: str | None = None
    """A second signature taking :attr:`input` as float16 and giving every head as float16,
    foregrounds as their one foreground channel (models/training/lean_signature.py): what
    consumers ask for when the served version has it (None: only ``serving_default``)."""
    reach: int | None = None
    """Pixels of context each side that the network's outputs depend on (its receptive field):
    tiles overlap by twice this, on the network's grid (None: unknown, a generic overlap)."""
    postprocessing: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """``deep_watershed`` settings tuned for this model (empty: the function's defaults)."""
    compartment: str = "nuclear"
    """What :attr:`heads` segment: the model's first (or only) compartment."""
    also: tuple[Compartment, ...] = ()
    """Further compartments with heads of their own (a whole-cell model's nuclei)."""

    def __post_init__(self) -> None:
        names = [c.name for c in self.compartments]
        if len(set(names)) != len(names):
            raise ValueError(f"compartment names must differ, got {names}")
        heads = [h for c in self.compartments for h in c.heads.names]
        if len(set(heads)) != len(heads):
            raise ValueError(f"head names must differ between compartments, got {heads}")

    def inputs(self, batch: np.ndarray, *, lean: bool = False) -> dict[str, np.ndarray]:
        """A Predict request's inputs for a normalised batch: float32 for ``serving_default``,
        float16 for :attr:`lean_signature` (``lean``)."""
        if lean and self.lean_signature is None:
            raise ValueError(f"the contract of {self.name} declares no lean signature")
        return {self.input: batch.astype(np.float16 if lean else np.float32, copy=False)}

    @property
    def compartments(self) -> tuple[Compartment, ...]:
        """Every compartment, the first one being :attr:`heads` with :attr:`postprocessing`."""
        first = Compartment(self.compartment, self.heads, self.postprocessing)
        return (first, *self.also)

    @property
    def output_names(self) -> tuple[str, ...]:
        """Every head the SavedModel's signature gives, compartment by compartment."""
        return tuple(name for c in self.compartments for name in c.heads.names)

    def foreground_only(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """:meth:`Heads.foreground_only` for every compartment's foreground head."""
        kept = dict(outputs)
        for c in self.compartments:
            kept = c.heads.foreground_only(kept)
        return kept

    def postprocess(self, maps: Mapping[str, np.ndarray]) -> NDArray[np.int32]:
        """Labels from blended heads, with this model's post-processing settings (the first
        compartment's, for a model with several)."""
        return self.heads.postprocess(maps, **self.postprocessing)

    def postprocess_compartments(
        self, maps: Mapping[str, np.ndarray]
    ) -> dict[str, NDArray[np.int32]]:
        """One label image per compartment (``{"whole-cell": ..., "nuclear": ...}``), each
        from its own heads and settings; labels are numbered per compartment."""
        return {c.name: c.postprocess(maps) for c in self.compartments}

    def postprocess_stacked(self, maps: Mapping[str, np.ndarray]) -> NDArray[np.int32]:
        """Every compartment's labels as one (y, x, K) array, in :attr:`compartments` order
        (a mesmer job's ``both``: cells, then nuclei)."""
        return np.stack(list(self.postprocess_compartments(maps).values()), axis=-1)


WHOLE_CELL_MODEL = ModelContract(
    name="WholeCellSegmentation",
    mpp=0.65,
    input_channels=2,
    size_multiple=16,
    reach=BUNDLED_REACH,
    lean_signature=LEAN_SIGNATURE,
    heads=Heads(
        inner="whole_cell_inner_distance",
        outer="whole_cell_outer_distance",
        foreground="whole_cell_fgbg",
    ),
    compartment="whole-cell",
    postprocessing=_frozen(
        {
            "radius": 3,
            "maxima_threshold": 0.4,
            "interior_threshold": 0.1,
            "fgbg_threshold": 0.6,
            "interior_smooth": 1.0,
            "maxima_smooth": 0.0,
            "small_objects_threshold": 30,
        }
    ),
    also=(
        Compartment(
            "nuclear",
            Heads(
                inner="nuclear_inner_distance",
                outer="nuclear_outer_distance",
                foreground="nuclear_fgbg",
            ),
            _frozen(
                {
                    "radius": 3,
                    "maxima_threshold": 0.3,
                    "interior_threshold": 0.01,
                    "fgbg_threshold": 0.4,
                    "interior_smooth": 0.0,
                    "maxima_smooth": 0.0,
                    "small_objects_threshold": 10,
                }
            ),
        ),
    ),
)
"""The bundled whole-cell model (models/WholeCellSegmentation), Mesmer's task: input ``image``,
float32 (batch, y, x, 2), channel 0 the nuclear stain and channel 1 the membrane or cytoplasm
stain; three heads per compartment (``whole_cell_*`` and ``nuclear_*``: inner distance, outer
distance, fgbg softmax with channel 1 the foreground); trained on cells at 0.65 um/px. Each
compartment's post-processing settings are those tuned on held-out generated images
(models/WholeCellSegmentation/training.json)."""


CYTOPLASM_MODEL = ModelContract(
    name="CytoplasmSegmentation",
    mpp=0.65,
    input_channels=1,
    size_multiple=16,
    reach=BUNDLED_REACH,
    lean_signature=LEAN_SIGNATURE,
    compartment="whole-cell",
    postprocessing=_frozen(
        {
            "radius": 6,
            "maxima_threshold": 0.4,
            "interior_threshold": 0.01,
            "fgbg_threshold": 0.7,
            "interior_smooth": 0.5,
            "maxima_smooth": 0.5,
            "small_objects_threshold": 0,
        }
    ),
)
"""The bundled cytoplasm model (models/CytoplasmSegmentation): whole cells from one channel, a
fluorescent cytoplasm stain or a brightfield image; input ``image`` float32 (batch, y, x, 1),
DeepCell's three heads; trained on cells at 0.65 um/px. The post-processing settings are those
tuned on held-out generated images (models/CytoplasmSegmentation/training.json)."""


@dataclass(frozen=True)
class DivisionContract:
    """A division scorer's signature: one frame's candidates in, one probability each out.

    ``patches`` is float32 (batch, P, P, 6): the mother's, the larger and the smaller
    daughter's :attr:`linking.Cells.patches <consumers.processing.linking.Cells>` (image, mask)
    side by side, scaled to [0, 1]; ``features`` float32 (batch, len(features)) the scalar cues
    in :attr:`features` order; the output (batch, 1) the probability of a true division.
    """

    name: str
    """The model's name in the bucket (``models/{name}/{version}/``)."""
    features: tuple[str, ...]
    """The scalar cues, in order: ``linking.DIVISION_FEATURES`` when the model was trained."""
    patch_size: int = 32
    """Side of each cell's window (px at the movie's pixel size); measure frames with it."""
    patches_input: str = "patches"
    features_input: str = "features"
    output: str = "division"

    @property
    def patch_channels(self) -> int:
        """Mother, larger daughter, smaller daughter; image and mask each."""
        return 6

    def inputs(self, patches: np.ndarray, features: np.ndarray) -> dict[str, np.ndarray]:
        """The request for candidates' (n, 3, P, P, 2) uint8 patches and (n, F) features."""
        n = len(features)
        size = self.patch_size
        if patches.shape != (n, 3, size, size, 2):
            raise ValueError(
                f"division candidates' patches must be ({n}, 3, {size}, {size}, 2): measure the "
                f"frames with patch_size={size}; got {patches.shape}"
            )
        if features.shape != (n, len(self.features)):
            raise ValueError(
                f"division candidates must have {len(self.features)} features each "
                f"({', '.join(self.features)}); got shape {features.shape}"
            )
        stacked = np.moveaxis(patches, 1, 3).reshape(n, size, size, self.patch_channels)
        return {
            self.patches_input: stacked.astype(np.float32) / 255.0,
            self.features_input: np.asarray(features, np.float32),
        }

    def probabilities(self, outputs: Mapping[str, np.ndarray]) -> NDArray[np.float64]:
        """The (n,) probabilities from a prediction's outputs."""
        return np.asarray(outputs[self.output], np.float64).reshape(-1)
