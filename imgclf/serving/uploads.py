"""Request bodies, read under limits as they arrive: refused (413) as soon as one is passed,
without reading the rest, and (408) when the whole body has not arrived within the deadline.

A multipart form goes through python-multipart's streaming parser chunk by chunk, never buffered
whole: only file parts are kept (a part without a filename is a text field, by RFC 7578: counted
and dropped), each under the per-image limit, at most `files` of them, the body under the
route's limit. BentoML's multipart parser (which fetches a URL given in a file field) and
Starlette's form parser (which spools every file to disk first) are never involved.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TypeVar

from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from imgclf.serving.errors import ErrorCode, ServiceError
from imgclf.serving.formats import UNDECLARED
from imgclf.serving.validation import Upload

MAX_TEXT_FIELDS = 8  # a form's parts without a filename: tolerated beside the images, not kept
T = TypeVar("T")


@dataclass(frozen=True)
class BodyLimits:
    body_bytes: int  # the whole body
    file_bytes: int  # one image
    files: int  # images in one request
    seconds: float  # the whole body must have arrived within this, from the start of reading


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(request: Request, limit: int, seconds: float) -> bytes:
    """The whole body, at most `limit` bytes, within `seconds`."""

    async def whole() -> bytes:
        return b"".join([chunk async for chunk in _chunks(request, limit)])

    return await _within(seconds, whole())


async def read_uploads(request: Request, limits: BodyLimits) -> list[Upload]:
    """The images of a multipart form's file parts, or of a raw image body (one-image routes)."""
    media = media_type(request)
    if media == "multipart/form-data":
        return await _within(limits.seconds, _form_files(request, limits))
    if limits.files == 1 and (media.startswith("image/") or media == UNDECLARED):
        return [Upload(await read_body(request, limits.file_bytes, limits.seconds), media)]
    raise ServiceError(
        ErrorCode.UNSUPPORTED_MEDIA_TYPE,
        f"content type {media or 'none'!r}: send multipart/form-data"
        + (" or a raw image body" if limits.files == 1 else ""),
    )


async def _within(seconds: float, reading: Awaitable[T]) -> T:
    """`reading`, or a 408 once `seconds` have passed (under BentoML's own request timeout, whose
    answer would be a 504: the server's fault, for a client that did not send)."""
    try:
        async with asyncio.timeout(seconds):
            return await reading
    except TimeoutError as exc:
        detail = f"the request body did not arrive within {seconds:g} s"
        raise ServiceError(ErrorCode.REQUEST_TIMEOUT, detail) from exc


async def _chunks(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive; a 413 as soon as it is known to be over `limit` bytes
    (from Content-Length before reading any, or counting)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ServiceError(
            ErrorCode.TOO_MANY_BYTES, f"request body {declared} bytes > limit {limit}"
        )
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServiceError(ErrorCode.TOO_MANY_BYTES, f"request body over the limit of {limit}")
        yield chunk


async def _form_files(request: Request, limits: BodyLimits) -> list[Upload]:
    _, options = parse_options_header(request.headers.get("content-type"))
    if not options.get(b"boundary"):
        raise ServiceError(ErrorCode.BAD_MULTIPART, "the Content-Type names no boundary")
    parts = _FileParts(limits)
    try:
        parser = MultipartParser(options[b"boundary"], parts.callbacks())
        async for chunk in _chunks(request, limits.body_bytes):
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise ServiceError(ErrorCode.BAD_MULTIPART, f"cannot parse the form: {exc}") from exc
    if not parts.ended:
        raise ServiceError(ErrorCode.BAD_MULTIPART, "the body ends before the closing boundary")
    if not parts.uploads:
        raise ServiceError(ErrorCode.NO_FILE, "the form holds no file field (e.g. `image`)")
    return parts.uploads


class _FileParts:
    """python-multipart's callbacks: each file part's bytes kept under the limits, as they
    arrive; text fields counted and dropped."""

    def __init__(self, limits: BodyLimits) -> None:
        self.limits = limits
        self.uploads: list[Upload] = []
        self.ended = False
        self._text_fields = 0
        self._headers: dict[bytes, bytes] = {}
        self._header = [b"", b""]  # the name and value of the header being read
        self._file: list[bytes] | None = None  # the current file part's chunks; None: text
        self._file_size = 0

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._headers.clear,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header[0] += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header[1] += data[start:end]

    def _on_header_end(self) -> None:
        name, value = self._header
        self._headers[name.strip().lower()] = value.strip()
        self._header = [b"", b""]

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        if b"name" not in options:
            raise ServiceError(ErrorCode.BAD_MULTIPART, "a part's Content-Disposition has no name")
        if b"filename" not in options:
            self._text_fields += 1
            if self._text_fields > MAX_TEXT_FIELDS:
                detail = f"over {MAX_TEXT_FIELDS} text fields (parts without a filename)"
                raise ServiceError(ErrorCode.BAD_MULTIPART, detail)
            self._file = None
            return
        if len(self.uploads) == self.limits.files:  # refused before its bytes are read
            detail = f"over the limit of {self.limits.files} images per request"
            raise ServiceError(ErrorCode.TOO_MANY_IMAGES, detail)
        self._file, self._file_size = [], 0

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is None:
            return
        self._file_size += end - start
        if self._file_size > self.limits.file_bytes:
            detail = f"an image over the limit of {self.limits.file_bytes} bytes"
            raise ServiceError(ErrorCode.TOO_MANY_BYTES, detail, index=len(self.uploads))
        self._file.append(data[start:end])

    def _on_part_end(self) -> None:
        if self._file is None:
            return
        declared = self._headers.get(b"content-type")
        content_type = declared.decode("latin-1") if declared else None
        self.uploads.append(Upload(b"".join(self._file), content_type))
        self._file = None

    def _on_end(self) -> None:
        self.ended = True
