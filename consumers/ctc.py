"""Cell Tracking Challenge (CTC) track records and folders: the one place that knows the format.

Why: ground truth from the movie generator, tracking results to be scored and the tracking job's
own output all use the CTC layout, and the metrics package reads only that layout. A track is one
``L B E P`` record (label, first frame, last frame, parent label or 0, frames 0-based); its label
marks its masks in frames B..E (CTC masks are uint16, one TIFF per frame). A division ends the
parent on the frame before its daughters begin.

Ground truth goes to ``folder/TRA/man_track.txt`` + ``folder/TRA/man_trackTTT.tif``; results to
``folder/res_track.txt`` + ``folder/maskTTT.tif`` (TTT: the frame, 3 digits, 4 past 999 frames).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from numpy.typing import NDArray

__all__ = [
    "TrackLike",
    "TrackTruth",
    "as_track",
    "check_tracks",
    "format_tracks",
    "parse_tracks",
    "tracks_from_labels",
    "write_ctc_result",
    "write_ctc_truth_folder",
]


@dataclass(frozen=True)
class TrackTruth:
    """One CTC track record: label, first and last frame (inclusive, 0-based), parent (0: none)."""

    label: int
    first: int
    last: int
    parent: int = 0


TrackLike = TrackTruth | tuple[int, int, int, int]
"""A track as a record or as a plain ``(L, B, E, P)`` tuple."""


def as_track(track: TrackLike) -> TrackTruth:
    """The record of ``track`` (a TrackTruth or an ``(L, B, E, P)`` tuple)."""
    if isinstance(track, TrackTruth):
        return track
    try:
        label, first, last, parent = (int(v) for v in track)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"a track is (label, first, last, parent) integers, got {track!r}"
        ) from exc
    return TrackTruth(label, first, last, parent)


def format_tracks(tracks: Iterable[TrackLike]) -> str:
    """``L B E P`` lines, one per track, sorted by label (the text of man_track/res_track.txt)."""
    records = sorted((as_track(t) for t in tracks), key=lambda t: t.label)
    return "".join(f"{t.label} {t.first} {t.last} {t.parent}\n" for t in records)


def parse_tracks(text: str) -> dict[int, TrackTruth]:
    """Tracks by label from ``L B E P`` text (spaces or tabs; blank lines ignored)."""
    tracks: dict[int, TrackTruth] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 4 or not all(f.isdigit() for f in fields):
            raise ValueError(
                f"line {number} of a CTC track file must be four non-negative integers "
                f"'L B E P', got {line!r}"
            )
        track = TrackTruth(*(int(f) for f in fields))
        if track.label in tracks:
            raise ValueError(f"line {number}: track label {track.label} appears twice")
        tracks[track.label] = track
    return tracks


def tracks_from_labels(
    labels: NDArray[np.integer], parents: Mapping[int, int] | None = None
) -> dict[int, TrackTruth]:
    """Records read off a (T, Y, X) label stack: each label's first and last frame.

    ``parents`` maps a label to its parent label (missing: 0). Gaps are not checked here (see
    ``check_tracks``).
    """
    parents = parents or {}
    frames = _frames_of(_stack(labels))
    return {
        label: TrackTruth(label, seen[0], seen[-1], int(parents.get(label, 0)))
        for label, seen in sorted(frames.items())
    }


def _frames_of(stack: NDArray[np.integer]) -> dict[int, list[int]]:
    """The frames (ascending) each non-zero label appears in."""
    frames: dict[int, list[int]] = {}
    for t, frame in enumerate(stack):
        for value in np.unique(frame):
            if value:
                frames.setdefault(int(value), []).append(t)
    return frames


def check_tracks(labels: NDArray[np.integer], tracks: Mapping[int, TrackLike]) -> list[str]:
    """Everything that makes ``labels`` + ``tracks`` an invalid CTC pair; empty when valid.

    Valid means: every label in the masks has a record and vice versa, a label is present in
    exactly the frames B..E of its record, parents exist and end before their daughters begin.
    """
    stack = _stack(labels)
    records = {int(k): as_track(v) for k, v in tracks.items()}
    problems: list[str] = []
    for key, track in records.items():
        if key != track.label:
            problems.append(f"track keyed {key} has label {track.label}")
        if track.label <= 0:
            problems.append(f"track label {track.label} is not positive")
        if not 0 <= track.first <= track.last < stack.shape[0]:
            problems.append(
                f"track {track.label} spans frames {track.first}..{track.last}, outside "
                f"0..{stack.shape[0] - 1} or backwards"
            )
        if track.parent:
            parent = records.get(track.parent)
            if parent is None:
                problems.append(
                    f"track {track.label} has parent {track.parent}, which has no record"
                )
            elif parent.last >= track.first:
                problems.append(
                    f"parent {parent.label} ends on frame {parent.last}, not before its daughter "
                    f"{track.label} begins (frame {track.first})"
                )
    frames = _frames_of(stack)
    for label in sorted(set(frames) - set(records)):
        problems.append(f"label {label} is in the masks but has no track record")
    for label in sorted(set(records) - set(frames)):
        problems.append(f"track {label} has a record but no mask in any frame")
    for label, seen in sorted(frames.items()):
        record = records.get(label)
        if record is None:
            continue
        if (seen[0], seen[-1]) != (record.first, record.last):
            problems.append(
                f"label {label} is in frames {seen[0]}..{seen[-1]} but its record says "
                f"{record.first}..{record.last}"
            )
        elif len(seen) != seen[-1] - seen[0] + 1:
            gap = next(t for t, s in enumerate(seen, start=seen[0]) if t != s)
            problems.append(f"label {label} is missing from frame {gap} inside its track")
    return problems


def write_ctc_truth_folder(
    folder: Path, labels: NDArray[np.integer], tracks: Mapping[int, TrackLike]
) -> None:
    """Write ground truth the CTC way: ``folder/TRA/man_track.txt`` and ``man_trackTTT.tif``."""
    _write(Path(folder) / "TRA", "man_track", labels, tracks)


def write_ctc_result(
    folder: Path, labels: NDArray[np.integer], tracks: Mapping[int, TrackLike]
) -> None:
    """Write a tracking result the CTC way: ``folder/res_track.txt`` and ``folder/maskTTT.tif``."""
    _write(Path(folder), "res", labels, tracks)


def _write(
    folder: Path, kind: str, labels: NDArray[np.integer], tracks: Mapping[int, TrackLike]
) -> None:
    stack = _stack(labels)
    problems = check_tracks(stack, tracks)
    if problems:
        raise ValueError(
            "these labels and tracks are not a valid CTC pair: "
            + "; ".join(problems[:5])
            + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
        )
    if stack.size and (stack.min() < 0 or stack.max() > 65535):
        raise ValueError(
            f"CTC masks are uint16: labels must be 0..65535, got {stack.min()}..{stack.max()}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    digits = 3 if stack.shape[0] <= 1000 else 4
    mask_stem = "man_track" if kind == "man_track" else "mask"
    for t, frame in enumerate(stack):
        tifffile.imwrite(folder / f"{mask_stem}{t:0{digits}d}.tif", frame.astype(np.uint16))
    text_name = "man_track.txt" if kind == "man_track" else "res_track.txt"
    (folder / text_name).write_text(format_tracks(tracks.values()), encoding="ascii")


def _stack(labels: NDArray[np.integer]) -> NDArray[np.integer]:
    stack = np.asarray(labels)
    if stack.ndim != 3 or not np.issubdtype(stack.dtype, np.integer):
        raise ValueError(
            f"labels must be a (T, Y, X) integer stack, got shape {stack.shape} of {stack.dtype}"
        )
    return stack
