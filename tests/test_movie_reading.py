"""Reading movies frame by frame: TIFF axes from metadata, the job or the shape; zips of frames
in natural order; .trk/.trks; and the refusals, each saying what to do."""

from __future__ import annotations

import io
import zipfile
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import pytest
import tifffile

from consumers.imaging import ChannelError, CorruptImage, DimensionOrderError, ImageError
from consumers.movies import (
    FramesZip,
    Movie,
    MovieError,
    MovieLimits,
    frame_entries,
    natural_key,
    open_movies,
)
from tests.support.tracking import frames_zip, tiff_bytes, trk_bytes

LIMITS = MovieLimits(max_frames=50, max_pixels=100_000, max_total_pixels=10_000_000)


@pytest.fixture
def movie() -> np.ndarray:
    """(T, C, Y, X) uint16 with distinct values everywhere, so a wrong page shows."""
    return np.arange(5 * 3 * 16 * 20, dtype=np.uint16).reshape(5, 3, 16, 20)


def read(
    path: Path, workdir: Path, limits: MovieLimits = LIMITS, **options: str
) -> AbstractContextManager[list[Movie]]:
    workdir.mkdir(exist_ok=True)
    name = options.pop("name", path.name)
    return open_movies(path, name=name, limits=limits, workdir=workdir, **options)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def frames_of(movie: Movie) -> np.ndarray:
    return np.stack(list(movie))


def test_an_imagej_hyperstack_gives_the_chosen_channel_of_each_frame(
    tmp_path: Path, movie: np.ndarray
) -> None:
    data = tiff_bytes(movie, imagej=True, metadata={"axes": "TCYX"}, compression="zlib")
    with read(write(tmp_path, "m.tif", data), tmp_path, channels="1") as (m,):
        assert (m.dimension_order, m.frames, m.height, m.width) == ("TCYX", 5, 16, 20)
        np.testing.assert_array_equal(frames_of(m), movie[:, 1])


def test_ome_axes_are_read_from_the_ome_metadata(tmp_path: Path, movie: np.ndarray) -> None:
    ome = np.ascontiguousarray(movie.transpose(1, 0, 2, 3))  # stored CTYX
    data = tiff_bytes(ome, ome=True, metadata={"axes": "CTYX"})
    with read(write(tmp_path, "m.ome.tif", data), tmp_path, channels="2") as (m,):
        assert m.dimension_order == "CTYX" and m.frames == 5
        np.testing.assert_array_equal(m.frame(3), movie[3, 2])


def test_a_plain_multipage_tiff_is_a_tyx_movie(tmp_path: Path, movie: np.ndarray) -> None:
    with read(write(tmp_path, "m.tif", tiff_bytes(movie[:, 0])), tmp_path) as (m,):
        assert m.dimension_order == "TYX"
        np.testing.assert_array_equal(frames_of(m), movie[:, 0])


def test_unnamed_axes_are_time_then_a_few_channels(tmp_path: Path, movie: np.ndarray) -> None:
    data = tiff_bytes(movie, photometric="minisblack")
    with read(write(tmp_path, "m.tif", data), tmp_path, channels="2") as (m,):
        assert m.dimension_order == "TCYX"
        np.testing.assert_array_equal(m.frame(4), movie[4, 2])


def test_colour_samples_are_channels(tmp_path: Path) -> None:
    rgb = np.arange(4 * 16 * 20 * 3, dtype=np.uint16).reshape(4, 16, 20, 3).astype(np.uint8)
    data = tiff_bytes(rgb, photometric="rgb")
    with read(write(tmp_path, "rgb.tif", data), tmp_path, channels="2") as (m,):
        assert m.dimension_order == "TYXC"
        np.testing.assert_array_equal(m.frame(1), rgb[1, ..., 2])


def test_the_jobs_dimension_order_names_axes_the_file_does_not(
    tmp_path: Path, movie: np.ndarray
) -> None:
    """An ImageJ stack saved as Z slices is a movie when the job says its planes are time."""
    data = tiff_bytes(movie[:, 0], imagej=True, metadata={"axes": "ZYX"})
    path = write(tmp_path, "slices.tif", data)
    with pytest.raises(MovieError, match=r"Z axis of 5 planes.*dimension_order"):
        read(path, tmp_path).__enter__()
    with read(path, tmp_path, dimension_order="TYX") as (m,):
        np.testing.assert_array_equal(m.frame(2), movie[2, 0])


