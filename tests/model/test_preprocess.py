"""THE preprocessing: what a model sees of an image, whatever path the image took.

A JPEG and its lossless PNG reach the model as the same input; the resize is anti-aliased (the
filter tf.image.resize(antialias=True) used, to within a uint8 rounding); tf.data's pipeline
(training, evaluate, batch prediction) feeds exactly what `preprocess_bytes` returns.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from imgclf.model.dataset import image_dataset
from imgclf.model.preprocess import load_images, preprocess_bytes, resize_and_scale


def test_a_jpeg_and_its_lossless_png_give_the_same_model_input(sample_data_dir: Path) -> None:
    photo = sorted((sample_data_dir / "dog").glob("*.jpg"))[0]
    png = io.BytesIO()
    Image.open(photo).convert("RGB").save(png, "PNG")
    from_jpeg = preprocess_bytes(photo.read_bytes(), 224)
    from_png = preprocess_bytes(png.getvalue(), 224)
    assert from_jpeg.shape == (224, 224, 3) and from_jpeg.dtype == np.float32
    np.testing.assert_array_equal(from_jpeg, from_png)


def test_values_are_the_pixels_over_255() -> None:
    flat = np.full((30, 40, 3), (0, 128, 255), dtype=np.uint8)
    scaled = resize_and_scale(flat, 16)
    np.testing.assert_allclose(scaled, np.broadcast_to([0, 128 / 255, 1], (16, 16, 3)), atol=1e-7)


def test_shrinking_fine_stripes_averages_them_instead_of_aliasing() -> None:
    """One-pixel black/white stripes shrunk 8x: an anti-aliased filter gives flat mid-grey; a
    plain bilinear sample (two source pixels per output pixel) would keep black or white bars."""
    stripes = np.zeros((256, 256, 3), dtype=np.uint8)
    stripes[:, ::2] = 255
    shrunk = resize_and_scale(stripes, 32)
    assert np.abs(shrunk - 0.5).max() < 0.02


def test_the_resize_matches_tensorflows_antialiased_bilinear(sample_data_dir: Path) -> None:
    """The filter the models were first trained with (tf.image.resize, antialias=True): the
    same to within one uint8 level (Pillow rounds its output to 8 bits), 0.3 levels on average."""
    import tensorflow as tf

    from imgclf.model.preprocess import decode_image

    for photo in sorted((sample_data_dir / "cat").glob("*.jpg"))[:5]:
        pixels = decode_image(photo.read_bytes())
        ours = resize_and_scale(pixels, 260)
        theirs = tf.image.resize(pixels, (260, 260), method="bilinear", antialias=True) / 255
        difference = np.abs(ours - theirs.numpy())
        assert difference.max() <= 1.01 / 255 and difference.mean() < 0.4 / 255, photo.name


def test_tf_data_feeds_what_preprocess_bytes_returns(sample_data_dir: Path) -> None:
    files = [str(p) for p in sorted((sample_data_dir / "cat").glob("*.jpg"))[:5]]
    batches = [batch.numpy() for batch in image_dataset(files, 96, batch_size=2)]
    np.testing.assert_array_equal(np.concatenate(batches), load_images(files, 96))
