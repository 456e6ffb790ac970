"""Bucket files over plain HTTP, so ``output_url`` works for any client (kiosk-client downloads
it with a bare GET; ImageJ opens it with its URL opener). Only uploads/ and output/ are
served; their names carry random ids. Models and anything else in the bucket are not."""

from __future__ import annotations

import mimetypes
from collections.abc import Iterator
from pathlib import PurePosixPath
from urllib.parse import quote

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, StreamingResponse
from starlette.responses import Response

from frontend.deps import ServicesDep, get_caller
from frontend.errors import ApiError
from kiosk.keys import FILES_PATH, OUTPUT_PREFIX, UPLOAD_PREFIX
from kiosk.storage import Bucket, ObjectNotFound, safe_key

SERVED_PREFIXES = (UPLOAD_PREFIX, OUTPUT_PREFIX)
STREAM_CHUNK = 1024 * 1024

mimetypes.add_type("image/tiff", ".tif")
mimetypes.add_type("image/tiff", ".tiff")

router = APIRouter(tags=["files"], dependencies=[Depends(get_caller)])


def file_response(bucket: Bucket, key: str) -> Response:
    """Stream one bucket object, with its name as the download name."""
    safe_key(key)
    name = PurePosixPath(key).name
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    path = bucket.local_path(key)
    if path is not None:
        if not path.is_file():
            raise ApiError(404, f"no file {key!r}: it was never written or has been deleted")
        return FileResponse(path, media_type=media_type, filename=name)
    try:
        reader = bucket.open_read(key)
    except ObjectNotFound:
        raise ApiError(404, f"no file {key!r}: it was never written or has been deleted") from None

    def chunks() -> Iterator[bytes]:
        with reader:
            while chunk := reader.read(STREAM_CHUNK):
                yield chunk

    size = bucket.size(key)
    headers = {"Content-Disposition": content_disposition(name)}
    if size is not None:
        headers["Content-Length"] = str(size)
    return StreamingResponse(chunks(), media_type=media_type, headers=headers)


def content_disposition(name: str) -> str:
    """``attachment`` with the file's name: an ASCII stand-in for old clients, and the name
    itself (RFC 6266 ``filename*``) for every other, whatever its script."""
    fallback = name.encode("ascii", "replace").decode().replace('"', "_").replace("\\", "_")
    if fallback == name:
        return f'attachment; filename="{name}"'
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def get_file(key: str, services: ServicesDep) -> Response:
    """An uploaded file or a result, by its bucket key."""
    if not key.startswith(SERVED_PREFIXES):
        raise ApiError(404, f"no file {key!r}: only uploads/ and output/ are served")
    return file_response(services.bucket, key)


router.add_api_route(FILES_PATH + "{key:path}", get_file, methods=["GET"])
router.add_api_route(FILES_PATH + "{key:path}", get_file, methods=["HEAD"], include_in_schema=False)
