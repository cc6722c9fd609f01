"""Upload validation: raw bytes from a client -> bytes THE preprocessing can decode, or a 4xx.

The byte limit and the declared content type are the service's own; everything about the image
itself is `imgclf.data.standardise`, the same standardisation the download stage and batch
prediction use, so an upload reaches the model exactly as the same file does through
`python -m stages.predict`. The service takes only JPEG, PNG, WebP and BMP stills of at most
8 bits a channel; each rejection reason has its HTTP status here. Never raises anything but
`InvalidImage`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from imgclf.data.standardise import ImageRejected, Limits, Reason, standardise

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
HTTP_STATUS: dict[Reason, int] = {
    Reason.EMPTY: 400,
    Reason.TOO_MANY_PIXELS: 413,
    Reason.NOT_AN_IMAGE: 415,
    Reason.UNSUPPORTED_FORMAT: 415,
    Reason.CORRUPT: 422,
    Reason.TRUNCATED: 422,
    Reason.ANIMATED: 422,
    Reason.HIGH_BIT_DEPTH: 422,
    Reason.TOO_SMALL: 422,  # never: the service sets no minimum side
}


class Rejected(Exception):
    """A request the service turns down: HTTP status, machine code, human message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def to_json(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.message}


class InvalidImage(Rejected):
    """An upload the service will not classify."""


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
            415,
            "unsupported_media_type",
            f"content type {media!r} is not accepted; send JPEG, PNG, WebP or BMP",
        )


def validate_image(
    data: bytes, *, max_bytes: int, max_pixels: int, content_type: str | None = None
) -> ValidatedImage:
    """Check the upload's size and declared type, then standardise it; `InvalidImage` says why
    not."""
    if len(data) > max_bytes:
        raise InvalidImage(413, "too_many_bytes", f"{len(data)} bytes > limit {max_bytes}")
    check_content_type(content_type)
    limits = Limits(max_pixels, formats=frozenset(ACCEPTED_FORMATS), scale_high_bit_depth=False)
    try:
        clean = standardise(data, limits)
    except ImageRejected as exc:
        raise InvalidImage(HTTP_STATUS[exc.reason], exc.reason.value, exc.detail) from exc
    return ValidatedImage(
        model_bytes=clean.data,
        sha256=hashlib.sha256(data).hexdigest(),
        width=clean.width,
        height=clean.height,
        format=ACCEPTED_FORMATS[clean.source_format],
        converted=bool(clean.changes),
    )
