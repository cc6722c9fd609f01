"""THE preprocessing decodes a JPEG exactly as Pillow (the standardisation) does, so a photo that is
passed through and the same photo re-encoded losslessly reach the model as the same pixels."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from imgclf.model.preprocess import decode_image, preprocess_bytes


def test_jpeg_decode_equals_pillows(sample_data_dir: Path) -> None:
    photos = sorted((sample_data_dir / "cat").glob("*.jpg"))[:6]
    photos += sorted((sample_data_dir / "dog").glob("*.jpg"))[:6]
    for photo in photos:
        ours = decode_image(tf.io.read_file(str(photo))).numpy()
        pillows = np.asarray(Image.open(photo).convert("RGB"))
        np.testing.assert_array_equal(ours, pillows, err_msg=photo.name)


def test_a_jpeg_and_its_lossless_png_give_the_same_model_input(sample_data_dir: Path) -> None:
    photo = sorted((sample_data_dir / "dog").glob("*.jpg"))[0]
    png = io.BytesIO()
    Image.open(photo).convert("RGB").save(png, "PNG")
    from_jpeg = preprocess_bytes(tf.io.read_file(str(photo)), 224).numpy()
    from_png = preprocess_bytes(tf.constant(png.getvalue()), 224).numpy()
    np.testing.assert_array_equal(from_jpeg, from_png)
