"""Job options are checked one way for both APIs, the CLI and the consumers."""

from __future__ import annotations

import pytest

from kiosk.options import (
    OptionError,
    check_options,
    parse_channel_slots,
    parse_channels,
    parse_compartment,
    parse_dimension_order,
    parse_scale,
)


@pytest.mark.parametrize(
    ("text", "expected"), [("", None), ("  ", None), ("0.65", 0.65), ("1e-2", 0.01), ("100", 100.0)]
)
def test_a_scale_is_microns_per_pixel_or_nothing(text: str, expected: float | None) -> None:
    assert parse_scale(text) == expected


@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "1e-9", "0", "-1", "101", "big"])
def test_a_scale_that_is_no_pixel_size_is_refused_with_the_range(text: str) -> None:
    with pytest.raises(OptionError, match=rf"scale '{text}' is not a pixel size.*0.01 to 100"):
        parse_scale(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", None), ("0", (0,)), ("1,2", (1, 2)), ("[0, 2]", (0, 2)), ("1; 3", (1, 3))],
)
def test_channels_are_indices_counted_from_zero(text: str, expected: tuple | None) -> None:
    assert parse_channels(text) == expected


@pytest.mark.parametrize(("text", "words"), [("red", "not a list"), ("1,-2", "negative index")])
def test_bad_channels_are_refused(text: str, words: str) -> None:
    with pytest.raises(OptionError, match=words):
        parse_channels(text)


@pytest.mark.parametrize(
    ("text", "expected"), [("", None), ("infer", None), ("cyx", "CYX"), ("T, Z, Y, X", "TZYX")]
)
def test_a_dimension_order_is_upper_case_axis_letters(text: str, expected: str | None) -> None:
    assert parse_dimension_order(text) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [("QYX", "unknown axis letter"), ("ZCY", "exactly one X"), ("YYX", "exactly one Y")],
)
def test_a_bad_dimension_order_is_refused(text: str, words: str) -> None:
    with pytest.raises(OptionError, match=words):
        parse_dimension_order(text)


def test_every_bad_option_is_named_at_once() -> None:
    with pytest.raises(OptionError) as raised:
        check_options("nan", "x", "QYX")
    message = str(raised.value)
    assert "scale 'nan'" in message and "channels 'x'" in message and "letter(s) Q" in message
    check_options("0.65", "0", "YX")  # good options pass


def test_a_channel_named_twice_is_refused() -> None:
    with pytest.raises(OptionError, match="channel 1 twice"):
        parse_channels("1,1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", None), ("whole-cell", "whole-cell"), ("Whole_Cell", "whole-cell"), ("both", "both")],
)
def test_a_compartment_is_one_of_the_three(text: str, expected: str | None) -> None:
    assert parse_compartment(text) == expected


def test_a_compartment_is_refused_where_the_job_type_takes_none() -> None:
    with pytest.raises(OptionError, match="whole-cell, nuclear, both"):
        check_options(compartment="membrane", job_type="mesmer")
    with pytest.raises(OptionError, match="option of mesmer jobs"):
        check_options(compartment="nuclear", job_type="segmentation")
    check_options(compartment="both", job_type="multiplex")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", None), ("0", None), ("0,1", None), ("0,,", (0, None, None)), (",2", (None, 2))],
)
def test_channel_slots_are_read_where_a_slot_is_left_empty(text: str, expected) -> None:
    assert parse_channel_slots(text) == expected


def test_channel_slots_refuse_what_plain_channels_refuse() -> None:
    with pytest.raises(OptionError, match="negative"):
        parse_channel_slots(",-1")
