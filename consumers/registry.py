"""Which :class:`~consumers.base.Consumer` serves which queue.

Built-in job types are listed here by import path (imported only when asked for). Job types
written outside this package are added with ``KIOSK_JOB_TYPE_PLUGINS=name=module:Class``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from consumers.base import Consumer
from kiosk.keys import ZIP_SUFFIX, job_type_of
from kiosk.settings import JobTypeSettings

BUILTIN: dict[str, str] = {
    "segmentation": "consumers.segmentation:SegmentationConsumer",
    "tracking": "consumers.tracking:TrackingConsumer",
    "mesmer": "consumers.mesmer:MesmerConsumer",
}
# A job type's zips are split by the same fan-out consumer, unless the job type names its own
# (Consumer.zip_consumer: tracking takes a zip of frames as one movie).
ZIP_CONSUMER = "consumers.zips:ZipConsumer"


class UnknownJobType(LookupError):
    pass


def parse_plugins(specs: Iterable[str]) -> dict[str, str]:
    """``["name=module:Class", ...]`` as ``{name: "module:Class"}``."""
    plugins = {}
    for spec in specs:
        name, sep, target = spec.partition("=")
        if not sep or ":" not in target:
            raise ValueError(
                f"invalid job type plugin {spec!r}: write NAME=package.module:ClassName"
            )
        plugins[name.strip()] = target.strip()
    return plugins


def load(target: str) -> type[Consumer]:
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UnknownJobType(f"cannot load consumer {target!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Consumer)):
        raise UnknownJobType(f"{target!r} is not a subclass of consumers.base.Consumer")
    return cls


def resolve(queue: str, plugins: Iterable[str] = ()) -> type[Consumer]:
    """The consumer class for a queue: plugins first, then built-in job types; ``TYPE-zip``
    queues get the zip consumer the job type names (the zip fan-out consumer by default)."""
    known = {**BUILTIN, **parse_plugins(plugins)}
    if queue.endswith(ZIP_SUFFIX) and job_type_of(queue) in known:
        return load(load(known[job_type_of(queue)]).zip_consumer)
    if queue not in known:
        names = ", ".join(sorted(known)) or "none"
        raise UnknownJobType(
            f"no consumer serves queue {queue!r} (known: {names}); "
            "add one with KIOSK_JOB_TYPE_PLUGINS=NAME=module:Class"
        )
    return load(known[queue])


def job_type_settings(plugins: Iterable[str] = ()) -> list[type[JobTypeSettings]]:
    """The settings classes job types declare (built-in, the zip consumer's, plugins'), once
    each, for the README's table and for checks."""
    targets = [*BUILTIN.values(), ZIP_CONSUMER, *parse_plugins(plugins).values()]
    classes: list[type[JobTypeSettings]] = []
    for target in targets:
        cls = load(target).settings_class
        if cls is not JobTypeSettings and cls not in classes:
            classes.append(cls)
    return classes
