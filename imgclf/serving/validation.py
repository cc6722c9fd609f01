"""Upload validation: raw bytes from a client -> bytes THE preprocessing can decode, or a 4xx.

Reuses the download stage's Pillow guards (`imgclf.data.ingest`): the decompression-bomb guard is
tied to `max_pixels` and the size is read from the header BEFORE any pixel is decoded; EXIF
orientation and mode conversion are the download stage's own. A baseline-or-progressive RGB JPEG
without rotation is passed on as its original bytes, so the served probability equals evaluate's
for the same file; anything else (PNG, WebP, BMP, grayscale/CMYK/palette/alpha, EXIF-rotated) is
standardised to RGB and re-encoded as lossless PNG. Never raises anything but `InvalidImage`.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from imgclf.data.ingest import HIGH_BIT_MODES, exif_orientation, pixel_limit, to_rgb

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
_HIGH_DEPTH_MODES = HIGH_BIT_MODES | {"F", "I;16S", "I;32", "I;32L", "I;32B"}


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
    """Check, decode and standardise one upload; `InvalidImage` says why not."""
    if not data:
        raise InvalidImage(400, "empty", "the upload is empty (0 bytes)")
    if len(data) > max_bytes:
        raise InvalidImage(413, "too_many_bytes", f"{len(data)} bytes > limit {max_bytes}")
    check_content_type(content_type)
    with pixel_limit(max_pixels):
        image = _open(data, max_pixels)
        fmt = ACCEPTED_FORMATS.get(image.format or "")
        if fmt is None:
            raise InvalidImage(
                415,
                "unsupported_format",
                f"{image.format} images are not accepted; send JPEG, PNG, WebP or BMP",
            )
        width, height = image.size
        if width * height > max_pixels:  # from the header: nothing decoded yet
            raise InvalidImage(
                413, "too_many_pixels", f"{width}x{height} > limit of {max_pixels} pixels"
            )
        if getattr(image, "is_animated", False) and image.format != "MPO":
            raise InvalidImage(
                422, "animated", f"animated {image.format} ({image.n_frames} frames); send a still"
            )
        if image.mode in _HIGH_DEPTH_MODES or _png_bit_depth(image) > 8:
            raise InvalidImage(
                422, "high_bit_depth", f"{image.mode} (16-bit or float) images are not accepted"
            )
        try:
            rotated = exif_orientation(image) != 1
            if image.format == "JPEG" and image.mode == "RGB" and not rotated:
                # Passed on as is, so its pixels are only checked here: decode every entropy-
                # coded block (truncation and corruption fail as at full size) but at 1/8 scale,
                # skipping the full-size IDCT and colour conversion that nothing would use.
                image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                image.load()
                model_bytes, converted = data, False
            else:
                image.load()
                model_bytes, converted = _to_png(image, rotated), True
        except Image.DecompressionBombError as exc:
            raise InvalidImage(413, "too_many_pixels", str(exc)) from exc
        except OSError as exc:
            if "truncated" in str(exc):
                raise InvalidImage(422, "truncated", "the image data is truncated") from exc
            raise InvalidImage(422, "corrupt", f"cannot decode the image: {exc}") from exc
        except Exception as exc:  # decoders raise SyntaxError, ValueError, ...
            raise InvalidImage(422, "corrupt", f"cannot decode the image: {exc}") from exc
    if converted:
        width, height = Image.open(io.BytesIO(model_bytes)).size
    return ValidatedImage(
        model_bytes=model_bytes,
        sha256=hashlib.sha256(data).hexdigest(),
        width=width,
        height=height,
        format=fmt,
        converted=converted,
    )


def _open(data: bytes, max_pixels: int) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise InvalidImage(413, "too_many_pixels", f"over the {max_pixels} pixel limit") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImage(415, "not_an_image", "the upload is not a recognised image") from exc
    except Exception as exc:  # garbage headers raise many kinds
        raise InvalidImage(422, "corrupt", f"cannot read the image header: {exc}") from exc


def _png_bit_depth(image: Image.Image) -> int:
    """16-bit RGB(A) PNGs open as 8-bit modes in Pillow; the IHDR says the truth."""
    if image.format != "PNG":
        return 8
    fp = getattr(image, "fp", None)
    try:
        position = fp.tell()
        fp.seek(24)
        depth = fp.read(1)[0]
        fp.seek(position)
        return depth
    except Exception:
        return 8


def _to_png(image: Image.Image, rotated: bool) -> bytes:
    if rotated:
        image = ImageOps.exif_transpose(image)
    rgb, _ = to_rgb(image)
    buffer = io.BytesIO()
    rgb.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()
