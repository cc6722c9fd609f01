"""Upload validation: raw bytes from a client -> bytes THE preprocessing can decode, or a 4xx.

The byte limit and the declared content type are the service's own; everything about the image
itself is `imgclf.data.standardise`, the same standardisation the download stage and batch
prediction use, so an upload reaches the model exactly as the same file does through
`imgclf predict`. The service takes the stills of formats.py of at most 8 bits a channel, and
sets no minimum side; each rejection reason has its error code (`REASON_CODES`; errors.py gives
its HTTP status). Never raises anything but `ServiceError`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from imgclf.data.standardise import ImageRejected, Limits, Reason, standardise
from imgclf.serving.errors import ErrorCode, ServiceError
from imgclf.serving.formats import ACCEPTED_MEDIA_TYPES, FORMAT_NAMES, PILLOW_NAMES

REASON_CODES: dict[Reason, ErrorCode] = {
    Reason.EMPTY: ErrorCode.EMPTY,
    Reason.NOT_AN_IMAGE: ErrorCode.NOT_AN_IMAGE,
    Reason.UNSUPPORTED_FORMAT: ErrorCode.UNSUPPORTED_FORMAT,
    Reason.CORRUPT: ErrorCode.CORRUPT,
    Reason.TRUNCATED: ErrorCode.TRUNCATED,
    Reason.TOO_MANY_PIXELS: ErrorCode.TOO_MANY_PIXELS,
    Reason.TOO_SMALL: ErrorCode.TOO_SMALL,
    Reason.ANIMATED: ErrorCode.ANIMATED,
    Reason.HIGH_BIT_DEPTH: ErrorCode.HIGH_BIT_DEPTH,
}


@dataclass(frozen=True)
class ValidatedImage:
    model_bytes: bytes  # what goes to imgclf.model.preprocess.preprocess_bytes
    sha256: str  # of the uploaded bytes
    width: int  # after EXIF orientation
    height: int


def service_limits(max_pixels: int) -> Limits:
    """What the service takes: stills of its formats, of at most 8 bits a channel, any side."""
    return Limits(max_pixels, formats=PILLOW_NAMES, scale_high_bit_depth=False)


def check_content_type(content_type: str | None) -> None:
    """415 for a declared type that is not an image we take; no type at all is fine."""
    if not content_type:
        return
    media = content_type.split(";")[0].strip().lower()
    if media not in ACCEPTED_MEDIA_TYPES:
        raise ServiceError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"content type {media!r} is not accepted; send {FORMAT_NAMES}",
        )


def validate_image(
    data: bytes, *, max_bytes: int, max_pixels: int, content_type: str | None = None
) -> ValidatedImage:
    """Check the upload's size and declared type, then standardise it; `ServiceError` says why
    not."""
    if len(data) > max_bytes:
        raise ServiceError(ErrorCode.TOO_MANY_BYTES, f"{len(data)} bytes > limit {max_bytes}")
    check_content_type(content_type)
    limits = service_limits(max_pixels)
    try:
        clean = standardise(data, limits)
    except ImageRejected as exc:
        raise ServiceError(REASON_CODES[exc.reason], exc.detail) from exc
    return ValidatedImage(
        model_bytes=clean.data,
        sha256=hashlib.sha256(data).hexdigest(),
        width=clean.width,
        height=clean.height,
    )
