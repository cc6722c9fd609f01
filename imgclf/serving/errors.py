"""Every reason the service turns a request down: one enum, which the handlers raise and the
OpenAPI document lists (per route and status, with what each code means)."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class ErrorCode(StrEnum):
    """The `error` of an error body, with its HTTP status and meaning."""

    status: int
    meaning: str

    def __new__(cls, code: str, status: int, meaning: str) -> ErrorCode:
        member = str.__new__(cls, code)
        member._value_ = code
        member.status = status
        member.meaning = meaning
        return member

    EMPTY = "empty", 400, "the upload is empty (0 bytes)"
    BAD_MULTIPART = "bad_multipart", 400, "the multipart body cannot be parsed"
    NO_FILE = "no_file", 400, "the form holds no file field"
    UNAUTHORIZED = (
        "unauthorized",
        401,
        "missing, malformed, badly signed, expired or wrong-audience bearer token",
    )
    UNKNOWN_PREDICTION = "unknown_prediction", 404, "no logged prediction has this id and index"
    CONFLICTING_LABEL = "conflicting_label", 409, "the prediction already has another true label"
    TOO_MANY_BYTES = "too_many_bytes", 413, "over the byte limit (per image or per body)"
    TOO_MANY_PIXELS = "too_many_pixels", 413, "over the pixel limit (read before decoding)"
    TOO_MANY_IMAGES = "too_many_images", 413, "more images than one request may carry"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type", 415, "a Content-Type the route does not take"
    NOT_AN_IMAGE = "not_an_image", 415, "the upload is not a recognised image"
    UNSUPPORTED_FORMAT = "unsupported_format", 415, "an image, but not JPEG, PNG, WebP or BMP"
    CORRUPT = "corrupt", 422, "the image cannot be decoded"
    TRUNCATED = "truncated", 422, "the image data is truncated"
    ANIMATED = "animated", 422, "an animated image: send a still"
    HIGH_BIT_DEPTH = "high_bit_depth", 422, "a 16-bit or float image"
    INVALID_FEEDBACK = "invalid_feedback", 422, "not a valid feedback object"
    UNKNOWN_LABEL = "unknown_label", 422, "the label is not one of the classes"
    INTERNAL = "internal", 500, "unexpected server error: see the server log for the request id"
    NOT_READY = "not_ready", 503, "no model loaded yet"


class ServiceError(Exception):
    """A request turned down with `code` (its status with it); `index`: the image to blame."""

    def __init__(self, code: ErrorCode, detail: str, index: int | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.index = index


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer."""

    error: ErrorCode
    detail: str = Field(min_length=1)
    request_id: str | None = Field(
        default=None,
        pattern="^[0-9a-f]{32}$",
        description="the request's id; absent on 401 (refused before any route runs)",
    )
    index: int | None = Field(
        default=None, ge=0, description="/predict_batch: the position of the image to blame"
    )


def error_responses(codes: Iterable[ErrorCode]) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` for these codes: one entry per status that lists its codes."""
    by_status: dict[int, list[ErrorCode]] = {}
    for code in codes:
        by_status.setdefault(code.status, []).append(code)
    return {
        status: {
            "model": ErrorBody,
            "description": "\n".join(f"- `{code}`: {code.meaning}" for code in members),
        }
        for status, members in sorted(by_status.items())
    }


# Which codes each route can answer (documented per route; the handlers raise them).
FEEDBACK_ONLY = frozenset(
    {
        ErrorCode.UNKNOWN_PREDICTION,
        ErrorCode.CONFLICTING_LABEL,
        ErrorCode.INVALID_FEEDBACK,
        ErrorCode.UNKNOWN_LABEL,
    }
)
CLASSIFY_ERRORS = tuple(code for code in ErrorCode if code not in FEEDBACK_ONLY)
FEEDBACK_ERRORS = (
    *sorted(FEEDBACK_ONLY),
    ErrorCode.UNAUTHORIZED,
    ErrorCode.TOO_MANY_BYTES,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    ErrorCode.INTERNAL,
)
