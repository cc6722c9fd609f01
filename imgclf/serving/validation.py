"""Upload validation: raw bytes from a client -> bytes THE preprocessing can decode, or a 4xx.

The byte limit and the declared content type are the service's own; everything about the image
itself is `imgclf.data.standardise`, the same standardisation the download stage and batch
prediction use, so an upload reaches the model exactly as the same file does through
`imgclf predict`. The service takes only JPEG, PNG, WebP and BMP stills of at most
8 bits a channel, and sets no minimum side; each rejection reason is the service's error code of
the same name (imgclf/serving/errors.py gives its HTTP status). Never raises anything but
`InvalidImage`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from imgclf.data.standardise import ImageRejected, Limits, standardise
from imgclf.serving.errors import ErrorCode

# Pillow format names accepted; MPO is a phone JPEG with an embedded preview (its first frame).
ACCEPTED_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp", "BMP": "bmp"}
ACCEPTED_CONTENT_TYPES = {
    "image/jpeg",
    "image/jpg",
    "image/pjpeg",
    "image/png",
    "image/webp",
    "image/bmp",
    "image/x-bmp",
    "image/x-ms-bmp",
    "application/octet-stream",  # clients that do not know: the bytes decide
}


class InvalidImage(Exception):
    """An upload the service will not classify: its error code (which carries the HTTP status)
    and a human message."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = code.status
        self.message = message

    def to_json(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.message}


@dataclass(frozen=True)
class ValidatedImage:
    model_bytes: bytes  # what goes to imgclf.model.preprocess.preprocess_bytes
    sha256: str  # of the uploaded bytes
    width: int  # after EXIF orientation
    height: int
    format: str  # jpeg | png | webp | bmp
    converted: bool  # re-encoded as PNG (False: the original JPEG bytes)


def check_content_type(content_type: str | None) -> None:
    """415 for a declared type that is not an image we take; no type at all is fine."""
    if not content_type:
        return
    media = content_type.split(";")[0].strip().lower()
    if media not in ACCEPTED_CONTENT_TYPES:
        raise InvalidImage(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"content type {media!r} is not accepted; send JPEG, PNG, WebP or BMP",
        )


def validate_image(
    data: bytes, *, max_bytes: int, max_pixels: int, content_type: str | None = None
) -> ValidatedImage:
    """Check the upload's size and declared type, then standardise it; `InvalidImage` says why
    not."""
    if len(data) > max_bytes:
        raise InvalidImage(ErrorCode.TOO_MANY_BYTES, f"{len(data)} bytes > limit {max_bytes}")
    check_content_type(content_type)
    limits = Limits(max_pixels, formats=frozenset(ACCEPTED_FORMATS), scale_high_bit_depth=False)
    try:
        clean = standardise(data, limits)
    except ImageRejected as exc:
        # The service's codes are the standardisation's reasons, spelled the same.
        raise InvalidImage(ErrorCode(exc.reason), exc.detail) from exc
    return ValidatedImage(
        model_bytes=clean.data,
        sha256=hashlib.sha256(data).hexdigest(),
        width=clean.width,
        height=clean.height,
        format=ACCEPTED_FORMATS[clean.source_format],
        converted=bool(clean.changes),
    )
