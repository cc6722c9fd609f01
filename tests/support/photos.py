"""Variants of one photo for the model-behaviour tests (tests/model/test_behaviour.py and
tests/integration/test_serving_invariance.py): stored turned with the EXIF tag that turns it
back, re-encoded, or as a PNG of exactly the pixels THE preprocessing decodes from a JPEG.

Plain functions: each module builds its files from them. Photo n's variant v is the file
`<n><v>.<ext>`, so a submission id (or any id n * 10 + v) says which is which.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that stores an upright photo so that a viewer honouring the
# tag shows it upright again (the inverse of what the tag asks a viewer to do).
STORED_AS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,  # mirrored
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,  # stored turned left: "rotate 90° clockwise to view"
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,  # stored turned right: "rotate 90° counter-clockwise to view"
}


# Variants 3, 6 and 8 are the EXIF turns (upside down, stored turned left, turned right).
ORIGINAL, SAME_PIXELS_PNG, QUALITY_90, PHONE_JPEG, SIDEWAYS = 0, 1, 2, 4, 7
TURNS = (3, 6, 8)

# A JPEG re-encode (quality 90, or the phone JPEG) may move a probability by at most this share of
# the spread (how far apart the model puts the original photos); every photo turned sideways must
# move by more, or the re-encode tests could not fail. Measured as shares of the spread, with
# Pillow and TensorFlow both decoding JPEGs with the accurate integer IDCT:
# - batch (tests/model/test_behaviour.py: tiny_model(64, 0), cat/dog 1-4, spread 0.084): quality
#   90 at most 0.041%, phone JPEG 0.061%; sideways at least 0.47%;
# - served (tests/integration/test_serving_invariance.py: the champion_service model
#   tiny_model(48, 1), cat/dog 22-25, spread 0.0029): quality 90 at most 0.045%, phone JPEG
#   0.046%; sideways at least 0.62%.
# 0.2% is over 3x every re-encode and under half of every sideways turn.
REENCODE_SHARE_OF_SPREAD = 0.002
FLOAT_NOISE = 1e-6  # the same pixels in another batch position
Grouped = Mapping[int, Mapping[int, float]]  # photo -> variant -> probability


def variants(photo: bytes) -> dict[int, tuple[str, bytes]]:
    """Variant -> (extension, bytes) of one JPEG photo. SIDEWAYS (turned, no tag) is the control
    that shows the model notices a turn."""
    seen = decoded_as_model_sees(photo)
    upright = Image.open(io.BytesIO(photo)).convert("RGB")
    files = {
        ORIGINAL: ("jpg", photo),
        SAME_PIXELS_PNG: ("png", encode(seen, "PNG")),
        QUALITY_90: ("jpg", encode(upright, "JPEG", quality=90)),
        PHONE_JPEG: ("jpg", stored_with_tag(upright, 6, "JPEG", quality=95)),
        SIDEWAYS: ("png", encode(seen.transpose(Image.Transpose.ROTATE_90), "PNG")),
    }
    files.update({turn: ("png", stored_with_tag(seen, turn, "PNG")) for turn in TURNS})
    return files


def write_variants(photos: list[Path], folder: Path) -> None:
    """Every variant of every photo into `folder`, photos numbered from 1."""
    for number, path in enumerate(photos, start=1):
        for variant, (ext, data) in variants(path.read_bytes()).items():
            (folder / f"{number}{variant}.{ext}").write_bytes(data)


def by_photo(probabilities: Mapping[int, float]) -> dict[int, dict[int, float]]:
    """{n * 10 + v: p} -> {n: {v: p}}."""
    grouped: dict[int, dict[int, float]] = {}
    for ident, probability in probabilities.items():
        grouped.setdefault(ident // 10, {})[ident % 10] = probability
    return grouped


def spread(grouped: Mapping[int, Mapping[int, float]]) -> float:
    """How far apart the model puts the original photos."""
    originals = [variant[ORIGINAL] for variant in grouped.values()]
    return max(originals) - min(originals)


def submission_probabilities(csv_file: Path) -> dict[int, float]:
    """id -> probability from `imgclf predict --proba`'s CSV."""
    with open(csv_file, newline="", encoding="utf-8") as fh:
        return {int(row["id"]): float(row["dog_probability"]) for row in csv.DictReader(fh)}


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def stored_with_tag(upright: Image.Image, orientation: int, fmt: str, **options: object) -> bytes:
    """`upright`'s pixels turned as a camera stores them, tagged with `orientation`."""
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    return encode(upright.transpose(STORED_AS[orientation]), fmt, exif=exif, **options)


def decoded_as_model_sees(jpeg: bytes) -> Image.Image:
    """The RGB pixels THE preprocessing decodes from `jpeg` (the pipeline's decoder)."""
    from imgclf.model.preprocess import decode_image

    return Image.fromarray(decode_image(jpeg))


def brighter_half_on_top(width: int = 64, height: int = 48) -> Image.Image:
    """White above, black below: which way up it is shows at a glance."""
    image = Image.new("RGB", (width, height), "black")
    image.paste("white", (0, 0, width, height // 2))
    return image


def upright_detector(size: int = 32):
    """A Keras model that answers only "is the bright half on top?":
    P = sigmoid(20 x (mean of the top half - mean of the bottom half)), so an upright
    `brighter_half_on_top` gets ~1, the same image on its side 0.5, upside down ~0."""
    import keras

    inputs = keras.Input((size, size, 3))
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    rows = np.where(np.arange(size) < size // 2, 1.0, -1.0)
    per_pixel = np.broadcast_to(rows[:, None, None], (size, size, 3)) / (size * size * 3 / 2)
    model.layers[-1].set_weights([20 * per_pixel.reshape(-1, 1), np.zeros(1)])
    return model


# The checks both sides run (batch prediction and the service), so they cannot drift apart.


def assert_tells_photos_and_turns_apart(grouped: Grouped, min_spread: float) -> None:
    """Without this the invariance checks could not fail: the photos are told apart, and every
    photo turned sideways moves by more than a re-encode may."""
    assert spread(grouped) > min_spread
    tolerance = REENCODE_SHARE_OF_SPREAD * spread(grouped)
    for number, probability in grouped.items():
        assert abs(probability[SIDEWAYS] - probability[ORIGINAL]) > tolerance, number


def assert_same_as_original(grouped: Grouped, variant: int, tolerance: float = FLOAT_NOISE) -> None:
    for number, probability in grouped.items():
        assert abs(probability[variant] - probability[ORIGINAL]) <= tolerance, (number, variant)


def assert_nearly_invariant_to_a_re_encode(grouped: Grouped, variant: int) -> None:
    assert_same_as_original(grouped, variant, REENCODE_SHARE_OF_SPREAD * spread(grouped))
