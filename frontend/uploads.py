"""Uploads streamed from the request straight into the bucket.

A file never sits whole in memory or in a temporary file: bytes go to the bucket writer in
1 MiB slices as they arrive, the size limit is enforced as they arrive, and the first bytes are
checked against the file's name before most of it is read. Anything wrong (too large, wrong
type, cut short, client gone) aborts the write, so no partial object is left behind.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import unquote

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from frontend.errors import ApiError
from kiosk.filetypes import SNIFF_BYTES, FileKind, check_content, check_name, human_bytes
from kiosk.keys import clean_name, upload_key
from kiosk.storage import Bucket, BucketWriter

if TYPE_CHECKING:  # the package declares its callback table for type checkers only
    from python_multipart.multipart import MultipartCallbacks

log = logging.getLogger(__name__)

FILE_FIELD = "file"
FLUSH_BYTES = 1024 * 1024
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 64
MULTIPART_OVERHEAD = 64 * 1024  # headers and boundaries around the file


@dataclass
class Upload:
    key: str
    file_name: str
    size: int
    kind: FileKind
    fields: dict[str, str] = field(default_factory=dict)


def _too_large(name: str, limit: int) -> ApiError:
    return ApiError(
        413,
        f"{name} is larger than the {human_bytes(limit)} this Kiosk accepts per upload "
        "(KIOSK_MAX_UPLOAD_BYTES): split the images across several zips, or ask the "
        "operator to raise the limit",
    )


_EXTENDED_FILENAME = re.compile(r"""(?:^|;)\s*filename\*\s*=\s*([^;]+)""", re.I)


def part_file_name(disposition: str, plain: bytes | None) -> str | None:
    """A part's file name as the user gave it: RFC 5987's ``filename*=UTF-8''...`` when sent
    (it wins, as RFC 6266 says), else ``filename``, which browsers, curl and httpx send as raw
    UTF-8 (read as latin-1 when it is not valid UTF-8, so no byte is lost)."""
    extended = _EXTENDED_FILENAME.search(disposition)
    if extended:
        charset, _, rest = extended.group(1).strip().strip('"').partition("'")
        _language, _, encoded = rest.partition("'")
        try:
            return unquote(encoded, encoding=charset or "utf-8", errors="strict")
        except (LookupError, UnicodeDecodeError):
            pass  # a charset we cannot read: fall back to the plain name
    if plain is None:
        return None
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError:
        return plain.decode("latin-1")


class _Events:
    """Parser callbacks only record what happened; the async loop acts on it."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []

    def callbacks(self) -> MultipartCallbacks:
        def record(kind: str) -> Callable[[], None]:
            return lambda: self.items.append((kind, b""))

        def record_data(kind: str) -> Callable[[bytes, int, int], None]:
            return lambda data, start, end: self.items.append((kind, bytes(data[start:end])))

        return {
            "on_part_begin": record("part_begin"),
            "on_header_field": record_data("header_field"),
            "on_header_value": record_data("header_value"),
            "on_header_end": record("header_end"),
            "on_headers_finished": record("headers_finished"),
            "on_part_data": record_data("data"),
            "on_part_end": record("part_end"),
            "on_end": record("end"),
        }

    def drain(self) -> list[tuple[str, bytes]]:
        items, self.items = self.items, []
        return items


