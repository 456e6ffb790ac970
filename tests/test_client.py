"""The HTTP client's own logic."""

from __future__ import annotations

import httpx
import pytest

from local.client import _attachment_name


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ('attachment; filename="result.tif"', "result.tif"),
        ("attachment; filename*=utf-8''my%20cells%20%C3%A9.tif", "my cells é.tif"),
        ("inline", None),
    ],
)
def test_download_names_come_from_content_disposition(header: str, name: str | None) -> None:
    response = httpx.Response(200, headers={"content-disposition": header})
    assert _attachment_name(response) == name
