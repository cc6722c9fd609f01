"""From-scratch CNNs: the seed architecture from the brief, and a small modern baseline."""

from __future__ import annotations

import keras


def seed_cnn(image_size: int, units: int, activation: str) -> keras.Sequential:
    """The brief's CNN, layer for layer: Conv32→Conv64→Conv128 → Flatten → Dense128→64→1.

    The brief ends in one sigmoid unit (two classes); `units` and `activation` are the output
    the factory chooses for the class count (`factory.classifier_output`).

    Not the default: with Flatten at 224 px its Dense(128) holds 44 M of 44.4 M parameters,
    so it is slow on CPU and overfits a few thousand photos (see README).
    """
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((image_size, image_size, 3), name="image"),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(128, 3, activation="relu"),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(64, activation="relu"),
            layers.Dense(units, activation=activation),
        ],
        name="seed_cnn",
    )


def small_cnn_backbone(
    image_size: int, widths: tuple[int, ...] = (32, 64, 128, 256)
) -> keras.Model:
    """Conv-BN-ReLU ×2 per stage, max-pool between stages, global average pooling at the end.

    ~0.4 M parameters whatever the image size, thanks to the pooling instead of Flatten.
    """
    layers = keras.layers
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    for stage, width in enumerate(widths):
        for conv in range(2):
            x = layers.Conv2D(
                width, 3, padding="same", use_bias=False, name=f"s{stage}_conv{conv}"
            )(x)
            x = layers.BatchNormalization(name=f"s{stage}_bn{conv}")(x)
            x = layers.ReLU(name=f"s{stage}_relu{conv}")(x)
        x = layers.MaxPooling2D(2, name=f"s{stage}_pool")(x)
    features = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, features, name="small_cnn_backbone")
