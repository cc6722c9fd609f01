"""Upload validation: raw bytes from a client -> the pixels a model sees, or a 4xx.

The byte limit, the declared content type and the decode budget are the service's own;
everything about the image itself is `imgclf.data.standardise`, the same checks and cleaning the
download stage and batch prediction use, so an upload reaches the model as the same file does
through `imgclf predict`. Unlike them the service decodes straight to pixels (no re-encoded file
to decode again), reduced when the image is far larger than the model's input; THE resize
(imgclf.model.preprocess) then takes them (`model_inputs`). The service takes the stills
of formats.py of at most 8 bits a channel, and sets no minimum side; each rejection reason has
its error code (`REASON_CODES`; errors.py gives its HTTP status). Never raises anything but
`ServiceError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from imgclf.data.standardise import (
    Decoded,
    ForModel,
    ImageRejected,
    Limits,
    Reason,
    open_for_model,
)
from imgclf.model.preprocess import resize_and_scale
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
class Upload:
    """One uploaded file as the request carried it."""

    data: bytes
    content_type: str | None  # as declared (a multipart part's or the body's); None: none


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int  # per image
    max_pixels: int  # per image, width x height from the header
    max_decoded_pixels: int  # one request's images, in total, as decoded


@dataclass(frozen=True)
class ValidatedImage:
    """What the prediction log keeps of an upload."""

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


def decoded_uploads(
    uploads: Sequence[Upload], limits: UploadLimits, side: int
) -> Iterator[tuple[ValidatedImage, np.ndarray]]:
    """Each upload checked and decoded for a model of `side` x `side` pixels, one at a time (so
    the caller need keep only what it uses of each): what the log keeps, and the pixels. All
    the images' decoded pixels count against one budget, checked before each one decodes; a
    refusal names the image's position."""
    budget = limits.max_decoded_pixels
    for index, upload in enumerate(uploads):
        try:
            opened = open_upload(upload, limits, side)
            if opened.decoded_pixels > budget:
                raise ServiceError(
                    ErrorCode.TOO_MANY_PIXELS,
                    f"the request's images decode to over {limits.max_decoded_pixels} pixels",
                )
            budget -= opened.decoded_pixels
            decoded = _decode(opened)
        except ServiceError as exc:
            raise ServiceError(exc.code, exc.detail, index) from exc
        sha256 = hashlib.sha256(upload.data).hexdigest()
        yield ValidatedImage(sha256, decoded.width, decoded.height), decoded.pixels


def model_inputs(
    uploads: Sequence[Upload], limits: UploadLimits, side: int
) -> tuple[list[ValidatedImage], list[np.ndarray]]:
    """Each upload checked, decoded and through THE resize, one at a time: a request holds only
    its model inputs, never every decoded image at once."""
    images, inputs = [], []
    for image, pixels in decoded_uploads(uploads, limits, side):
        images.append(image)
        inputs.append(resize_and_scale(pixels, side))
    return images, inputs


def open_upload(upload: Upload, limits: UploadLimits, side: int) -> ForModel:
    """Check one upload's size and declared type, then its image (standardise's checks, from
    the header), set up to decode for a model of `side` pixels; `ServiceError` says why not."""
    if len(upload.data) > limits.max_bytes:
        raise ServiceError(
            ErrorCode.TOO_MANY_BYTES, f"{len(upload.data)} bytes > limit {limits.max_bytes}"
        )
    check_content_type(upload.content_type)
    try:
        return open_for_model(upload.data, service_limits(limits.max_pixels), side)
    except ImageRejected as exc:
        raise _refused(exc) from exc


def _decode(opened: ForModel) -> Decoded:
    try:
        return opened.decode()
    except ImageRejected as exc:
        raise _refused(exc) from exc


def _refused(exc: ImageRejected) -> ServiceError:
    return ServiceError(REASON_CODES[exc.reason], exc.detail)