class _Receiver:
    """The state of one multipart request while it streams in."""

    def __init__(
        self,
        bucket: Bucket,
        max_bytes: int,
        before_file: Callable[[dict[str, str], str], None] | None,
    ) -> None:
        self.bucket = bucket
        self.max_bytes = max_bytes
        self.before_file = before_file
        self.fields: dict[str, str] = {}
        self.headers: dict[str, str] = {}
        self.header_name = b""
        self.header_value = b""
        self.part: str | None = None  # "file" or a field name while inside a part
        self.field_value = bytearray()
        self.writer: BucketWriter | None = None
        self.key = ""
        self.file_name = ""
        self.kind: FileKind | None = None
        self.size = 0
        self.head = b""
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.seen_file = False
        self.ended = False

    async def handle(self, kind: str, data: bytes) -> None:
        if kind == "part_begin":
            self.headers, self.header_name, self.header_value = {}, b"", b""
        elif kind == "header_field":
            self.header_name += data
        elif kind == "header_value":
            self.header_value += data
        elif kind == "header_end":
            # Kept byte for byte (latin-1 maps each byte to one character): a file name may be
            # raw UTF-8, which is only decoded once it has been taken out of the header.
            self.headers[self.header_name.decode("latin-1").lower()] = self.header_value.decode(
                "latin-1"
            )
            self.header_name, self.header_value = b"", b""
        elif kind == "headers_finished":
            await self._start_part()
        elif kind == "data":
            await self._part_data(data)
        elif kind == "part_end":
            await self._end_part()
        elif kind == "end":
            self.ended = True

    async def _start_part(self) -> None:
        disposition = self.headers.get("content-disposition", "")
        _, params = parse_options_header(disposition)
        name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = part_file_name(disposition, params.get(b"filename"))
        if filename is None:
            if len(self.fields) >= MAX_FIELDS:
                raise ApiError(400, f"too many form fields (at most {MAX_FIELDS})")
            self.part, self.field_value = name, bytearray()
            return
        if name != FILE_FIELD:
            raise ApiError(400, f"send the file in the form field '{FILE_FIELD}', not '{name}'")
        if self.seen_file:
            raise ApiError(400, "send one file per request; zip several images into one .zip")
        self.seen_file = True
        self.file_name = clean_name(filename.replace("\\", "/"))
        self.file_name = self.file_name.rsplit("/", 1)[-1]
        check_name(self.file_name)
        if self.before_file is not None:
            self.before_file(dict(self.fields), self.file_name)
        self.key = upload_key(self.file_name)
        self.writer = await run_in_threadpool(self.bucket.open_write, self.key)
        self.part = FILE_FIELD

    async def _part_data(self, data: bytes) -> None:
        if self.part != FILE_FIELD:
            self.field_value += data
            if len(self.field_value) > MAX_FIELD_BYTES:
                raise ApiError(413, f"form field '{self.part}' is longer than 64 KiB")
            return
        self.size += len(data)
        if self.size > self.max_bytes:
            raise _too_large(repr(self.file_name), self.max_bytes)
        if self.kind is None:
            self.head += data[: SNIFF_BYTES - len(self.head)]
            if len(self.head) >= SNIFF_BYTES:
                self.kind = check_content(self.file_name, self.head)
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self.pending_bytes >= FLUSH_BYTES:
            await self._flush()

    async def _end_part(self) -> None:
        if self.part == FILE_FIELD:
            if self.kind is None:
                self.kind = check_content(self.file_name, self.head)
            await self._flush()
        elif self.part is not None:
            try:
                self.fields[self.part] = self.field_value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ApiError(400, f"form field '{self.part}' is not UTF-8 text") from exc
        self.part = None

    async def _flush(self) -> None:
        if self.pending and self.writer is not None:
            data = b"".join(self.pending)
            self.pending, self.pending_bytes = [], 0
            await run_in_threadpool(self.writer.write, data)

    async def abort(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            await run_in_threadpool(writer.abort)


def _boundary(request: Request) -> bytes:
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        raise ApiError(
            415,
            f"send the file as multipart/form-data with the file in a field named '{FILE_FIELD}'",
        )
    return params[b"boundary"]


async def receive_upload(
    request: Request,
    bucket: Bucket,
    max_bytes: int,
    before_file: Callable[[dict[str, str], str], None] | None = None,
) -> Upload:
    """Stream a multipart request's one file into ``uploads/`` and return it with the form
    fields. ``before_file`` may refuse the request from the fields sent ahead of the file and
    the file's name, before any of its bytes are stored."""
    boundary = _boundary(request)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + MULTIPART_OVERHEAD:
        raise _too_large("the upload", max_bytes)
    events = _Events()
    parser = MultipartParser(boundary, events.callbacks())
    receiver = _Receiver(bucket, max_bytes, before_file)
    try:
        async for chunk in request.stream():
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                raise ApiError(
                    400, f"the multipart body is malformed ({exc}); send it again"
                ) from exc
            for kind, data in events.drain():
                await receiver.handle(kind, data)
        if not receiver.ended:
            raise ApiError(400, "the upload was cut short; send it again")
        if not receiver.seen_file or receiver.writer is None or receiver.kind is None:
            raise ApiError(
                400, f"the request has no file: send it in a form field named '{FILE_FIELD}'"
            )
        writer, receiver.writer = receiver.writer, None
        await run_in_threadpool(writer.commit)
    except ClientDisconnect:
        await receiver.abort()
        log.info("client went away during the upload of %r", receiver.file_name)
        raise ApiError(400, "the upload was interrupted; send it again") from None
    except BaseException:
        await receiver.abort()
        raise
    return Upload(receiver.key, receiver.file_name, receiver.size, receiver.kind, receiver.fields)