def test_a_volume_over_time_is_refused_with_what_to_do(tmp_path: Path) -> None:
    volume = np.zeros((3, 4, 16, 20), np.uint16)
    data = tiff_bytes(volume, imagej=True, metadata={"axes": "TZYX"})
    with pytest.raises(MovieError, match=r"Z axis of 4 planes \(axes TZYX\).*Z Project"):
        read(write(tmp_path, "v.tif", data), tmp_path).__enter__()


def test_channels_are_chosen_like_segmentation_chooses_them(
    tmp_path: Path, movie: np.ndarray
) -> None:
    path = write(tmp_path, "m.tif", tiff_bytes(movie, imagej=True, metadata={"axes": "TCYX"}))
    with pytest.raises(ChannelError, match="has 3 channels but the model needs 1"):
        read(path, tmp_path).__enter__()
    with pytest.raises(ChannelError, match="channel 7 does not exist"):
        read(path, tmp_path, channels="7").__enter__()
    with pytest.raises(ChannelError, match="selects 2 channel"):
        read(path, tmp_path, channels="0,1").__enter__()


@pytest.mark.parametrize(
    ("limits", "match"),
    [
        (MovieLimits(max_frames=4), r"5 frames; the limit is 4 \(KIOSK_MAX_FRAMES\)"),
        (MovieLimits(50, max_pixels=100), r"16 x 20 = 320 pixels; the limit is 100 per frame"),
        (MovieLimits(50, None, max_total_pixels=1000), r"1,600 pixels in all.*MOVIE_PIXELS"),
    ],
)
def test_limits_are_checked_from_the_header_before_a_frame_is_decoded(
    tmp_path: Path, movie: np.ndarray, limits: MovieLimits, match: str
) -> None:
    path = write(tmp_path, "m.tif", tiff_bytes(movie[:, 0]))
    with pytest.raises(ImageError, match=match):
        read(path, tmp_path, limits).__enter__()


def test_one_image_is_not_a_movie(tmp_path: Path, movie: np.ndarray) -> None:
    with pytest.raises(MovieError, match=r"one image, not a movie.*segmentation job"):
        read(write(tmp_path, "one.tif", tiff_bytes(movie[0, 0])), tmp_path).__enter__()


def test_a_frame_that_cannot_be_decoded_is_named(tmp_path: Path, movie: np.ndarray) -> None:
    data = bytearray(tiff_bytes(movie[:, 0], compression="zlib"))
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        page = tif.pages[3]
        start, count = page.dataoffsets[0], page.databytecounts[0]
    data[start : start + count] = b"\xff" * count  # not a zlib stream any more
    with read(write(tmp_path, "m.tif", bytes(data)), tmp_path) as (m,):
        np.testing.assert_array_equal(m.frame(2), movie[2, 0])
        with pytest.raises(CorruptImage, match=r"frame 3 of 'm.tif' could not be decoded"):
            m.frame(3)


def test_names_sort_naturally() -> None:
    names = ["f10.tif", "f2.tif", "f1.tif", "F3.tif"]
    assert sorted(names, key=natural_key) == ["f1.tif", "f2.tif", "F3.tif", "f10.tif"]


def test_a_zip_of_frames_is_a_movie_in_the_natural_order_of_its_names(
    tmp_path: Path, movie: np.ndarray
) -> None:
    frames = movie[:, 0]
    data = frames_zip(frames, lambda t: f"run/frame{t * 5}.tif")  # frame5 before frame10
    with zipfile.ZipFile(io.BytesIO(data), "a") as archive:
        archive.writestr("__MACOSX/run/._frame5.tif", b"metadata")
        archive.writestr("run/notes.txt", b"notes")
    with read(write(tmp_path, "run.zip", data), tmp_path) as (m,):
        assert (m.frames, m.dimension_order) == (5, "TYX")
        assert m.frame_name(2) == "frame 2 ('run/frame10.tif')"
        np.testing.assert_array_equal(frames_of(m), frames)


