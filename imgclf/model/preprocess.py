"""THE preprocessing: encoded image bytes -> model input (float32, HxWx3, values in [0, 1]).

Training and evaluation (tf.data, `imgclf.model.dataset`), batch prediction, the export's checks
and the service all go through `resize_and_scale`, so what the model sees cannot drift between
them; the pipeline decodes with `decode_image`, the service with its input validation
(`imgclf.data.standardise`), both Pillow's libjpeg-turbo with the same IDCT. Files reaching it are
already standardised (RGB, EXIF orientation applied) by the download stage, or by the service's
input validation. Model-specific normalisation (e.g. EfficientNet-Lite's (x*255 - 127) / 128)
lives inside the model.

Pillow rather than TensorFlow ops: its antialiased bilinear resize is the same filter (a triangle
widened by the scale when shrinking) at a quarter of the cost, and the service then runs no
TensorFlow op per request, whose thread pool spun on the cores the engine was using.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def decode_image(data: bytes) -> np.ndarray:
    """Encoded bytes (JPEG, PNG, BMP, GIF, WebP, ...) -> (height, width, 3) uint8 RGB, the first
    frame of an animation."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def resize_and_scale(pixels: np.ndarray, image_size: int) -> np.ndarray:
    """(height, width, 3) uint8 RGB -> (image_size, image_size, 3) float32 in [0, 1]: a bilinear
    squash, anti-aliased when shrinking (Pillow widens the filter by the scale)."""
    resized = Image.fromarray(pixels).resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32) * np.float32(1 / 255)


def preprocess_bytes(data: bytes, image_size: int) -> np.ndarray:
    """The one entry point from encoded bytes: decode, then THE resize."""
    return resize_and_scale(decode_image(data), image_size)


def load_images(paths: Sequence[Path | str], image_size: int) -> np.ndarray:
    """Files -> a float32 batch (N, size, size, 3), through `preprocess_bytes`."""
    batch = [preprocess_bytes(Path(p).read_bytes(), image_size) for p in paths]
    return np.stack(batch) if batch else np.zeros((0, image_size, image_size, 3), "float32")
