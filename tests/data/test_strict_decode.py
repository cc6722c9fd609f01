"""Strict decoding in THE standardisation (imgclf/data/standardise.py): JPEGs that libjpeg only
warns about, and that Pillow alone decodes into made-up pixels, are rejected. The damaged files
are built from a real shared photo; the real photos and every legitimate JPEG variant still pass.
"""

from __future__ import annotations

import ast
import io
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from imgclf.config import PROJECT_ROOT
from imgclf.data.standardise import ImageRejected, Limits, Reason, standardise
from imgclf.serving.validation import service_limits
from tests.support.photos import encode

# The callers' limits: the download stage's (params.yaml `download:`) and the service's.
DOWNLOAD = Limits(max_pixels=40_000_000, min_side=32)
SERVICE = service_limits(max_pixels=25_000_000)
CALLERS = pytest.mark.parametrize("limits", [DOWNLOAD, SERVICE], ids=["download", "service"])
SOS, SOF_MARKERS = 0xDA, {0xC0, 0xC1, 0xC2}
EOI = b"\xff\xd9"


@pytest.fixture(scope="module")
def photo(sample_data_dir: Path) -> bytes:
    """A real baseline JPEG (300x280) that passes as its own bytes."""
    return (sample_data_dir / "cat" / "cat.1.jpg").read_bytes()


