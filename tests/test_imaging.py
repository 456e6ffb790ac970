"""Reading image files into (frames, Y, X, C), refusing bad ones clearly, writing label images."""

from __future__ import annotations

import io
import tracemalloc
import zipfile

import numpy as np
import pytest
import tifffile
from PIL import Image

from consumers.imaging import (
    ChannelError,
    CorruptImage,
    DimensionOrderError,
    ImageError,
    ImageTooLarge,
    UnsupportedImage,
    encode_labels_tiff,
    encode_png,
    label_dtype,
    open_image,
    parse_channels,
    probe,
    read_image,
    resolve_dimension_order,
    select_channels,
    to_canonical,
    write_labels_tiff,
    write_png,
)
from kiosk.filetypes import FileKind, UnsupportedFile


def tiff_bytes(array: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, **kwargs)
    return buf.getvalue()


def pil_bytes(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def ramp(shape, dtype=np.uint16) -> np.ndarray:
    return (np.arange(np.prod(shape)) % 50000).astype(dtype).reshape(shape)


# --- reading -------------------------------------------------------------------------------


def test_2d_tiff_reads_as_one_frame_one_channel_in_its_own_dtype():
    data = ramp((40, 60))
    pixels = read_image(tiff_bytes(data))
    assert pixels.shape == (1, 40, 60, 1)
    assert pixels.dtype == np.uint16
    np.testing.assert_array_equal(pixels[0, ..., 0], data)


def test_bytes_path_and_file_object_sources_read_the_same(tmp_path):
    data = ramp((16, 24))
    raw = tiff_bytes(data)
    path = tmp_path / "img.tif"
    path.write_bytes(raw)
    from_path = read_image(path)
    from_str = read_image(str(path))
    with open(path, "rb") as fh:
        from_file = read_image(fh)
    from_memoryview = read_image(memoryview(raw))
    for pixels in (from_path, from_str, from_file, from_memoryview):
        np.testing.assert_array_equal(pixels[0, ..., 0], data)


def test_lzw_and_deflate_compressed_tiffs_decode():
    data = ramp((64, 64))
    for compression in ("lzw", "zlib", "zstd"):
        pixels = read_image(tiff_bytes(data, compression=compression))
        np.testing.assert_array_equal(pixels[0, ..., 0], data)


def test_plain_multipage_tiff_pages_become_frames():
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as tw:
        for i in range(3):
            tw.write(np.full((8, 9), i, np.uint8), metadata=None)
    loaded = open_image(buf.getvalue())
    assert loaded.pixels.shape == (3, 8, 9, 1)
    assert [int(p[0, 0, 0]) for p in loaded.pixels] == [0, 1, 2]
    assert loaded.frame_axes == "B"


def test_imagej_hyperstack_axes_come_from_its_metadata():
    data = np.zeros((2, 3, 16, 20), np.uint16)  # Z, C, Y, X
    for z in range(2):
        for c in range(3):
            data[z, c] = 10 * z + c
    loaded = open_image(tiff_bytes(data, imagej=True, metadata={"axes": "ZCYX"}))
    assert loaded.dimension_order == "ZCYX"
    assert loaded.frame_axes == "Z"
    assert loaded.pixels.shape == (2, 16, 20, 3)
    assert loaded.pixels[1, 0, 0].tolist() == [10, 11, 12]


def test_ome_tiff_channels_come_from_its_metadata():
    data = ramp((4, 16, 16))
    pixels = read_image(tiff_bytes(data, ome=True, metadata={"axes": "CYX"}))
    assert pixels.shape == (1, 16, 16, 4)
    np.testing.assert_array_equal(pixels[0, ..., 2], data[2])


def test_rgb_tiff_samples_are_channels():
    data = ramp((10, 12, 3), np.uint8)
    pixels = read_image(tiff_bytes(data, photometric="rgb"))
    assert pixels.shape == (1, 10, 12, 3)
    np.testing.assert_array_equal(pixels[0], data)


def test_explicit_dimension_order_overrides_the_files_guess():
    data = ramp((3, 16, 16))
    raw = tiff_bytes(data, photometric="minisblack", metadata=None)
    assert read_image(raw).shape == (3, 16, 16, 1)  # pages are frames by default
    as_channels = read_image(raw, dimension_order="CYX")
    assert as_channels.shape == (1, 16, 16, 3)
    np.testing.assert_array_equal(as_channels[0, ..., 1], data[1])


def test_explicit_order_may_name_axes_of_length_one_that_the_file_squeezes():
    data = ramp((1, 3, 16, 16))
    raw = tiff_bytes(data, imagej=True, metadata={"axes": "TCYX"})
    pixels = read_image(raw, dimension_order="TCYX")
    assert pixels.shape == (1, 16, 16, 3)


@pytest.mark.parametrize(
    ("shape", "order"),
    [
        ((64, 64), "YX"),
        ((64, 64, 3), "YXC"),
        ((64, 64, 1), "YXC"),
        ((5, 64, 64), "ZYX"),
        ((2, 64, 64), "ZYX"),
        ((10, 64, 64, 3), "TYXC"),
        ((10, 2, 64, 64), "TCYX"),
        ((4, 5, 64, 64), "TZYX"),
        ((3, 5, 64, 64, 2), "TZYXC"),
        ((3, 5, 2, 64, 64), "TZCYX"),
    ],
)
def test_infer_guesses_axes_from_the_shape(shape, order):
    assert resolve_dimension_order(shape, "infer") == order
    assert resolve_dimension_order(shape, "") == order
    assert resolve_dimension_order(shape, None) == order


def test_infer_prefers_named_file_axes_and_ignores_unnamed_ones():
    assert resolve_dimension_order((3, 64, 64), "infer", "CYX") == "CYX"
    assert resolve_dimension_order((3, 64, 64), "infer", "IYX") == "BYX"
    assert resolve_dimension_order((3, 64, 64), "infer", "QYX") == "ZYX"


def test_uninferable_shape_asks_for_dimension_order():
    with pytest.raises(DimensionOrderError, match="pass dimension_order"):
        resolve_dimension_order((2, 3, 4, 5, 64, 64), "infer")


def test_wrong_dimension_order_length_says_what_the_image_has():
    with pytest.raises(DimensionOrderError) as err:
        resolve_dimension_order((64, 64), "CYX")
    message = str(err.value)
    assert "names 3 axes" in message and "64x64" in message and "'YX'" in message


def test_bad_dimension_order_letters_are_refused():
    with pytest.raises(DimensionOrderError, match="unknown axis letter"):
        resolve_dimension_order((64, 64), "YQ")
    with pytest.raises(DimensionOrderError, match="exactly one Y axis"):
        resolve_dimension_order((4, 64, 64), "ZYY")
    assert resolve_dimension_order((3, 64, 64), "c,y,x") == "CYX"


def test_to_canonical_folds_time_then_depth_into_frames():
    data = np.zeros((2, 3, 4, 5), np.int32)  # T, Z, Y, X
    for t in range(2):
        for z in range(3):
            data[t, z] = 10 * t + z
    out = to_canonical(data, "TZYX")
    assert out.shape == (6, 4, 5, 1)
    assert [int(f[0, 0, 0]) for f in out] == [0, 1, 2, 10, 11, 12]


def test_to_canonical_is_a_view_when_axes_are_already_in_order():
    data = ramp((2, 8, 8, 3))
    assert np.shares_memory(to_canonical(data, "ZYXC"), data)
    plane = ramp((8, 8))
    assert np.shares_memory(to_canonical(plane, "YX"), plane)


# --- channels ------------------------------------------------------------------------------


def test_parse_channels_accepts_job_strings_and_lists():
    assert parse_channels("0") == (0,)
    assert parse_channels(" 1, 2 ") == (1, 2)
    assert parse_channels("[0,2]") == (0, 2)
    assert parse_channels("") is None
    assert parse_channels(None) is None
    assert parse_channels([3]) == (3,)
    with pytest.raises(ChannelError, match="counted from 0"):
        parse_channels("red")
    with pytest.raises(ChannelError, match="negative"):
        parse_channels("-1")


def test_channel_selection_picks_the_named_channel():
    image = ramp((1, 8, 8, 3))
    out = select_channels(image, "2", required=1)
    assert out.shape == (1, 8, 8, 1)
    np.testing.assert_array_equal(out[..., 0], image[..., 2])


def test_missing_channel_index_says_how_many_the_image_has():
    with pytest.raises(ChannelError) as err:
        select_channels(ramp((1, 8, 8, 2)), "3", required=1, name="cells.tif")
    message = str(err.value)
    assert "channel 3 does not exist" in message and "has 2 channels" in message
    assert "0..1" in message


def test_wrong_channel_count_for_the_model_says_what_to_pass():
    with pytest.raises(ChannelError) as err:
        select_channels(ramp((1, 8, 8, 3)), "1,2", required=1)
    assert "needs 1" in str(err.value) and "channels='0'" in str(err.value)


def test_multichannel_image_without_selection_asks_which_channel():
    image = np.stack([ramp((8, 8)), ramp((8, 8)) * 0, ramp((8, 8)) // 2], axis=-1)[None]
    with pytest.raises(ChannelError) as err:
        read_image(tiff_bytes(image[0], photometric="rgb"), required_channels=1, name="rgb.tif")
    assert "'rgb.tif' has 3 channels" in str(err.value) and "channels='0'" in str(err.value)


def test_grey_image_saved_as_rgb_gives_one_channel_without_asking():
    grey = ramp((20, 30), np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    pixels = read_image(pil_bytes(rgb, "PNG"), required_channels=1)
    assert pixels.shape == (1, 20, 30, 1)
    np.testing.assert_array_equal(pixels[0, ..., 0], grey)


def test_too_few_channels_for_the_model_is_refused():
    with pytest.raises(ChannelError, match="needs 2"):
        select_channels(ramp((1, 8, 8, 1)), None, required=2)


# --- PNG and JPEG --------------------------------------------------------------------------


def test_png_8_and_16_bit_grey_and_rgb_read_exactly():
    grey8 = ramp((20, 30), np.uint8)
    grey16 = ramp((20, 30)) * 1
    rgb = ramp((20, 30, 3), np.uint8)
    assert read_image(pil_bytes(grey8, "PNG")).shape == (1, 20, 30, 1)
    np.testing.assert_array_equal(read_image(pil_bytes(grey8, "PNG"))[0, ..., 0], grey8)
    from_png16 = read_image(encode_png(grey16))
    assert from_png16.dtype == np.uint16
    np.testing.assert_array_equal(from_png16[0, ..., 0], grey16)
    np.testing.assert_array_equal(read_image(encode_png(rgb))[0], rgb)


def test_png_write_and_read_back_through_a_file(tmp_path):
    labels = ramp((12, 14))
    path = write_png(tmp_path / "labels.png", labels)
    info = probe(path)
    assert info.kind is FileKind.PNG and info.shape == (12, 14) and info.dtype == np.uint16
    np.testing.assert_array_equal(read_image(path)[0, ..., 0], labels)


def test_png_refuses_what_it_cannot_hold():
    with pytest.raises(ValueError, match="8- or 16-bit"):
        encode_png(np.full((4, 4), 70000, np.int32))
    with pytest.raises(ValueError, match="colour PNGs must be uint8"):
        encode_png(np.zeros((4, 4, 3), np.uint16))


def test_jpeg_reads_as_uint8():
    grey = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (16, 1))
    pixels = read_image(pil_bytes(grey, "JPEG", quality=95))
    assert pixels.shape == (1, 16, 32, 1) and pixels.dtype == np.uint8
    assert np.abs(pixels[0, ..., 0].astype(int) - grey).max() < 8


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [None, "lzw"])
def test_truncated_tiff_is_reported_as_corrupt(compression):
    raw = tiff_bytes(
        np.random.default_rng(0).integers(0, 999, (256, 256), np.uint16), compression=compression
    )
    for cut in (len(raw) // 2, 40):
        with pytest.raises(CorruptImage) as err:
            read_image(raw[:cut], name="cut.tif")
        assert "'cut.tif'" in str(err.value) and "upload" in str(err.value).lower()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_png_and_jpeg_are_reported_as_corrupt(fmt):
    raw = pil_bytes(np.random.default_rng(1).integers(0, 255, (128, 128), np.uint8), fmt)
    with pytest.raises(CorruptImage, match=f"as {fmt}"):
        read_image(raw[: len(raw) // 2], name=f"x.{fmt.lower()}")


def test_garbage_bytes_and_zips_are_unsupported_with_what_kiosk_reads():
    with pytest.raises(UnsupportedImage) as err:
        read_image(b"this is not an image at all", name="notes.txt")
    assert ".tif" in str(err.value) and "Convert" in str(err.value)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", "x")
    with pytest.raises(UnsupportedImage, match="zip archive"):
        read_image(buf.getvalue())
    assert issubclass(UnsupportedImage, UnsupportedFile)
    assert issubclass(UnsupportedImage, ImageError) and issubclass(ImageError, ValueError)


def test_empty_file_is_refused():
    with pytest.raises(CorruptImage, match="empty"):
        read_image(b"", name="e.tif")


def test_a_tiff_header_without_an_image_is_reported_as_corrupt():
    header_only = b"II*\x00\x08\x00\x00\x00" + b"\x00" * 56
    with pytest.raises(CorruptImage, match="TIFF without any image"):
        read_image(header_only, name="broken.tif")


def test_too_many_pixels_is_refused_with_size_and_limit():
    raw = tiff_bytes(np.zeros((300, 400), np.uint8))
    with pytest.raises(ImageTooLarge) as err:
        read_image(raw, name="big.tif", max_pixels=256 * 256)
    message = str(err.value)
    assert "300 x 400 = 120,000" in message and "65,536" in message and "Crop" in message
    assert read_image(raw, max_pixels=None).shape == (1, 300, 400, 1)


def test_too_many_pixels_in_a_stack_is_refused():
    raw = tiff_bytes(np.zeros((10, 50, 50), np.uint8), photometric="minisblack")
    with pytest.raises(ImageTooLarge, match="10 planes"):
        read_image(raw, max_total_pixels=5 * 50 * 50)


def test_huge_image_is_refused_from_its_header_without_decoding():
    side, tile = 20480, 1024

    def tiles():
        for _ in range((side // tile) ** 2):
            yield np.zeros((tile, tile), np.uint8)

    buf = io.BytesIO()
    tifffile.imwrite(
        buf, tiles(), shape=(side, side), dtype=np.uint8, tile=(tile, tile), compression="zlib"
    )
    raw = buf.getvalue()
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLarge, match="20480 x 20480"):
            read_image(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"refusing used {peak / 2**20:.1f} MiB"


def test_reading_a_2048_image_makes_at_most_two_extra_copies():
    data = ramp((2048, 2048))
    raw = tiff_bytes(data)
    tracemalloc.start()
    try:
        pixels = read_image(raw, required_channels=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pixels.shape == (1, 2048, 2048, 1)
    assert peak <= 2 * data.nbytes + 2**20, f"peak {peak / data.nbytes:.2f} image sizes"


# --- writing label images ------------------------------------------------------------------


def test_2d_labels_write_as_compressed_uint16_imagej_tiff():
    labels = np.zeros((64, 80), np.int32)
    labels[10:20, 10:30] = 1
    labels[40:60, 50:70] = 65535
    raw = encode_labels_tiff(labels, mpp=0.65)
    with tifffile.TiffFile(io.BytesIO(raw)) as tif:
        assert tif.is_imagej
        assert tif.imagej_metadata is not None and tif.imagej_metadata.get("unit") == "um"
        assert len(tif.pages) == 1
        page = tif.pages[0]
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        x_res = page.tags["XResolution"].value
        assert x_res[0] / x_res[1] == pytest.approx(1 / 0.65, rel=1e-3)
        back = tif.asarray()
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)
    assert len(raw) < labels.size  # compressed well below 2 bytes per pixel


@pytest.mark.parametrize("axes", ["ZYX", "TYX"])
def test_label_stacks_write_as_imagej_hyperstacks_with_axes(axes):
    labels = np.zeros((5, 32, 32), np.uint16)
    for i in range(5):
        labels[i, i : i + 5, i : i + 5] = i + 1
    raw = encode_labels_tiff(labels, axes=axes)
    with tifffile.TiffFile(io.BytesIO(raw)) as tif:
        assert tif.is_imagej
        assert len(tif.pages) == 5
        assert tif.series[0].axes == axes
        key = "slices" if axes == "ZYX" else "frames"
        assert tif.imagej_metadata[key] == 5
        np.testing.assert_array_equal(tif.asarray(), labels)


def test_more_than_65535_labels_write_as_plain_uint32_tiff():
    labels = np.arange(300 * 300, dtype=np.int64).reshape(300, 300)
    raw = encode_labels_tiff(labels)
    with tifffile.TiffFile(io.BytesIO(raw)) as tif:
        assert not tif.is_imagej
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        back = tif.asarray()
    assert back.dtype == np.uint32
    np.testing.assert_array_equal(back, labels)
    stack = np.stack([labels, labels[::-1]])
    with tifffile.TiffFile(io.BytesIO(encode_labels_tiff(stack, axes="TYX"))) as tif:
        assert tif.series[0].axes == "TYX"
        np.testing.assert_array_equal(tif.asarray(), stack)


def test_label_writing_drops_a_trailing_channel_and_refuses_bad_labels(tmp_path):
    labels = np.zeros((2, 16, 16, 1), np.int32)
    labels[1, 2:5, 2:5] = 3
    path = write_labels_tiff(tmp_path / "out.tif", labels)
    back = read_image(path)
    assert back.shape == (2, 16, 16, 1)
    np.testing.assert_array_equal(back[..., 0], labels[..., 0])
    with pytest.raises(ValueError, match="negative"):
        encode_labels_tiff(np.full((4, 4), -1))
    with pytest.raises(ValueError, match="whole numbers"):
        encode_labels_tiff(np.full((4, 4), 0.5))
    with pytest.raises(ValueError, match="must end in YX"):
        encode_labels_tiff(np.zeros((2, 4, 4), np.uint16), axes="YXZ")


def test_label_dtype_picks_the_smallest_that_fits():
    assert label_dtype(np.array([0, 65535])) == np.uint16
    assert label_dtype(np.array([0, 65536])) == np.uint32
    assert label_dtype(np.zeros(0, int)) == np.uint16


def test_animated_png_frames_become_frames():
    frames = [Image.fromarray(np.full((8, 9), i * 10, np.uint8)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])
    pixels = read_image(buf.getvalue())
    assert pixels.shape == (3, 8, 9, 1)
    assert pixels[:, 0, 0, 0].tolist() == [0, 10, 20]
