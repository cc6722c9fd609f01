"""The image formats the service takes: one list, which validation checks, the OpenAPI document
declares and every message names."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageFormat:
    name: str  # as users know it
    pillow_names: tuple[str, ...]  # Pillow's format names for it
    media_types: tuple[str, ...]  # Content-Types clients declare it with; the first is standard


FORMATS = (
    # MPO is a phone JPEG with an embedded preview: its first frame is the photo.
    ImageFormat("JPEG", ("JPEG", "MPO"), ("image/jpeg", "image/jpg", "image/pjpeg")),
    ImageFormat("PNG", ("PNG",), ("image/png",)),
    ImageFormat("WebP", ("WEBP",), ("image/webp",)),
    ImageFormat("BMP", ("BMP",), ("image/bmp", "image/x-bmp", "image/x-ms-bmp")),
)
UNDECLARED = "application/octet-stream"  # clients that do not know: the bytes decide

PILLOW_NAMES = frozenset(name for f in FORMATS for name in f.pillow_names)
ACCEPTED_MEDIA_TYPES = frozenset({UNDECLARED, *(media for f in FORMATS for media in f.media_types)})
STANDARD_MEDIA_TYPES = tuple(f.media_types[0] for f in FORMATS)
FORMAT_NAMES = ", ".join(f.name for f in FORMATS[:-1]) + f" or {FORMATS[-1].name}"
