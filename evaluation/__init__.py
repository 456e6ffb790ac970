"""Offline evaluation: generated images with exact ground truth (nuclei: :mod:`.synthetic`; whole
cells in four channels: :mod:`.cells`; movies: :mod:`.movies`), object quality metrics
(:mod:`.quality`), a classical baseline (:mod:`.baseline`) and the quality report
(``python -m evaluation``). Used by training and benchmarks; no service imports it."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class EvaluationError(RuntimeError):
    """Something the evaluation needs is missing or broken; the message says what to do."""
