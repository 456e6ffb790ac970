"""The results zip of a tracking and its pictures, from hand-made trackings."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from consumers.ctc import TrackTruth, check_tracks, parse_tracks
from consumers.processing.linking import Track, Tracking, lineage_json
from consumers.processing.track_preview import (
    GREYS,
    PREVIEW_MAX_SIDE,
    TRACK_COLOURS,
    animated_gif,
    lineage_png,
    lineage_rows,
    outline_frame,
    preview_frames,
    track_colour,
)
from consumers.tracking_results import ResultNames, lineage_text, mask_name, write_results

SHAPE = (24, 32)


def division_movie() -> tuple[np.ndarray, Tracking]:
    """Five frames: cell 1 (segmentation label 5) divides after frame 1 into tracks 2 and 3
    (labels 7 and 8); track 4 (label 9) lives through frames 2-4 alone."""
    labels = np.zeros((5, *SHAPE), np.uint16)
    labels[0:2, 4:10, 4:10] = 5
    labels[2:5, 2:6, 2:6] = 7
    labels[2:5, 10:14, 2:6] = 8
    labels[2:5, 15:20, 20:28] = 9
    tracks = {
        1: Track(1, 0, 1, None, (2, 3)),
        2: Track(2, 2, 4, 1, ()),
        3: Track(3, 2, 4, 1, ()),
        4: Track(4, 2, 4, None, ()),
    }
    assignments = [{5: 1}, {5: 1}, *([{7: 2, 8: 3, 9: 4}] * 3)]
    return labels, Tracking(tracks, assignments)


def hyperstack(data: bytes) -> np.ndarray:
    return tifffile.imread(io.BytesIO(data))


def write_zip(tmp_path: Path, labels: np.ndarray, tracking: Tracking, folder: str = "") -> bytes:
    path = tmp_path / "results.zip"
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    images = (labels > 0).astype(np.uint16) * 1000
    with zipfile.ZipFile(path, "w") as out:
        write_results(
            out,
            work,
            ResultNames("cells", folder),
            frames=len(labels),
            shape=SHAPE,
            labels_of=lambda t: labels[t],
            image_of=lambda t: images[t],
            tracking=tracking,
        )
    return path.read_bytes()


def test_the_tracked_movie_is_an_imagej_hyperstack_with_a_t_axis(tmp_path: Path) -> None:
    labels, tracking = division_movie()
    with zipfile.ZipFile(io.BytesIO(write_zip(tmp_path, labels, tracking))) as out:
        assert out.namelist()[0] == "cells_tracked.tif"  # ImageJ opens a zip's first image
        with tifffile.TiffFile(io.BytesIO(out.read("cells_tracked.tif"))) as tif:
            assert tif.is_imagej and tif.series[0].axes == "TYX"
            tracked = tif.series[0].asarray()
    assert tracked.dtype == np.uint16 and tracked.shape == (5, *SHAPE)
    assert set(np.unique(tracked[1])) == {0, 1} and set(np.unique(tracked[3])) == {0, 2, 3, 4}
    np.testing.assert_array_equal(tracked[4] == 4, labels[4] == 9)


def test_past_65535_tracks_the_movie_is_uint32_with_its_axes(tmp_path: Path) -> None:
    labels = np.zeros((2, *SHAPE), np.uint16)
    labels[:, 2:5, 2:5] = 1
    big = 70_000
    tracking = Tracking({big: Track(big, 0, 1, None, ())}, [{1: big}, {1: big}])
    with zipfile.ZipFile(io.BytesIO(write_zip(tmp_path, labels, tracking))) as out:
        with tifffile.TiffFile(io.BytesIO(out.read("cells_tracked.tif"))) as tif:
            assert not tif.is_imagej and tif.series[0].axes == "TYX"
            tracked = tif.series[0].asarray()
        mask = tifffile.imread(io.BytesIO(out.read("01_RES/mask001.tif")))
    assert tracked.dtype == np.uint32 and int(tracked.max()) == big
    assert mask.dtype == np.uint32 and int(mask.max()) == big


def test_lineage_json_is_the_originals_format_one_track_a_line(tmp_path: Path) -> None:
    labels, tracking = division_movie()
    with zipfile.ZipFile(io.BytesIO(write_zip(tmp_path, labels, tracking))) as out:
        text = out.read("lineage.json").decode()
    lineage = json.loads(text)
    assert lineage == json.loads(json.dumps(lineage_json(tracking)))
    assert len(text.splitlines()) == len(tracking.tracks) + 2
    assert lineage["1"] == {
        "label": 1,
        "frames": [0, 1],
        "daughters": [2, 3],
        "capped": True,
        "frame_div": 2,
        "parent": None,
    }
    assert lineage["3"]["parent"] == 1 and lineage["3"]["frames"] == [2, 3, 4]


def ctc_result(data: bytes, frames: int) -> tuple[np.ndarray, dict[int, TrackTruth]]:
    with zipfile.ZipFile(io.BytesIO(data)) as out:
        tracks = parse_tracks(out.read("01_RES/res_track.txt").decode())
        masks = [out.read(f"01_RES/{mask_name(t, frames)}") for t in range(frames)]
    return np.stack([tifffile.imread(io.BytesIO(mask)) for mask in masks]), tracks


def test_res_track_and_the_masks_are_a_valid_ctc_result(tmp_path: Path) -> None:
    labels, tracking = division_movie()
    masks, tracks = ctc_result(write_zip(tmp_path, labels, tracking), 5)
    assert check_tracks(masks, tracks) == []
    assert list(tracks.values()) == [
        TrackTruth(1, 0, 1, 0),
        TrackTruth(2, 2, 4, 1),  # a mother ends the frame before her daughters
        TrackTruth(3, 2, 4, 1),
        TrackTruth(4, 2, 4, 0),
    ]


def test_a_track_rejoined_after_a_gap_goes_on_under_a_new_label_in_the_ctc_result(
    tmp_path: Path,
) -> None:
    """The hyperstack keeps one label for the whole track; the CTC wants no gap."""
    labels = np.zeros((4, *SHAPE), np.uint16)
    labels[[0, 1, 3], 4:10, 4:10] = 3  # missed in frame 2
    tracking = Tracking({1: Track(1, 0, 3, None, ())}, [{3: 1}, {3: 1}, {}, {3: 1}])
    data = write_zip(tmp_path, labels, tracking)
    masks, tracks = ctc_result(data, 4)
    assert check_tracks(masks, tracks) == []
    assert list(tracks.values()) == [TrackTruth(1, 0, 1, 0), TrackTruth(2, 3, 3, 1)]
    with zipfile.ZipFile(io.BytesIO(data)) as out:
        tracked = hyperstack(out.read("cells_tracked.tif"))
    assert set(np.unique(tracked[3])) == {0, 1}


def test_ctc_masks_get_four_digits_past_1000_frames() -> None:
    assert mask_name(7, 1000) == "mask007.tif" and mask_name(7, 1001) == "mask0007.tif"


def test_writing_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    labels, tracking = division_movie()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert write_zip(tmp_path / "a", labels, tracking) == write_zip(
        tmp_path / "b", labels, tracking
    )


def test_a_folder_holds_each_movies_results(tmp_path: Path) -> None:
    labels, tracking = division_movie()
    with zipfile.ZipFile(io.BytesIO(write_zip(tmp_path, labels, tracking, "movie_001"))) as out:
        assert all(name.startswith("movie_001/") for name in out.namelist())
        assert "movie_001/01_RES/mask004.tif" in out.namelist()


def test_the_preview_shows_few_frames_small_with_outlines_in_track_colours() -> None:
    assert preview_frames(5) == [0, 1, 2, 3, 4]
    shown = preview_frames(1000, limit=60)
    assert len(shown) == 60 and shown[0] == 0 and shown[-1] == 999
    image = np.zeros((2048, 1024), np.uint16)
    tracks = np.zeros((2048, 1024), np.uint16)
    tracks[100:300, 100:300] = TRACK_COLOURS + 6  # the colour slot of track 6
    frame = outline_frame(image, tracks)
    assert frame.shape == (PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE // 2)
    assert set(np.unique(frame[frame >= GREYS])) == {GREYS + 5}
    assert track_colour(TRACK_COLOURS + 6) == track_colour(6) != track_colour(7)
    gif = Image.open(io.BytesIO(animated_gif([frame, frame[::-1]])))
    assert gif.format == "GIF" and gif.n_frames == 2
    y, x = (int(v[0]) for v in np.nonzero(frame >= GREYS))  # an outline pixel
    assert gif.convert("RGB").getpixel((x, y)) == track_colour(TRACK_COLOURS + 6)


def test_the_lineage_plot_puts_daughters_under_their_mother() -> None:
    _, tracking = division_movie()
    assert lineage_rows(tracking.tracks) == [1, 2, 3, 4]
    plot = Image.open(io.BytesIO(lineage_png(tracking.tracks, 5)))
    assert plot.format == "PNG" and plot.width > plot.height


@pytest.mark.parametrize("tracks", [0, 1, 5000])
def test_the_lineage_plot_stays_bounded(tracks: int) -> None:
    many = {k: Track(k, 0, 3, None, ()) for k in range(1, tracks + 1)}
    plot = Image.open(io.BytesIO(lineage_png(many, 4)))
    assert plot.height <= 1100


def test_lineage_text_is_json() -> None:
    assert json.loads(lineage_text({})) == {}
    assert json.loads(lineage_text({"1": {"label": 1}})) == {"1": {"label": 1}}
