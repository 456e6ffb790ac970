"""A movie frame's cells table: written by its segmentation job, read by the movie's fan-in."""

from __future__ import annotations

import numpy as np
import pytest

from consumers.division_scorer import DIVISION_MODEL
from consumers.movie_frames import (
    cell_windows,
    cells_key,
    decode_cells,
    encode_cells,
    is_movie_frame,
)
from consumers.processing import linking
from tests.support.tracking import label_frame, moving_discs

PATCH = DIVISION_MODEL.patch_size


def frame() -> tuple[np.ndarray, np.ndarray]:
    image = moving_discs(1)[0]
    return label_frame(image), image


def test_a_table_read_back_is_the_frame_measured_at_its_index() -> None:
    labels, image = frame()
    measured = linking.measure(labels, image, 7, PATCH)
    cells, shape = decode_cells(encode_cells(measured, labels.shape), 7, PATCH)
    assert shape == labels.shape and cells.frame == 7 and len(cells) == len(measured)
    for name in ("labels", "centroids", "areas", "intensities", "roundness", "edge", "patches"):
        np.testing.assert_array_equal(getattr(cells, name), getattr(measured, name))


def test_a_table_without_the_windows_asked_for_is_refused_so_the_frame_is_measured() -> None:
    labels, image = frame()
    data = encode_cells(linking.measure(labels, image), labels.shape)
    assert decode_cells(data, 0, 0)[0].patches is None
    with pytest.raises(ValueError, match="no 32-pixel windows"):
        decode_cells(data, 0, 32)
    with pytest.raises(ValueError, match="cannot be read"):
        decode_cells(b"not a table", 0, 0)


def test_an_empty_frame_has_an_empty_table() -> None:
    labels = np.zeros((20, 30), np.uint16)
    data = encode_cells(linking.measure(labels, labels, 0, PATCH), labels.shape)
    cells, shape = decode_cells(data, 3, PATCH)
    assert len(cells) == 0 and shape == (20, 30)


def test_the_table_lies_beside_the_labels() -> None:
    assert cells_key("output/a/b/cells-frame-0001_labels.tif") == (
        "output/a/b/cells-frame-0001_cells.npz"
    )
    assert cells_key("output/a/labels.tif") == "output/a/labels_cells.npz"


def test_only_the_children_of_a_movie_are_frames() -> None:
    uuid = "01234567-89ab-cdef-0123-456789abcdef"
    assert is_movie_frame(f"tracking:movie.tif:{uuid}")
    assert is_movie_frame(f"tracking-zip:frames.zip:{uuid}")
    assert not is_movie_frame(f"segmentation-zip:images.zip:{uuid}")
    assert not is_movie_frame("")


def test_a_frame_keeps_windows_only_of_the_side_its_job_asks_for() -> None:
    assert cell_windows("32") == 32
    assert cell_windows("") == 0  # the movie's tracking scores divisions by their features
    for unusable in ("0", "-32", "31", "big"):
        assert cell_windows(unusable) == 0  # no windows: the fan-in measures that frame
