"""THE image standardisation: an image file's bytes -> clean RGB image bytes and what was changed,
or ONE rejection reason.

The download stage (`imgclf.data.ingest`), batch prediction (`imgclf.model.batch_predict`) and
the service (`imgclf.serving.validation`) all call `standardise`, so a photo reaches the model
the same way whichever door it came in by. They differ only in their `Limits` and in how a
re-encoded image is stored.

Clean means 8-bit RGB, EXIF orientation applied (and the tag gone), alpha flattened on white. A
baseline RGB JPEG without rotation is already clean and is passed on as its original bytes: no
second loss, and the same bytes give the same probability everywhere. Anything else is decoded
once and re-encoded, as JPEG at `jpeg_quality` (the download stage's storage) or, by default,
as lossless PNG (prediction: the pixels the model sees are exactly the decoded ones).

Safety comes first: the size is read from the header and checked against `max_pixels` BEFORE
any pixel is decoded, so a bomb is never decoded (Pillow's own guard stays as a backstop).
Decoding is strict: a truncated file is rejected (Pillow's `ImageFile.LOAD_TRUNCATED_IMAGES` stays
off: nothing in the project turns it on), and a JPEG is rejected on any libjpeg warning (garbage in
the scan, a header larger than its data), which libjpeg would otherwise paper over with made-up
pixels and Pillow would never report.
Multi-frame images (animated GIF/PNG/WebP, multi-page TIFF) are rejected rather than reduced to
their first frame: a first frame is often blank or a title card, and a label may describe the
motion. MPO files (phone JPEGs with an embedded preview) are not animations: their primary image
is kept.

The service does not need the clean file, only the pixels a model sees: `open_for_model` runs
the same checks and `ForModel.decode` the same cleaning (orientation, RGB, alpha), straight to
pixels, with no re-encode. An image far larger than the model's input is decoded reduced by a
whole factor (JPEG: libjpeg's DCT scaling through Pillow's `draft`; others: `Image.reduce` after
decoding), so an upload's cost follows the model's size rather than the pixel count it claims.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

_ORIENTATION = 0x0112  # EXIF tag
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
# Pillow modes holding more than 8 bits per channel; 16-bit RGB(A) PNGs open as 8-bit modes
# and are recognised from their header instead.
_HIGH_BIT_MODES = _SIXTEEN_BIT_MODES | {"F", "I;16S", "I;32", "I;32L", "I;32B"}
_JPEG_FORMATS = {"JPEG", "MPO"}  # MPO: a JPEG stream first (the primary image), then previews
_TURNED_SIDEWAYS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
# `open_for_model` reduces only while both sides stay at least this many times the model's side:
# box-reducing, then THE (antialiased bilinear) resize, then differs from resizing the full image
# by under 2/255 per pixel (mean under 0.3/255; measured on 1/f^2 noise from 800x600 to
# 3000x2000, to 48 and 224 px), far less than a JPEG re-encode moves pixels. Photos under 16x the
# model's side decode exactly as the pipeline decodes them.
REDUCING_GAP = 8

# Pillow's complaints about a damaged file ("Corrupt EXIF data", "Truncated File Read", a
# decompression bomb over our own limit, ...) add nothing to the Reason `standardise` gives, and
# would be logged once per upload. A permanent filter on Pillow's own modules, set once at import:
# switching filters per image is process-wide and races with other threads' catch_warnings.
warnings.filterwarnings("ignore", module=r"PIL\.")
_bomb_limit_lock = threading.Lock()


class Reason(StrEnum):
    """Why an image cannot be standardised: ONE code per cause, everywhere."""

    EMPTY = "empty"
    NOT_AN_IMAGE = "not_an_image"  # no image format recognised
    UNSUPPORTED_FORMAT = "unsupported_format"  # an image, but not a format the caller takes
    CORRUPT = "corrupt"
    TRUNCATED = "truncated"
    TOO_MANY_PIXELS = "too_many_pixels"  # width x height over max_pixels (from the header)
    TOO_SMALL = "too_small"  # a side under min_side
    ANIMATED = "animated"
    HIGH_BIT_DEPTH = "high_bit_depth"  # 16-bit or float, where the caller does not scale them


class ImageRejected(Exception):
    """An image `standardise` will not pass on: one `reason` and a one-line `detail`."""

    def __init__(self, reason: Reason, detail: object) -> None:
        self.reason = reason
        self.detail = " ".join(str(detail).split())[:300]
        super().__init__(f"{reason}: {self.detail}")


@dataclass(frozen=True)
class Limits:
    """What an image must satisfy; the callers differ only here."""

    max_pixels: int
    min_side: int = 1
    formats: frozenset[str] | None = None  # Pillow format names taken; None: any it can read
    scale_high_bit_depth: bool = True  # 16-bit/float scaled to 8 bits; False: rejected


@dataclass(frozen=True)
class Standardised:
    """A clean image: `data` are the original bytes exactly when `changes` is empty."""

    data: bytes
    width: int  # after EXIF orientation
    height: int
    changes: tuple[str, ...]  # why it was re-encoded: png, progressive, exif_rotated, cmyk, ...


def standardise(data: bytes, limits: Limits, *, jpeg_quality: int | None = None) -> Standardised:
    """Check, decode once and clean one image; `ImageRejected` says why not. Re-encoded images
    become JPEG at `jpeg_quality`, or lossless PNG when it is None. Raises nothing else."""
    image = _checked(data, limits)
    with _rejected_as_reasons():
        return _clean(image, data, jpeg_quality)


@dataclass(frozen=True)
class Decoded:
    """The pixels a model sees and the image's own size (after EXIF orientation)."""

    pixels: np.ndarray  # (height, width, 3) uint8 RGB, maybe reduced: not width x height
    width: int
    height: int


