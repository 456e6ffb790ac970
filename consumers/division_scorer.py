"""The learned division scorer: division candidates scored by a model on the model server.

The linker (:func:`consumers.processing.linking.link`) stays pure; this is the
:class:`~consumers.processing.linking.DivisionScorer` the tracking job type gives it when
``KIOSK_DIVISION_MODEL`` names a model, calling the model server over gRPC as the segmentation
job type does. :data:`DIVISION_MODEL` is the bundled model's contract, read by the consumer,
the benchmarks and the training alike.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from consumers.processing.contract import DivisionContract
from consumers.processing.linking import DIVISION_FEATURES, DivisionCandidates
from kiosk.serving.client import ModelNotFound, ServingClient

__all__ = ["DIVISION_MODEL", "DivisionModelMissing", "ServedDivisionScorer"]

DIVISION_MODEL = DivisionContract(name="DivisionScoring", features=DIVISION_FEATURES)
"""The bundled division scorer (``models/DivisionScoring``), trained on generated movies."""


class DivisionModelMissing(RuntimeError):
    """The division model named by the settings is not on the model server."""


class ServedDivisionScorer:
    """Scores each frame's candidates with one Predict call; remembers the version that
    answered and how many candidates it scored."""

    def __init__(
        self,
        client: ServingClient,
        model: str = DIVISION_MODEL.name,
        version: int | None = None,
        contract: DivisionContract = DIVISION_MODEL,
    ) -> None:
        self.client = client
        self.model = model
        self.version = version
        self.contract = contract
        self.answered: int | None = None
        self.scored = 0

    def check(self) -> None:
        """Fail now, with what to do, when the model server does not have the model."""
        try:
            self.client.metadata(self.model, self.version)
        except ModelNotFound as exc:
            raise DivisionModelMissing(
                f"division model {self.model!r} is not on the model server ({exc}); copy "
                f"models/{self.model}/ into the bucket's models/ and serve it, or set "
                "KIOSK_DIVISION_MODEL empty to score divisions by their features"
            ) from None

    def __call__(self, candidates: DivisionCandidates) -> NDArray[np.float64]:
        if candidates.patches is None:
            raise ValueError(
                "the division model looks at each cell's window: measure the frames with "
                f"patch_size={self.contract.patch_size}"
            )
        inputs = self.contract.inputs(candidates.patches, candidates.features)
        try:
            prediction = self.client.predict(self.model, inputs, version=self.version, check=True)
        except ModelNotFound as exc:
            raise DivisionModelMissing(
                f"division model {self.model!r} is not on the model server: {exc}"
            ) from None
        self.answered = prediction.model_version
        self.scored += len(candidates)
        return self.contract.probabilities(prediction.outputs)