def segments(jpeg: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, offset, length) of each header segment, up to and including the scan header."""
    offset = 2  # after SOI
    while True:
        marker = jpeg[offset + 1]
        (length,) = struct.unpack(">H", jpeg[offset + 2 : offset + 4])
        yield marker, offset, length
        if marker == SOS:
            return
        offset += 2 + length


def garbage_mid_scan(jpeg: bytes) -> bytes:
    """256 bytes in the middle of the entropy-coded data XOR-ed with 0x55, leaving every 0xFF
    and the byte after it alone and making none: no marker is made or broken, so libjpeg only
    warns ("Corrupt JPEG data: N extraneous bytes before marker 0xd9") and carries on."""
    _, offset, length = next(s for s in segments(jpeg) if s[0] == SOS)
    scan_start = offset + 2 + length
    middle = (scan_start + len(jpeg) - len(EOI)) // 2
    damaged = bytearray(jpeg)
    for index in range(middle, middle + 256):
        if 0xFF not in (damaged[index - 1], damaged[index], damaged[index] ^ 0x55):
            damaged[index] ^= 0x55
    return bytes(damaged)


def header_claiming(jpeg: bytes, width: int, height: int) -> bytes:
    """The frame header (SOF) rewritten to claim width x height; the scan data unchanged."""
    _, offset, _ = next(s for s in segments(jpeg) if s[0] in SOF_MARKERS)
    size_at = offset + 5  # marker (2), length (2), sample precision (1), then height and width
    return jpeg[:size_at] + struct.pack(">HH", height, width) + jpeg[size_at + 4 :]


def sixteen_pixels_square(jpeg: bytes) -> bytes:
    return encode(Image.open(io.BytesIO(jpeg)).convert("RGB").resize((16, 16)), "JPEG")


def rejection(data: bytes, limits: Limits) -> ImageRejected:
    with pytest.raises(ImageRejected) as caught:
        standardise(data, limits)
    return caught.value


def pillow_decodes(data: bytes) -> tuple[int, int]:
    """Pillow decodes `data` at 1/8 scale without complaint (what passed it before)."""
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (image.width // 8, image.height // 8))
    image.load()
    return image.size


@CALLERS
def test_garbage_mid_scan_is_corrupt(photo: bytes, limits: Limits) -> None:
    damaged = garbage_mid_scan(photo)
    assert pillow_decodes(damaged)  # libjpeg only warns: Pillow alone would pass it on
    rejected = rejection(damaged, limits)
    assert rejected.reason == Reason.CORRUPT
    assert "Corrupt JPEG data" in rejected.detail


@CALLERS
def test_a_header_larger_than_its_data_is_corrupt(photo: bytes, limits: Limits) -> None:
    """16x16 pixels of data under a header claiming 5000x4999 (under both pixel limits):
    libjpeg runs out of data, warns, and makes up the remaining rows."""
    lying = header_claiming(sixteen_pixels_square(photo), 5000, 4999)
    assert Image.open(io.BytesIO(lying)).size == (5000, 4999)
    assert pillow_decodes(lying)
    rejected = rejection(lying, limits)
    assert rejected.reason == Reason.CORRUPT
    assert "premature end of data segment" in rejected.detail


def test_jpeg_truncation_is_caught_even_with_pillows_truncation_switch_on(
    photo: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing in the project turns LOAD_TRUNCATED_IMAGES on (next test); if anything did,
    a cut JPEG would still be refused, with or without an end marker appended."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    half = photo[: len(photo) // 2]
    assert rejection(half, SERVICE).reason == Reason.TRUNCATED
    assert rejection(half + EOI, SERVICE).reason == Reason.CORRUPT


def _turns_on_load_truncated_images(node: ast.AST) -> bool:
    """An assignment to, or setattr of, LOAD_TRUNCATED_IMAGES."""
    if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return any(
            getattr(t, "attr", getattr(t, "id", None)) == "LOAD_TRUNCATED_IMAGES" for t in targets
        )
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr":
        return any(
            isinstance(a, ast.Constant) and a.value == "LOAD_TRUNCATED_IMAGES" for a in node.args
        )
    return False


def test_no_project_code_turns_pillows_truncation_switch_on() -> None:
    """Pillow's LOAD_TRUNCATED_IMAGES is process-wide: one line anywhere in the code the stages
    and the service run would let truncated PNGs through as partly gray images."""
    shipped = [PROJECT_ROOT / "service.py"]
    for folder in ("imgclf", "stages"):
        shipped += sorted((PROJECT_ROOT / folder).rglob("*.py"))
    offenders = [
        f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}"
        for path in shipped
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if _turns_on_load_truncated_images(node)
    ]
    assert offenders == []
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_the_switch_detector_can_fail() -> None:
    for line in (
        "ImageFile.LOAD_TRUNCATED_IMAGES = True",
        "LOAD_TRUNCATED_IMAGES = True",
        "setattr(ImageFile, 'LOAD_TRUNCATED_IMAGES', True)",
    ):
        assert any(map(_turns_on_load_truncated_images, ast.walk(ast.parse(line)))), line


@pytest.mark.parametrize(
    ("options", "changes"),
    [
        ({"progressive": True}, ("progressive",)),
        ({"subsampling": 0, "optimize": True}, ()),
        ({"restart_marker_blocks": 4}, ()),
        ({"mode": "L"}, ("grayscale",)),
        ({"mode": "CMYK"}, ("cmyk",)),
        ({"format": "MPO", "save_all": True}, ("mpo",)),
    ],
    ids=["progressive", "444-optimized", "restart-markers", "grayscale", "cmyk", "mpo"],
)
def test_legitimate_jpeg_variants_still_pass(
    photo: bytes, options: dict[str, object], changes: tuple[str, ...]
) -> None:
    image = Image.open(io.BytesIO(photo))
    image = image.convert(options.pop("mode", "RGB"))
    fmt = options.pop("format", "JPEG")
    if options.get("save_all"):
        options["append_images"] = [image.rotate(90)]  # an MPO's second (preview) image
    assert standardise(encode(image, fmt, **options), SERVICE).changes == changes


@CALLERS
def test_the_shared_photos_still_pass(sample_data_dir: Path, limits: Limits) -> None:
    """Every tenth real photo of each class (none of the 5,000 is rejected; too slow for here)."""
    photos = [p for label in ("cat", "dog") for p in sorted((sample_data_dir / label).iterdir())]
    rejected = []
    for path in photos[::10]:
        try:
            standardise(path.read_bytes(), limits)
        except ImageRejected as exc:
            rejected.append(f"{path.name}: {exc}")
    assert rejected == []
