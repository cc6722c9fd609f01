"""Every reason the service turns a request down: one enum, which the handlers raise and the
OpenAPI document lists (per route and status, with what each code means)."""

from __future__ import annotations

from collections.abc import Iterable
from enum import Flag, StrEnum, auto
from typing import Any

from pydantic import BaseModel, Field

from imgclf.serving.formats import FORMAT_NAMES


class Routes(Flag):
    """Which routes answer a code: the OpenAPI document lists it under each of them."""

    NONE = 0  # answered before any route runs: no such path or method
    CLASSIFY = auto()  # /predict and /predict_batch
    FEEDBACK = auto()
    ALL = CLASSIFY | FEEDBACK


class ErrorCode(StrEnum):
    """The `error` of an error body, with its HTTP status, meaning and the routes answering it."""

    status: int
    meaning: str
    routes: Routes

    def __new__(cls, code: str, status: int, meaning: str, routes: Routes) -> ErrorCode:
        member = str.__new__(cls, code)
        member._value_ = code
        member.status = status
        member.meaning = meaning
        member.routes = routes
        return member

    EMPTY = "empty", 400, "the upload is empty (0 bytes)", Routes.CLASSIFY
    BAD_MULTIPART = "bad_multipart", 400, "the multipart body cannot be parsed", Routes.CLASSIFY
    NO_FILE = "no_file", 400, "the form holds no file field", Routes.CLASSIFY
    UNAUTHORIZED = (
        "unauthorized",
        401,
        "missing, repeated, malformed, badly signed, expired, too long-lived or wrong-audience "
        "bearer token",
        Routes.ALL,
    )
    FORBIDDEN = (
        "forbidden",
        403,
        "the prediction was made under another token subject (a `feedback:any` scope may label "
        "any)",
        Routes.FEEDBACK,
    )
    NOT_FOUND = "not_found", 404, "no such path", Routes.NONE
    UNKNOWN_PREDICTION = (
        "unknown_prediction",
        404,
        "no logged prediction has this id and index",
        Routes.FEEDBACK,
    )
    METHOD_NOT_ALLOWED = "method_not_allowed", 405, "the path takes another method", Routes.NONE
    REQUEST_TIMEOUT = (
        "request_timeout",
        408,
        "the request body did not arrive within the deadline",
        Routes.ALL,
    )
    CONFLICTING_LABEL = (
        "conflicting_label",
        409,
        "the prediction already has another true label",
        Routes.FEEDBACK,
    )
    TOO_MANY_BYTES = (
        "too_many_bytes",
        413,
        "over the byte limit (per image or per body)",
        Routes.ALL,
    )
    TOO_MANY_PIXELS = (
        "too_many_pixels",
        413,
        "over the pixel limit (per image, read before decoding; or decoded per request)",
        Routes.CLASSIFY,
    )
    TOO_MANY_IMAGES = (
        "too_many_images",
        413,
        "more images than one request may carry",
        Routes.CLASSIFY,
    )
    UNSUPPORTED_MEDIA_TYPE = (
        "unsupported_media_type",
        415,
        "a Content-Type the route does not take",
        Routes.ALL,
    )
    NOT_AN_IMAGE = "not_an_image", 415, "the upload is not a recognised image", Routes.CLASSIFY
    UNSUPPORTED_FORMAT = (
        "unsupported_format",
        415,
        f"an image, but not {FORMAT_NAMES}",
        Routes.CLASSIFY,
    )
    CORRUPT = "corrupt", 422, "the image cannot be decoded", Routes.CLASSIFY
    TRUNCATED = "truncated", 422, "the image data is truncated", Routes.CLASSIFY
    TOO_SMALL = "too_small", 422, "a side is under the minimum", Routes.CLASSIFY
    ANIMATED = "animated", 422, "an animated image: send a still", Routes.CLASSIFY
    HIGH_BIT_DEPTH = "high_bit_depth", 422, "a 16-bit or float image", Routes.CLASSIFY
    INVALID_TOP_K = (
        "invalid_top_k",
        422,
        "top_k is not a whole number from 1 to the number of classes",
        Routes.CLASSIFY,
    )
    INVALID_FEEDBACK = "invalid_feedback", 422, "not a valid feedback object", Routes.FEEDBACK
    UNKNOWN_LABEL = "unknown_label", 422, "the label is not one of the classes", Routes.FEEDBACK
    INTERNAL = (
        "internal",
        500,
        "unexpected server error: see the server log for the request id",
        Routes.ALL,
    )
    NOT_READY = "not_ready", 503, "no model loaded yet (the detail says why)", Routes.ALL
    OVERLOADED = (
        "overloaded",
        503,
        "too many requests in flight: retry after the Retry-After header's seconds",
        Routes.ALL,
    )


class ServiceError(Exception):
    """A request turned down with `code` (its status with it); `index`: the image to blame."""

    def __init__(self, code: ErrorCode, detail: str, index: int | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.index = index


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer (`error_json` writes it)."""

    error: ErrorCode
    detail: str = Field(min_length=1)
    request_id: str | None = Field(
        default=None,
        pattern="^[0-9a-f]{32}$",
        description="the request's id; absent when refused before any route runs (401, 404, 405)",
    )
    index: int | None = Field(
        default=None, ge=0, description="/predict_batch: the position of the image to blame"
    )


def error_json(
    code: ErrorCode, detail: str, request_id: str | None = None, index: int | None = None
) -> dict[str, Any]:
    """An ErrorBody as JSON-ready data."""
    body = ErrorBody(error=code, detail=detail, request_id=request_id, index=index)
    return body.model_dump(mode="json", exclude_none=True)


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
CLASSIFY_ERRORS = tuple(code for code in ErrorCode if Routes.CLASSIFY in code.routes)
FEEDBACK_ERRORS = tuple(code for code in ErrorCode if Routes.FEEDBACK in code.routes)
