"""An upload's decoding costs what the model needs, not what the image claims: the service decodes
straight to pixels (no re-encoded file to decode again), a JPEG at the DCT scale
and any other image reduced by a whole factor when it is far larger than the model's input, and
one request's images decode to at most serve.max_decoded_pixels in all.

What the model sees stays the pipeline's: THE resize (imgclf.model.preprocess) of the same
pixels, exactly, for ordinary photos; for a large image reduced first, closer to the pipeline's
input than a quality-90 JPEG re-encode brings a typical photo's, a change the invariance tests
(tests/integration/test_serving_invariance.py) already accept. Then, over HTTP against the
session's shared `bentoml serve` (tests/support/service.py), the request budget.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from imgclf.data.standardise import REDUCING_GAP
from imgclf.serving.validation import Upload, UploadLimits, decoded_uploads, open_upload
from tests.support.helpers import textured_image
from tests.support.photos import FLOAT_NOISE
from tests.support.service import MAX_DECODED_PIXELS, MAX_PIXELS, LiveService, auth

LIMITS = UploadLimits(max_bytes=50_000_000, max_pixels=40_000_000, max_decoded_pixels=10**9)
SIDES = (48, 224)  # the tests' tiny models and the production model


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def service_input(data: bytes, side: int) -> np.ndarray:
    """What the service feeds the model: its decoded pixels through THE resize."""
    from imgclf.model.preprocess import resize_and_scale

    ((_, pixels),) = decoded_uploads([Upload(data, None)], LIMITS, side)
    return resize_and_scale(pixels, side)


def pipeline_input(data: bytes, side: int) -> np.ndarray:
    """What batch prediction feeds the model: the standardised file through THE preprocessing."""
    from imgclf.data.standardise import standardise
    from imgclf.model.preprocess import preprocess_bytes
    from imgclf.serving.validation import service_limits

    clean = standardise(data, service_limits(LIMITS.max_pixels))
    return preprocess_bytes(clean.data, side)


@pytest.fixture(scope="module")
def photos(sample_data_dir: Path) -> list[bytes]:
    return [
        path.read_bytes()
        for label in ("cat", "dog")
        for path in sorted((sample_data_dir / label).glob("*.jpg"))[:4]
    ]


@pytest.mark.parametrize("side", SIDES)
def test_an_ordinary_photo_reaches_the_model_exactly_as_in_the_pipeline(
    photos: list[bytes], side: int
) -> None:
    for data in photos:
        photo = Image.open(io.BytesIO(data))
        turned = encode(photo, "JPEG", quality=95, exif=_turned_exif())
        for variant in (data, encode(photo, "PNG"), turned):
            difference = np.abs(service_input(variant, side) - pipeline_input(variant, side))
            assert difference.max() <= FLOAT_NOISE


def _turned_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: "rotate 90 clockwise to view"
    return exif


@pytest.fixture(scope="module")
def large_photo() -> Image.Image:
    """A photo-like image far over REDUCING_GAP x 224 on both sides."""
    return textured_image(3, 1200, 1000).resize((4800, 4000), Image.Resampling.BICUBIC)


def re_encode_change(photos: list[bytes], side: int) -> tuple[float, float]:
    """How far a quality-90 re-encode moves the sample photos' model inputs, the median photo's:
    (largest change, mean change)."""
    changes = [
        np.abs(pipeline_input(encode(Image.open(io.BytesIO(data)), "JPEG", quality=90), side)
               - pipeline_input(data, side))
        for data in photos
    ]  # fmt: skip
    return (
        float(np.median([change.max() for change in changes])),
        float(np.median([change.mean() for change in changes])),
    )


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_large_image_decodes_reduced_and_within_a_re_encodes_change(
    large_photo: Image.Image, photos: list[bytes], fmt: str, side: int
) -> None:
    data = encode(large_photo, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    opened = open_upload(Upload(data, None), LIMITS, side)
    # At most 2 x (gap x side) a side is decoded, or kept after reducing (whole factors).
    reduced = opened.decoded_pixels if fmt == "JPEG" else _pixels(opened.decode().pixels)
    assert reduced <= (2 * REDUCING_GAP * side) ** 2 < 4800 * 4000
    change = np.abs(service_input(data, side) - pipeline_input(data, side))
    largest, mean = re_encode_change(photos, side)
    assert change.max() <= largest and change.mean() <= mean


def _pixels(pixels: np.ndarray) -> int:
    return pixels.shape[0] * pixels.shape[1]


def palette_png(width: int, height: int) -> bytes:
    """A flat-coloured palette PNG: a few kilobytes that decode to width x height pixels."""
    image = Image.new("P", (width, height), 1)
    image.putpalette([0, 0, 0, 200, 120, 40] + [0] * 762)
    return encode(image, "PNG")


def test_a_request_decodes_at_most_its_pixel_budget(live_service: LiveService) -> None:
    side = int(MAX_PIXELS**0.5)
    per_image = side * side
    fits = MAX_DECODED_PIXELS // per_image
    assert fits >= 1
    data = palette_png(side, side)
    files = [("images", (f"{n}.png", data, "image/png")) for n in range(fits + 1)]
    refused = requests.post(
        live_service.url + "/predict_batch", files=files, headers=auth(), timeout=60
    )
    body = refused.json()
    assert (refused.status_code, body["error"], body["index"]) == (413, "too_many_pixels", fits)
    assert str(MAX_DECODED_PIXELS) in body["detail"]
    within = requests.post(
        live_service.url + "/predict_batch", files=files[:fits], headers=auth(), timeout=60
    )
    assert within.status_code == 200, within.text
    assert [row["index"] for row in within.json()] == list(range(fits))
