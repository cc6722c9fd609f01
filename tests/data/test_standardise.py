"""THE standardisation (imgclf/data/standardise.py) on its own: clean bytes pass unchanged,
anything else becomes clean RGB with the reasons, and a bad file gets one reason code whichever
caller's limits apply."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageFile

from imgclf.data.standardise import ImageRejected, Limits, Reason, standardise
from tests.support.photos import ORIENTATION_TAG, STORED_AS, encode, stored_with_tag

# The callers' limits: the download stage's and the service's (imgclf/serving/validation.py).
DOWNLOAD = Limits(max_pixels=1_000_000, min_side=32)
SERVICE = Limits(
    max_pixels=1_000_000,
    formats=frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP"}),
    scale_high_bit_depth=False,
)


def photo(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def pixels(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.mode == "RGB"
    return np.asarray(image)


def png_16_bit_rgb(width: int, height: int) -> bytes:
    """A 16-bit RGB PNG (mid gray), which Pillow reads but cannot write."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    row = b"\0" + b"\x80\x00" * 3 * width  # filter byte, then 16-bit big-endian samples
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def reason(data: bytes, limits: Limits) -> Reason:
    with pytest.raises(ImageRejected) as caught:
        standardise(data, limits)
    assert caught.value.detail and "\n" not in caught.value.detail
    return caught.value.reason


def test_a_clean_jpeg_passes_as_its_own_bytes() -> None:
    data = encode(photo(), "JPEG")
    clean = standardise(data, DOWNLOAD)
    assert (clean.data, clean.changes, clean.source_format) == (data, (), "JPEG")
    assert (clean.width, clean.height) == (64, 48)


def test_re_encoding_is_lossless_png_unless_a_jpeg_quality_is_given() -> None:
    image = photo()
    clean = standardise(encode(image, "WEBP", lossless=True), DOWNLOAD)
    assert clean.changes == ("webp",) and clean.data.startswith(b"\x89PNG")
    assert np.array_equal(pixels(clean.data), np.asarray(image))
    stored = standardise(encode(image, "WEBP", lossless=True), DOWNLOAD, jpeg_quality=90)
    assert Image.open(io.BytesIO(stored.data)).format == "JPEG"


@pytest.mark.parametrize("orientation", sorted(STORED_AS))
def test_every_exif_orientation_gives_the_upright_pixels(orientation: int) -> None:
    upright = photo()
    clean = standardise(stored_with_tag(upright, orientation, "PNG"), DOWNLOAD)
    assert clean.changes == ("png", "exif_rotated")
    assert (clean.width, clean.height) == upright.size
    assert np.array_equal(pixels(clean.data), np.asarray(upright))
    assert ORIENTATION_TAG not in Image.open(io.BytesIO(clean.data)).getexif()


def test_alpha_is_flattened_on_white_and_cmyk_becomes_rgb() -> None:
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 255))
    rgba.paste((0, 0, 255, 0), (0, 0, 20, 40))  # left half fully transparent
    clean = standardise(encode(rgba, "PNG"), SERVICE)
    assert clean.changes == ("png", "alpha_flattened")
    assert pixels(clean.data)[20, 5].tolist() == [255, 255, 255]
    assert pixels(clean.data)[20, 35].tolist() == [255, 0, 0]
    cmyk = standardise(encode(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG"), SERVICE)
    assert cmyk.changes == ("cmyk",)
    red, green, blue = pixels(cmyk.data)[20, 20]
    assert red > 230 and green < 25 and blue < 25


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", Reason.EMPTY),
        (b"plain text, not an image" * 4, Reason.NOT_AN_IMAGE),
        (encode(photo(400, 300), "JPEG")[:5000], Reason.TRUNCATED),
        (encode(Image.new("RGB", (1001, 1000)), "PNG"), Reason.TOO_MANY_PIXELS),
        (encode(Image.new("1", (3000, 3000)), "PNG"), Reason.TOO_MANY_PIXELS),  # Pillow's guard
        (
            encode(photo(), "PNG", save_all=True, append_images=[photo(seed=1)]),
            Reason.ANIMATED,
        ),
    ],
    ids=["empty", "text", "truncated", "pixels", "bomb", "animated"],
)
def test_one_reason_per_cause_for_every_caller(data: bytes, expected: Reason) -> None:
    assert reason(data, DOWNLOAD) == reason(data, SERVICE) == expected


def test_a_corrupt_png_is_rejected_although_reading_its_exif_hides_the_error() -> None:
    data = bytearray(encode(photo(), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 20 : idat + 40] = b"\xff" * 20  # breaks the zlib stream and the CRC
    assert reason(bytes(data), DOWNLOAD) == Reason.CORRUPT


def test_the_pixel_limit_is_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("decoded an image over the pixel limit")

    big = encode(Image.new("RGB", (1001, 1000)), "PNG")
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    assert reason(big, DOWNLOAD) == Reason.TOO_MANY_PIXELS


def test_callers_choose_formats_depth_and_minimum_side() -> None:
    gif = encode(photo(), "GIF")
    assert standardise(gif, DOWNLOAD).changes == ("gif", "palette")
    assert reason(gif, SERVICE) == Reason.UNSUPPORTED_FORMAT

    deep_gray = encode(Image.fromarray(np.full((40, 40), 32896, np.uint16)), "PNG")
    assert standardise(deep_gray, DOWNLOAD).changes == ("png", "16bit", "grayscale")
    assert reason(deep_gray, SERVICE) == Reason.HIGH_BIT_DEPTH
    deep_rgb = png_16_bit_rgb(40, 40)
    assert Image.open(io.BytesIO(deep_rgb)).mode == "RGB"  # Pillow hides the depth ...
    assert reason(deep_rgb, SERVICE) == Reason.HIGH_BIT_DEPTH  # ... the header says it

    tiny = encode(photo(16, 40), "JPEG")
    assert reason(tiny, DOWNLOAD) == Reason.TOO_SMALL
    assert standardise(tiny, SERVICE).changes == ()


def test_standardising_in_threads_leaves_pillow_and_warnings_as_they_were() -> None:
    """Batch prediction and the service standardise in threads; the bomb guard and the silenced
    warnings are process-wide, so they must come back exactly when the last image is done."""
    before = (Image.MAX_IMAGE_PIXELS, list(warnings.filters))
    files = [encode(photo(seed=n), "PNG" if n % 2 else "JPEG") for n in range(32)]
    with ThreadPoolExecutor(8) as pool:
        for _ in range(5):
            assert len(list(pool.map(lambda data: standardise(data, SERVICE), files))) == 32
    assert (Image.MAX_IMAGE_PIXELS, list(warnings.filters)) == before
