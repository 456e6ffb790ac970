"""A job's options (``scale``, ``channels``, ``dimension_order``, ``compartment``), checked one
way wherever they enter: both APIs and the CLI refuse a bad option before anything is uploaded
or queued, and the consumers read the same values with the same functions. What depends on the
image itself (an order's length against the image's axes, a channel index against its
channels) is checked by the consumer once it has read the image.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

SCALE_MIN, SCALE_MAX = 0.01, 100.0
"""Microns per pixel a job's ``scale`` may say: from electron-microscopy-like 10 nm pixels to
100 um, far beyond any light microscope either way."""
AXIS_LETTERS = "BTZCSYX"
"""Axis letters a ``dimension_order`` may use: batch, time, depth, channel, sample (RGB), Y, X."""
INFER = frozenset({"", "INFER", "AUTO"})
"""``dimension_order`` values that mean: read it from the file, else guess from the shape."""


COMPARTMENTS = ("whole-cell", "nuclear", "both")
"""What a mesmer job may label: whole cells, nuclei, or both (two label images)."""
COMPARTMENT_JOB_TYPES = frozenset({"mesmer", "multiplex"})
"""The job types (and their other names) that take a ``compartment``."""


class OptionError(ValueError):
    """An option the user gave cannot be right; the message says what to give instead."""


def parse_scale(value: str | float | None) -> float | None:
    """Microns per pixel, or None when not given (the model's own pixel size applies)."""
    text = "" if value is None else str(value).strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and SCALE_MIN <= number <= SCALE_MAX):
        raise OptionError(
            f"scale {text!r} is not a pixel size: give the image's microns per pixel, a number "
            f"from {SCALE_MIN:g} to {SCALE_MAX:g} (e.g. 0.65), or leave it empty for the "
            "model's own"
        )
    return number


def parse_channels(value: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """Channel indices ("0", "1,2", "[0, 1]" or a list of ints), or None for all channels."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().strip("[]()")
        if not text:
            return None
        try:
            picked = tuple(int(part) for part in re.split(r"[\s,;]+", text) if part)
        except ValueError:
            raise OptionError(
                f"channels {value!r} is not a list of channel indices; pass numbers counted "
                "from 0, separated by commas, e.g. '0' or '1,2'."
            ) from None
    else:
        picked = tuple(int(c) for c in value)
    if not picked:
        return None
    negative = [c for c in picked if c < 0]
    if negative:
        raise OptionError(
            f"channels {value!r} has negative index {negative[0]}; channels count from 0."
        )
    twice = sorted({c for c in picked if picked.count(c) > 1})
    if twice:
        raise OptionError(
            f"channels {value!r} gives channel {twice[0]} twice; name each channel once, in the "
            "order the model takes them (for mesmer: nuclear, then membrane, e.g. '0,1')."
        )
    return picked


def parse_channel_slots(value: str | None) -> tuple[int | None, ...] | None:
    """The original's slot form of ``channels``, where a position is a model's input and an
    empty one is left out: ``'0,,'`` puts channel 0 in the first slot, ``',2'`` channel 2 in
    the second. None when ``value`` leaves no slot empty (the plain list :func:`parse_channels`
    reads)."""
    text = (value or "").strip().strip("[]()")
    parts = [part.strip() for part in text.split(",")]
    if len(parts) < 2 or all(parts):
        return None
    parse_channels(text)  # the same refusals as the plain form
    return tuple(int(part) if part else None for part in parts)


def parse_compartment(value: str | None) -> str | None:
    """A mesmer job's ``compartment`` (``whole-cell``, ``nuclear``, ``both``), or None when not
    given (the job type's default applies)."""
    text = (value or "").strip().lower().replace("_", "-")
    if not text:
        return None
    if text == "wholecell":
        text = "whole-cell"
    if text not in COMPARTMENTS:
        raise OptionError(
            f"compartment {value!r} is not one of {', '.join(COMPARTMENTS)}: choose whole-cell "
            "(one label per cell), nuclear (one per nucleus) or both (a two-channel label image)."
        )
    return text


def parse_dimension_order(value: str | None) -> str | None:
    """Upper-case axis letters, or None to read the order from the file (or guess it)."""
    if value is None:
        return None
    order = re.sub(r"[\s,]", "", str(value)).upper()
    if order in INFER:
        return None
    bad = sorted(set(order) - set(AXIS_LETTERS))
    if bad:
        raise OptionError(
            f"dimension_order {order!r} uses unknown axis letter(s) {', '.join(bad)}; use letters "
            f"from {AXIS_LETTERS} (T time, Z depth, C channel, Y, X, B batch), e.g. 'CYX'."
        )
    for letter in "YX":
        if order.count(letter) != 1:
            raise OptionError(
                f"dimension_order {order!r} must name exactly one {letter} axis, e.g. 'YXC'."
            )
    repeated = sorted({a for a in order if order.count(a) > 1})
    if repeated:
        raise OptionError(
            f"dimension_order {order!r} repeats axis {', '.join(repeated)}; name each axis once."
        )
    return order


def check_options(
    scale: str | float | None = None,
    channels: str | Sequence[int] | None = None,
    dimension_order: str | None = None,
    compartment: str | None = None,
    job_type: str | None = None,
) -> None:
    """Refuse bad options with :class:`OptionError`: every problem, a sentence each.
    ``job_type``, when known, refuses a ``compartment`` the job type does not take."""
    problems = []

    def check_compartment() -> None:
        if parse_compartment(compartment) and job_type and job_type not in COMPARTMENT_JOB_TYPES:
            raise OptionError(
                f"compartment is an option of mesmer jobs; a {job_type} job labels what its "
                "model segments: leave compartment empty, or submit the job as mesmer"
            )

    for check in (
        lambda: parse_scale(scale),
        lambda: parse_channels(channels),
        lambda: parse_dimension_order(dimension_order),
        check_compartment,
    ):
        try:
            check()
        except OptionError as exc:
            problems.append(str(exc).rstrip(".") + ".")
    if problems:
        raise OptionError(" ".join(problems))
