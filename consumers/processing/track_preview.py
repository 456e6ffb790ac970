"""Pictures of a tracking for people to judge it at a glance: an animated GIF of the frames with
each cell's outline in its track's colour, and a lineage plot (one line per track over time,
daughters joined to their mother where she divides).

Both stay small whatever the movie: frames are downsampled to ``max_side`` and at most
``PREVIEW_MAX_FRAMES`` frames, evenly spaced, are shown; the plot draws at most ``MAX_ROWS``
tracks. A track keeps one colour in both pictures (one of ``TRACK_COLOURS`` hues, chosen from its
label), so a cell can be followed from the animation to its lineage.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from consumers.processing.overlay import inner_boundaries, label_colours, to_uint8
from consumers.processing.rescale import restore_labels

__all__ = [
    "GREYS",
    "PREVIEW_MAX_FRAMES",
    "PREVIEW_MAX_SIDE",
    "TRACK_COLOURS",
    "animated_gif",
    "lineage_png",
    "outline_frame",
    "preview_frames",
    "track_colour",
]

# 384 pixels and 64 greys keep a 60-frame animation of a noisy 512 x 512 movie to 3.6 MB
# (11 MB at 512 pixels and 192 greys), encoded in half the time: it is a preview.
PREVIEW_MAX_SIDE = 384
PREVIEW_MAX_FRAMES = 60
GREYS = 64
"""Palette entries 0..63 are greys; 64..255 are the track colours."""
TRACK_COLOURS = 256 - GREYS
FRAME_MS = 200
MAX_ROWS = 450
PLOT_WIDTH = 1000
MARGIN = 40
BACKGROUND = (255, 255, 255)
INK = (60, 60, 60)


class TrackLike(Protocol):
    """What the lineage plot reads of a track (``consumers.processing.linking.Track``)."""

    @property
    def label(self) -> int: ...
    @property
    def first(self) -> int: ...
    @property
    def last(self) -> int: ...
    @property
    def parent(self) -> int | None: ...
    @property
    def daughters(self) -> tuple[int, ...]: ...


def preview_frames(frames: int, limit: int = PREVIEW_MAX_FRAMES) -> list[int]:
    """The frames the animation shows: all of a short movie, else ``limit`` evenly spaced
    (the first and the last among them)."""
    if frames <= limit:
        return list(range(frames))
    return sorted({round(i * (frames - 1) / (limit - 1)) for i in range(limit)})


def _colour_slot(labels: np.ndarray) -> np.ndarray:
    return (labels.astype(np.int64) - 1) % TRACK_COLOURS


def track_colour(label: int) -> tuple[int, int, int]:
    """The RGB colour of a track in both pictures."""
    slot = int(_colour_slot(np.asarray([label]))[0]) + 1
    r, g, b = (int(v) for v in label_colours(np.asarray([slot]))[0])
    return r, g, b


def _palette() -> list[int]:
    greys = [v * 255 // (GREYS - 1) for v in range(GREYS) for _ in range(3)]
    colours = label_colours(np.arange(1, TRACK_COLOURS + 1)).ravel().tolist()
    return greys + [int(c) for c in colours]


def outline_frame(
    image: np.ndarray, tracks: np.ndarray, max_side: int = PREVIEW_MAX_SIDE
) -> NDArray[np.uint8]:
    """One animation frame as palette indices: the image in grey, downsampled so its longest
    side is at most ``max_side``, each cell's outline in its track's colour."""
    image = np.asarray(image)
    tracks = np.asarray(tracks)
    if image.shape != tracks.shape or image.ndim != 2:
        raise ValueError(f"need a 2D image and tracks alike, got {image.shape}, {tracks.shape}")
    grey = to_uint8(image)
    longest = max(image.shape)
    if longest > max_side:
        height, width = (max(1, n * max_side // longest) for n in image.shape)
        # Pillow's box filter: an area average, as resize_image gives, at a tenth of its time.
        grey = np.asarray(Image.fromarray(grey).resize((width, height), Image.Resampling.BOX))
        tracks = restore_labels(tracks, (height, width))
    indices = (grey.astype(np.uint16) * (GREYS - 1) // 255).astype(np.uint8)
    edges = inner_boundaries(tracks)
    indices[edges] = (GREYS + _colour_slot(tracks[edges])).astype(np.uint8)
    return indices


def animated_gif(frames: Sequence[np.ndarray], frame_ms: int = FRAME_MS) -> bytes:
    """An endlessly looping GIF of :func:`outline_frame` frames."""
    if not frames:
        raise ValueError("an animation needs at least one frame")
    palette = _palette()
    pictures = []
    for indices in frames:
        picture = Image.fromarray(np.ascontiguousarray(indices, np.uint8), mode="P")
        picture.putpalette(palette)
        pictures.append(picture)
    buffer = io.BytesIO()
    pictures[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=pictures[1:],
        duration=frame_ms,
        loop=0,
        optimize=False,
    )
    return buffer.getvalue()


def lineage_rows(tracks: Mapping[int, TrackLike]) -> list[int]:
    """Track labels top to bottom: each lineage tree depth first from its root (roots by label),
    so daughters sit just below their mother."""
    rows: list[int] = []
    seen: set[int] = set()
    roots = sorted(k for k, t in tracks.items() if t.parent is None or t.parent not in tracks)
    stack = list(reversed(roots))
    while stack:
        label = stack.pop()
        if label in seen:
            continue
        seen.add(label)
        rows.append(label)
        stack.extend(reversed([d for d in tracks[label].daughters if d in tracks]))
    rows += sorted(set(tracks) - seen)  # daughters whose mother does not list them
    return rows


def lineage_png(tracks: Mapping[int, TrackLike], frames: int, max_rows: int = MAX_ROWS) -> bytes:
    """The lineage plot: frames left to right, one row per track, a vertical joint from each
    mother's last frame to her daughters' rows."""
    rows = lineage_rows(tracks)
    shown = rows[:max_rows]
    row_of = {label: i for i, label in enumerate(shown)}
    row_h = max(2, min(14, 900 // max(1, len(shown))))
    col_w = max(1.0, min(60.0, (PLOT_WIDTH - 2 * MARGIN) / max(1, frames)))
    width = int(2 * MARGIN + col_w * frames)
    height = 2 * MARGIN + row_h * max(1, len(shown))
    picture = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(picture)

    def x_of(frame: float) -> float:
        return MARGIN + col_w * frame

    def y_of(row: int) -> float:
        return MARGIN + row_h * (row + 0.5)

    line = max(1, row_h // 3)
    for label in shown:
        track = tracks[label]
        y = y_of(row_of[label])
        colour = track_colour(label)
        draw.line([(x_of(track.first), y), (x_of(track.last + 1), y)], fill=colour, width=line)
        daughters = [row_of[d] for d in track.daughters if d in row_of]
        if daughters:
            x = x_of(track.last + 1)
            draw.line([(x, y), (x, y_of(max(daughters)))], fill=INK, width=1)
            draw.line([(x, y), (x, y_of(min(daughters)))], fill=INK, width=1)
        if row_h >= 10:
            draw.text((2, y - 5), str(label), fill=INK)
    _axis(draw, frames, x_of, height)
    if len(rows) > len(shown):
        draw.text((MARGIN, height - MARGIN + 20), f"... and {len(rows) - len(shown)} more", INK)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def _axis(
    draw: ImageDraw.ImageDraw, frames: int, position: Callable[[float], float], height: int
) -> None:
    """Frame numbers along the bottom, at a round step."""
    step = next(s for s in _steps() if frames / s <= 10)
    y = height - MARGIN + 4
    draw.line([(position(0), y), (position(frames), y)], fill=INK, width=1)
    draw.text((position(frames) + 6, y - 5), "frame", fill=INK)
    for frame in range(0, frames + 1, step):
        x = position(frame)
        draw.line([(x, y), (x, y + 4)], fill=INK, width=1)
        draw.text((x - 4, y + 6), str(frame), fill=INK)


def _steps() -> Iterable[int]:
    scale = 1
    while True:
        for base in (1, 2, 5):
            yield base * scale
        scale *= 10
