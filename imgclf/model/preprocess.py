"""THE preprocessing: encoded image bytes -> model input (float32, HxWx3, values in [0, 1]).

Training (tf.data), evaluation, batch prediction and the service all call `preprocess_bytes`,
so what the model sees cannot drift between them. Files reaching it are already standardised
(RGB, EXIF orientation applied) by the download stage, or by the service's input validation.
Model-specific normalisation (e.g. EfficientNet-Lite's (x*255 - 127) / 128) lives inside the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """JPEG/PNG/BMP/GIF bytes -> uint8 RGB tensor (first frame of an animation).

    JPEGs use libjpeg's accurate integer IDCT, the one Pillow uses: a photo the standardisation
    passes through (decoded here) and one it re-encodes losslessly (decoded by Pillow) then hold
    the same pixels. TensorFlow's default fast IDCT differs by up to 7 levels.
    """
    image = tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False),
    )
    image.set_shape([None, None, 3])
    return image


def resize_and_scale(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """uint8 RGB -> float32 [0, 1] at image_size x image_size (anti-aliased bilinear squash)."""
    resized = tf.image.resize(image, (image_size, image_size), method="bilinear", antialias=True)
    return tf.clip_by_value(resized / 255.0, 0.0, 1.0)


def preprocess_bytes(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """The one entry point: encoded bytes -> model input."""
    return resize_and_scale(decode_image(image_bytes), image_size)


def load_images(paths: Sequence[Path | str], image_size: int) -> np.ndarray:
    """Files -> a float32 batch (N, size, size, 3), through `preprocess_bytes`."""
    batch = [preprocess_bytes(tf.io.read_file(str(p)), image_size) for p in paths]
    return tf.stack(batch).numpy() if batch else np.zeros((0, image_size, image_size, 3), "float32")