@dataclass(frozen=True)
class ForModel:
    """An image that passed `standardise`'s checks, opened to decode for a model (a JPEG already
    set to its DCT scale), with no pixel decoded yet."""

    image: Image.Image
    size: tuple[int, int]  # from the header, before EXIF orientation
    reduce_by: int  # the whole factor to reduce by after decoding (1: none)

    @property
    def decoded_pixels(self) -> int:
        """How many pixels decoding produces (the work it costs), known before decoding."""
        width, height = self.image.size
        return width * height

    def decode(self) -> Decoded:
        """Decode, orient and clean as `standardise` does (RGB, alpha flattened on white), then
        reduce by `reduce_by`; `ImageRejected` for data that does not decode."""
        with _rejected_as_reasons():
            image = self.image
            image.load()  # before reading EXIF: Pillow reads a PNG's by decoding it
            width, height = self.size
            orientation = exif_orientation(image)
            if orientation != 1:
                image = ImageOps.exif_transpose(image)
                if orientation in _TURNED_SIDEWAYS:
                    width, height = height, width
            image, _ = to_rgb(image)
            if self.reduce_by > 1:
                image = image.reduce(self.reduce_by)
            return Decoded(np.asarray(image), width, height)


def open_for_model(data: bytes, limits: Limits, side: int) -> ForModel:
    """Check one image as `standardise` does, then set it up to decode for a model whose input
    is `side` x `side`: reduced by the largest whole factor (a JPEG: 2, 4 or 8) that keeps both
    sides at least REDUCING_GAP x `side`. `ImageRejected` says why not."""
    image = _checked(data, limits)
    size = image.size
    floor = REDUCING_GAP * side
    if image.format in _JPEG_FORMATS:
        with _rejected_as_reasons():
            image.draft(None, (floor, floor))  # libjpeg scales while decoding: no factor left
        return ForModel(image, size, reduce_by=1)
    return ForModel(image, size, reduce_by=max(min(size) // floor, 1))


def _checked(data: bytes, limits: Limits) -> Image.Image:
    """The opened image, once every check that decodes no pixel (and a JPEG's strict scan of
    its entropy-coded data) passed."""
    if not data:
        raise ImageRejected(Reason.EMPTY, "0 bytes")
    _allow_pixels(limits.max_pixels)
    image = _open(data, limits.max_pixels)
    with _rejected_as_reasons():
        _check_header(image, limits)
        if image.format in _JPEG_FORMATS:
            _decode_jpeg_strictly(data)
    return image


@contextlib.contextmanager
def _rejected_as_reasons() -> Iterator[None]:
    """Whatever a decoder raises inside, as ONE rejection reason."""
    try:
        yield
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:  # a frame larger than the header said
        raise ImageRejected(Reason.TOO_MANY_PIXELS, exc) from exc
    except OSError as exc:
        truncated = "truncated" in str(exc)
        reason = Reason.TRUNCATED if truncated else Reason.CORRUPT
        raise ImageRejected(reason, f"{type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # decoders raise SyntaxError, ValueError, ...
        raise ImageRejected(Reason.CORRUPT, f"{type(exc).__name__}: {exc}") from exc


def _allow_pixels(max_pixels: int) -> None:
    """Keep Pillow's process-wide bomb guard (it refuses to open over 2 x MAX_IMAGE_PIXELS) from
    refusing what a caller allows. Only ever raised, so no thread sees it drop under the limit
    it relies on; each caller's exact limit is `_check_header`'s, before any decoding. The guard
    stays as the backstop for a frame or tile larger than the header said."""
    with _bomb_limit_lock:
        if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
            Image.MAX_IMAGE_PIXELS = max_pixels


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Read the header only."""
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageRejected(Reason.TOO_MANY_PIXELS, f"over max_pixels {max_pixels}") from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected(
            Reason.NOT_AN_IMAGE, f"unknown format, starts with {data[:12]!r}"
        ) from exc
    except Exception as exc:  # garbage headers raise many kinds
        raise ImageRejected(Reason.CORRUPT, f"{type(exc).__name__}: {exc}") from exc


def _check_header(image: Image.Image, limits: Limits) -> None:
    """Every check that needs no pixel: format, size, frames, bit depth."""
    if limits.formats is not None and image.format not in limits.formats:
        taken = ", ".join(sorted(limits.formats))
        raise ImageRejected(
            Reason.UNSUPPORTED_FORMAT, f"{image.format} images are not accepted ({taken})"
        )
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageRejected(
            Reason.TOO_MANY_PIXELS, f"{width}x{height} > max_pixels {limits.max_pixels}"
        )
    if getattr(image, "is_animated", False) and image.format != "MPO":
        raise ImageRejected(Reason.ANIMATED, f"{image.format} with {image.n_frames} frames")
    if not limits.scale_high_bit_depth and _high_bit_depth(image):
        raise ImageRejected(Reason.HIGH_BIT_DEPTH, f"{image.mode} image of over 8 bits a channel")
    if min(width, height) < limits.min_side:
        raise ImageRejected(Reason.TOO_SMALL, f"{width}x{height} < min_side {limits.min_side}")


def _decode_jpeg_strictly(data: bytes) -> None:
    """Decode every entropy-coded block with libjpeg's warnings as errors. On damaged data
    libjpeg warns and goes on ("Corrupt JPEG data: N extraneous bytes before marker", "premature
    end of data segment" when the header claims more rows than the data holds, then gray rows),
    and Pillow discards its warnings; simplejpeg's strict mode raises them. At the smallest DCT
    scale (1/8) and in gray: every block is still read, but no full-size IDCT or colour
    conversion is done for a check."""
    try:
        # The smallest scale that keeps one pixel a side: 1/8.
        simplejpeg.decode_jpeg(data, colorspace="GRAY", min_height=1, min_width=1, strict=True)
    except ValueError as exc:
        truncated = str(exc).startswith("Premature end of JPEG file")
        raise ImageRejected(Reason.TRUNCATED if truncated else Reason.CORRUPT, exc) from exc


def _high_bit_depth(image: Image.Image) -> bool:
    """Over 8 bits a channel; 16-bit RGB(A) PNGs open as 8-bit modes, so their header says it."""
    if image.mode in _HIGH_BIT_MODES:
        return True
    if image.format != "PNG":
        return False
    position = image.fp.tell()
    image.fp.seek(24)  # IHDR's bit depth byte
    depth = image.fp.read(1)[0]
    image.fp.seek(position)
    return depth > 8


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1 = upright); unreadable EXIF counts as upright rather than lose
    the pixels."""
    try:
        value = image.getexif().get(_ORIENTATION, 1)
    except Exception:
        return 1
    return value if value in range(2, 9) else 1


def _clean(image: Image.Image, data: bytes, jpeg_quality: int | None) -> Standardised:
    fmt = image.format or "unknown"
    progressive = bool(image.info.get("progressive") or image.info.get("progression"))
    if fmt == "JPEG" and image.mode == "RGB" and not progressive and exif_orientation(image) == 1:
        return Standardised(data, *image.size, ())  # clean, and known to decode (strictly)
    changes = [] if fmt == "JPEG" else [fmt.lower()]
    if progressive:
        changes.append("progressive")
    # Decode before reading EXIF: Pillow reads a PNG's EXIF by decoding it, hiding its errors.
    image.load()
    icc = image.info.get("icc_profile")
    keep_icc = isinstance(icc, bytes) and icc[16:20] == b"RGB "  # a CMYK/gray profile lies on RGB
    if exif_orientation(image) != 1:
        image = ImageOps.exif_transpose(image)
        changes.append("exif_rotated")
    image, mode_changes = to_rgb(image)
    encoded = _encode(image, jpeg_quality, icc if keep_icc else None)
    return Standardised(encoded, *image.size, (*changes, *mode_changes))


def to_rgb(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """Any Pillow mode -> 8-bit RGB, alpha flattened on white; and what that changed."""
    changes = []
    if image.mode == "P":
        changes.append("palette")
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in _SIXTEEN_BIT_MODES:
        changes.append("16bit")
        # convert("L") would clip 16-bit values at 255 instead of scaling them.
        wide = np.asarray(image).astype(np.int64)
        image = Image.fromarray(((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8))
    elif image.mode == "F":
        changes.append("float")
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
    elif image.mode == "1":
        changes.append("bilevel")
        image = image.convert("L")
    if image.mode in ("L", "LA", "La"):
        changes.append("grayscale")
    elif image.mode not in ("RGB", "RGBA", "RGBa"):
        changes.append(image.mode.lower())  # cmyk, ycbcr, lab, hsv
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        changes.append("alpha_flattened")
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat, changes
    return image.convert("RGB"), changes


def _encode(image: Image.Image, jpeg_quality: int | None, icc: bytes | None) -> bytes:
    buffer = io.BytesIO()
    if jpeg_quality is None:
        # compress_level 1: lossless either way, and several times faster than the default.
        image.save(buffer, "PNG", compress_level=1, icc_profile=icc)
    else:
        image.save(buffer, "JPEG", quality=jpeg_quality, icc_profile=icc)
    return buffer.getvalue()
