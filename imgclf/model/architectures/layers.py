"""The one custom layer a saved classifier may hold: the mirror view of flip test-time
augmentation. Registered with Keras under `imgclf>HorizontalFlip`; importing
`imgclf.model.architectures` (any of its modules) registers it, so every loader can read it."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="imgclf")
class HorizontalFlip(keras.layers.Layer):
    """Mirrors (N, H, W, C) images left to right, always: a deterministic layer, unlike
    `keras.layers.RandomFlip`, so the saved model sees the same mirror in training and serving."""

    def call(self, images):
        return keras.ops.flip(images, axis=2)