def test_a_zip_of_frames_refuses_a_frame_of_another_size_or_with_planes(tmp_path: Path) -> None:
    data = io.BytesIO(frames_zip(np.zeros((3, 16, 20), np.uint16)))
    with zipfile.ZipFile(data, "a") as archive:
        archive.writestr("frame3.tif", tiff_bytes(np.zeros((16, 21), np.uint16)))
        archive.writestr("frame4.tif", tiff_bytes(np.zeros((2, 16, 20), np.uint16)))
    with zipfile.ZipFile(data) as odd:
        entries = frame_entries(odd.infolist())
        with pytest.raises(MovieError, match=r"frame 3 \('frame3.tif'\) is 16 x 21.*same size"):
            FramesZip(
                odd, entries[:4], name="z.zip", dimension_order=None, channels=None, limits=LIMITS
            )
        with pytest.raises(MovieError, match=r"frame 3 \('frame4.tif'\) holds 2 planes"):
            FramesZip(
                odd,
                [*entries[:3], entries[4]],
                name="z.zip",
                dimension_order=None,
                channels=None,
                limits=LIMITS,
            )


def test_a_zip_with_more_frames_than_the_limit_is_refused_from_its_directory(
    tmp_path: Path,
) -> None:
    data = frames_zip(np.zeros((6, 4, 4), np.uint16))
    with pytest.raises(MovieError, match="6 frames; the limit is 5"):
        read(write(tmp_path, "z.zip", data), tmp_path, MovieLimits(5)).__enter__()


def test_a_trk_gives_its_frames_and_its_labels(tmp_path: Path) -> None:
    raw = np.random.default_rng(0).random((4, 16, 20, 2)).astype(np.float32)
    tracked = np.arange(4 * 16 * 20, dtype=np.int32).reshape(4, 16, 20, 1) % 7
    path = write(tmp_path, "m.trk", trk_bytes(raw, tracked))
    with read(path, tmp_path, channels="1") as (m,):
        assert m.labelled and (m.frames, m.dimension_order) == (4, "TYXC")
        np.testing.assert_array_equal(m.frame(2), raw[2, ..., 1])
        np.testing.assert_array_equal(m.labels(3), tracked[3, ..., 0])


def test_every_movie_of_a_trks_is_read(tmp_path: Path) -> None:
    raw = np.stack([np.full((3, 8, 8, 1), b, np.uint16) for b in range(3)])
    tracked = np.ones((3, 3, 8, 8, 1), np.int32)
    path = write(tmp_path, "set.trks", trk_bytes(raw, tracked, several=True))
    with read(path, tmp_path) as movies:
        assert [m.name for m in movies] == [f"set.trks (movie {b})" for b in range(3)]
        assert [int(m.frame(1)[0, 0]) for m in movies] == [0, 1, 2]


def test_a_trk_is_checked_from_its_array_headers(tmp_path: Path) -> None:
    raw = np.zeros((6, 16, 20, 1), np.uint16)
    tracked = np.zeros((6, 16, 20, 1), np.int32)
    path = write(tmp_path, "m.trk", trk_bytes(raw, tracked))
    with pytest.raises(MovieError, match="6 frames; the limit is 5"):
        read(path, tmp_path, MovieLimits(5)).__enter__()
    assert not (tmp_path / "raw.npy").exists()  # refused before the array was unpacked
    bad = write(tmp_path, "bad.trk", trk_bytes(raw, tracked[:5]))
    with pytest.raises(DimensionOrderError, match="must cover the same frames"):
        read(bad, tmp_path / "bad").__enter__()
    noise = np.random.default_rng(0).integers(0, 4000, raw.shape).astype(np.uint16)
    whole = trk_bytes(noise, tracked)
    cut = write(tmp_path, "cut.trk", whole[: len(whole) // 2])
    with pytest.raises(CorruptImage, match=r"not a readable \.trk"):
        read(cut, tmp_path / "cut").__enter__()
