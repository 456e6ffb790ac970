"""Describing protobuf messages the same way on both sides of the wire test.

Only google.protobuf: the official side (tfserving_official.py, run as a script beside this
file) and our side (tests/test_serving_wire.py) both import it, and neither pulls in the other.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, unknown_fields
from google.protobuf.message import Message


def as_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def unknown_field_paths(message: Message, path: str = "") -> list[str]:
    """Where a parsed message holds fields its class does not know (recursively)."""
    found = [path or "/"] if len(unknown_fields.UnknownFieldSet(message)) else []
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if isinstance(value, Message):
            children = [("", value)]
        elif hasattr(value, "items"):
            children = list(value.items())
        else:
            children = list(enumerate(value))
        for key, child in children:
            if isinstance(child, Message):
                found += unknown_field_paths(child, f"{path}/{field.name}[{key}]")
    return found
