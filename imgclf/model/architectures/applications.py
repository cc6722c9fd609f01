"""keras.applications backbones behind the same [0, 1] image input as every other model.

`weights="imagenet"` makes Keras download ImageNet weights on a machine with internet; the
tests build them with `weights=None`.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

# name -> (constructor, layer mapping [0, 1] input to what the application expects)
_APPLICATIONS: dict[str, tuple[Callable[..., keras.Model], Callable[[], keras.layers.Layer]]] = {
    # MobileNetV2 expects [-1, 1].
    "mobilenet_v2": (
        keras.applications.MobileNetV2,
        lambda: keras.layers.Rescaling(2.0, offset=-1.0, name="to_minus1_1"),
    ),
    # These two normalise internally from [0, 255].
    "mobilenet_v3_small": (
        keras.applications.MobileNetV3Small,
        lambda: keras.layers.Rescaling(255.0, name="to_0_255"),
    ),
    "efficientnet_b0": (
        keras.applications.EfficientNetB0,
        lambda: keras.layers.Rescaling(255.0, name="to_0_255"),
    ),
}

NAMES = tuple(_APPLICATIONS)


def application_backbone(name: str, image_size: int, weights: str | None) -> keras.Model:
    """[0, 1] images -> globally pooled features of a keras.applications network."""
    constructor, input_scaling = _APPLICATIONS[name]
    shape = (image_size, image_size, 3)
    base = constructor(input_shape=shape, include_top=False, weights=weights, pooling="avg")
    inputs = keras.Input(shape, name="image")
    return keras.Model(inputs, base(input_scaling()(inputs)), name=f"{name}_backbone")
