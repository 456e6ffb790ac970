"""A movie's frames as segmentation jobs: their keys, their uploads and their cells tables.

The one home of the names: the tracking consumer creates the frame jobs under these keys and
reads their results back by them; the segmentation consumer writes a frame's cells table
(:func:`consumers.processing.linking.measure` of the labels and image it already holds) beside
its labels, so that the fan-in reads small tables instead of decoding and measuring every
frame again. A table holds each cell's window only when the movie's tracking scores divisions
with a model (the frame job's ``cell_windows`` field, set by the fan-out, gives the side): the
windows cost more than the rest of the measuring and make up most of the table.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from consumers.processing import linking
from kiosk.keys import child_uuid, children_upload_prefix, clean_name, is_job_key

__all__ = [
    "LABELS_SUFFIX",
    "MOVIE_JOB_TYPES",
    "SEGMENTATION",
    "cell_windows",
    "cells_key",
    "decode_cells",
    "encode_cells",
    "frame_child_key",
    "frame_child_uuid",
    "frame_file_name",
    "frame_upload_key",
    "is_movie_frame",
]

SEGMENTATION = "segmentation"
"""The job type each frame goes to."""
MOVIE_JOB_TYPES = ("tracking",)
"""Job types whose segmentation children are the frames of one movie (a ``tracking-zip`` queue
is the tracking job type's too)."""

LABELS_SUFFIX = "_labels.tif"
"""How a segmentation job names its label image (its original name's stem before it)."""
CELLS_SUFFIX = "_cells.npz"
_FIELDS = ("labels", "centroids", "areas", "intensities", "roundness", "edge")


def cell_windows(value: str) -> int:
    """The side of the cell windows a frame's table keeps, from its job's ``cell_windows``
    field (0: none; an unreadable value keeps none, and the fan-in measures the frame)."""
    try:
        side = int(value or 0)
    except ValueError:
        return 0
    return side if side > 0 and side % 2 == 0 else 0


def frame_child_uuid(parent_key: str, frame: int) -> str:
    return child_uuid(parent_key, f"frame:{frame}")


def frame_file_name(stem: str, frame: int, frames: int) -> str:
    """``{movie stem}-frame-0007.tif``: the frame job's original_name."""
    return f"{stem}-frame-{frame:0{max(4, len(str(frames - 1)))}d}.tif"


def frame_child_key(parent_key: str, stem: str, frame: int, frames: int) -> str:
    """``segmentation:{stem}-frame-0007.tif:{uuid}``, the uuid derived from the movie's."""
    name = clean_name(frame_file_name(stem, frame, frames))
    return f"{SEGMENTATION}:{name}:{frame_child_uuid(parent_key, frame)}"


def frame_upload_key(parent_key: str, frame: int) -> str:
    """``uploads/{movie uuid}/{frame uuid}.tif``: a movie's frames share its children folder,
    which goes with the movie when it is deleted."""
    return f"{children_upload_prefix(parent_key)}{frame_child_uuid(parent_key, frame)}.tif"


def is_movie_frame(parent_key: str) -> bool:
    """Whether a segmentation job with this parent is one frame of a movie to be tracked."""
    return is_job_key(parent_key, MOVIE_JOB_TYPES)


def cells_key(labels_key: str) -> str:
    """The frame's cells table, beside its labels: ``.../x_labels.tif`` -> ``.../x_cells.npz``."""
    path = PurePosixPath(labels_key)
    stem = path.name.removesuffix(LABELS_SUFFIX) if path.name.endswith(LABELS_SUFFIX) else path.stem
    return str(path.with_name(stem + CELLS_SUFFIX))


def encode_cells(cells: linking.Cells, shape: tuple[int, int]) -> bytes:
    """A frame's table (and the frame's shape, which the fan-in checks) as npz bytes."""
    arrays: dict[str, Any] = {name: np.asarray(getattr(cells, name)) for name in _FIELDS}
    arrays["shape"] = np.asarray(shape, np.int64)
    if cells.patches is not None:
        arrays["patches"] = cells.patches
    buffer = io.BytesIO()
    # An npz (np.load reads it) deflated at level 1: the windows dominate, and level 1 packs
    # them within a few per cent of savez_compressed's level 6 at a fifth of the time, which
    # every movie frame's job pays.
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as npz:
        for name, array in arrays.items():
            with npz.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    return buffer.getvalue()


def decode_cells(data: bytes, frame: int, patch_size: int) -> tuple[linking.Cells, tuple[int, int]]:
    """The table of frame ``frame`` with windows of ``patch_size`` (0: none) and its frame's
    shape; ValueError when it is not a table or lacks windows of that size (measure instead)."""
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("not an npz file")
        with loaded as npz:
            arrays = {name: npz[name] for name in (*_FIELDS, "shape")}
            patches = npz["patches"] if patch_size and "patches" in npz.files else None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"frame {frame}'s cells table cannot be read: {exc}") from exc
    if patch_size and (patches is None or patches.shape[1] != patch_size):
        raise ValueError(f"frame {frame}'s cells table has no {patch_size}-pixel windows")
    shape = arrays.pop("shape")
    if shape.shape != (2,):
        raise ValueError(f"frame {frame}'s cells table has no frame shape")
    cells = linking.Cells(
        frame,
        arrays["labels"].astype(np.int64),
        arrays["centroids"],
        arrays["areas"],
        arrays["intensities"],
        arrays["roundness"],
        arrays["edge"].astype(bool),
        patches,
    )
    return cells, (int(shape[0]), int(shape[1]))
