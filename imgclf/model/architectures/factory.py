"""One entry point from `train.arch` to a classifier: [0, 1] image in, class probabilities out
(one sigmoid unit = P(second class) for a binary model, else a softmax over the K classes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import keras

from imgclf.config import TrainParams
from imgclf.model.architectures import applications, cnn, efficientnet_lite

PRETRAINED_ARCHS = ("efficientnet_lite0", *applications.NAMES)


@dataclass(frozen=True)
class Classifier:
    """The model to train and save, and its parts for two-phase transfer learning.

    `backbone` and `head` are None for from-scratch models, which train end to end.
    """

    model: keras.Model
    backbone: keras.Model | None = None
    head: keras.Model | None = None


@dataclass(frozen=True)
class Output:
    """A classifier's last layer: its width and activation."""

    units: int
    activation: Literal["sigmoid", "softmax"]


def classifier_output(params: TrainParams, n_classes: int) -> Output:
    """`head: auto` keeps the binary model for two classes (one sigmoid unit, P(second class));
    more classes, or `head: softmax`, get a softmax with one unit per class."""
    if n_classes < 2:
        raise ValueError(f"a classifier needs at least two classes, got {n_classes}")
    if params.head == "auto" and n_classes == 2:
        return Output(1, "sigmoid")
    return Output(n_classes, "softmax")


def classifier_head(features: int, output: Output, dropout: float) -> keras.Sequential:
    """Pooled features -> class probabilities."""
    return keras.Sequential(
        [
            keras.Input((features,), name="features"),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(output.units, activation=output.activation, name="probability"),
        ],
        name="head",
    )


def _backbone(params: TrainParams, pretrained_weights: Path | None) -> keras.Model:
    if params.arch == "efficientnet_lite0":
        if params.weights == "imagenet":
            if pretrained_weights is None:
                raise ValueError("efficientnet_lite0 with imagenet weights needs the ported file")
            return efficientnet_lite.load_pretrained_backbone(pretrained_weights, params.image_size)
        return efficientnet_lite.efficientnet_lite0(False, (params.image_size,) * 2 + (3,))
    if params.arch == "small_cnn":
        return cnn.small_cnn_backbone(params.image_size)
    return applications.application_backbone(params.arch, params.image_size, params.weights)


def build_classifier(
    params: TrainParams, n_classes: int, pretrained_weights: Path | None = None
) -> Classifier:
    """The classifier for `params.arch` and `n_classes`: [0, 1] images in, class probabilities
    out (`classifier_output`)."""
    output = classifier_output(params, n_classes)
    if params.arch == "seed_cnn":
        return Classifier(cnn.seed_cnn(params.image_size, output.units, output.activation))
    inputs = keras.Input((params.image_size, params.image_size, 3), name="image")
    backbone = _backbone(params, pretrained_weights)
    head = classifier_head(backbone.output_shape[-1], output, params.dropout)
    model = keras.Model(inputs, head(backbone(inputs)), name=f"{params.arch}_classifier")
    if params.arch not in PRETRAINED_ARCHS or params.weights is None:
        return Classifier(model)  # nothing worth freezing: train end to end
    return Classifier(model, backbone, head)


def unfreeze_top(backbone: keras.Model, arch: str, blocks: int) -> None:
    """Make the top of a frozen backbone trainable for fine-tuning (BatchNorm stays frozen).

    EfficientNet-Lite0 counts MBConv blocks; keras.applications backbones count weighted layers.
    """
    backbone.trainable = True
    if arch == "efficientnet_lite0":
        efficientnet_lite.unfreeze_top_blocks(backbone, blocks)
        return
    weighted = [layer for layer in _flat_layers(backbone) if layer.weights]
    for index, layer in enumerate(weighted):
        is_top = index >= len(weighted) - blocks
        layer.trainable = is_top and not isinstance(layer, keras.layers.BatchNormalization)


def _flat_layers(model: keras.Model) -> list[keras.layers.Layer]:
    flat: list[keras.layers.Layer] = []
    for layer in model.layers:
        flat.extend(_flat_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return flat


def load_classifier(path: Path | str) -> keras.Model:
    """A saved `.keras` classifier, ready for inference."""
    return keras.models.load_model(path, compile=False)
