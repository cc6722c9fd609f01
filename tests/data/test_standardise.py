"""THE standardisation (imgclf/data/standardise.py) on its own: clean bytes pass unchanged,
anything else becomes clean RGB with the reasons, and a bad file gets one reason code whichever
caller's limits apply."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from imgclf.config import PROJECT_ROOT
from imgclf.data.standardise import ImageRejected, Limits, Reason, standardise
from imgclf.serving.validation import service_limits
from tests.support.photos import ORIENTATION_TAG, STORED_AS, encode, stored_with_tag

# The callers' limits: the download stage's (max_pixels, min_side from params) and the service's.
DOWNLOAD = Limits(max_pixels=1_000_000, min_side=32)
SERVICE = service_limits(max_pixels=1_000_000)


def photo(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def pixels(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.mode == "RGB"
    return np.asarray(image)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body)
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def png_16_bit_rgb(width: int, height: int) -> bytes:
    """A 16-bit RGB PNG (mid gray), which Pillow reads but cannot write."""
    row = b"\0" + b"\x80\x00" * 3 * width  # filter byte, then 16-bit big-endian samples
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
        + png_chunk(b"IDAT", zlib.compress(row * height))
        + png_chunk(b"IEND", b"")
    )


def png_header_only(width: int, height: int) -> bytes:
    """A gray PNG's header claiming width x height, with no pixel data: fine while nothing
    decodes it."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b"")


def jpeg_with_corrupt_exif() -> bytes:
    """A JPEG whose EXIF claims 32 entries but holds one: Pillow warns "Corrupt EXIF data"."""
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6
    data = bytearray(encode(photo(), "JPEG", exif=exif.tobytes()))
    entries = data.index(b"Exif\0\0MM") + 14  # after the TIFF header: the entry count
    data[entries : entries + 2] = struct.pack(">H", 32)
    return bytes(data)


def reason(data: bytes, limits: Limits) -> Reason:
    with pytest.raises(ImageRejected) as caught:
        standardise(data, limits)
    assert caught.value.detail and "\n" not in caught.value.detail
    return caught.value.reason


def test_a_clean_jpeg_passes_as_its_own_bytes() -> None:
    data = encode(photo(), "JPEG")
    clean = standardise(data, DOWNLOAD)
    assert (clean.data, clean.changes) == (data, ())
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
        (encode(Image.new("1", (3000, 3000)), "PNG"), Reason.TOO_MANY_PIXELS),  # tiny file
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


def test_no_warning_is_silenced_while_images_are_in_flight() -> None:
    """Batch prediction and the service standardise in threads: a warning from another thread
    is still seen meanwhile, and the filters are left as they were."""
    before = list(warnings.filters)
    files = [jpeg_with_corrupt_exif()] * 8
    files += [encode(photo(seed=n), "PNG" if n % 2 else "JPEG") for n in range(32)]
    with ThreadPoolExecutor(8) as pool, warnings.catch_warnings(record=True) as caught:
        in_flight = [pool.submit(standardise, data, SERVICE) for data in files * 4]
        sent = 0
        while sent == 0 or not all(future.done() for future in in_flight):
            warnings.warn(f"another thread's warning {sent}", UserWarning, stacklevel=1)
            sent += 1
        standardised = [future.result() for future in in_flight]
    assert len(standardised) == len(files) * 4
    seen = [str(w.message) for w in caught if "another thread" in str(w.message)]
    assert seen == [f"another thread's warning {n}" for n in range(sent)]
    assert list(warnings.filters) == before


def test_pillows_complaints_about_a_file_are_filtered_in_a_fresh_process(tmp_path: Path) -> None:
    """The filter is set when the module is imported; pytest resets filters after collecting,
    so only a process of its own shows what the service and `imgclf predict` print."""
    damaged = tmp_path / "corrupt_exif.jpg"
    damaged.write_bytes(jpeg_with_corrupt_exif())
    script = (
        "import sys; from pathlib import Path; "
        "from imgclf.data.standardise import Limits, standardise; "
        "standardise(Path(sys.argv[1]).read_bytes(), Limits(1_000_000))"
    )
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(damaged)],
        cwd=PROJECT_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (result.returncode, result.stderr) == (0, "")


def test_pillows_own_guard_never_refuses_what_the_caller_allows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pillow refuses to open over 2 x Image.MAX_IMAGE_PIXELS (process-wide, 179M by default);
    a caller allowing more gets its own checks, here the minimum side, not Pillow's refusal."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # put back after
    huge = png_header_only(20_000, 10_000)  # 200M pixels, never decoded
    assert reason(huge, Limits(max_pixels=300_000_000, min_side=20_001)) == Reason.TOO_SMALL
    assert reason(huge, DOWNLOAD) == Reason.TOO_MANY_PIXELS
