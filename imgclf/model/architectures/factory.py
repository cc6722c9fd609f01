"""One entry point from `train.arch` to a classifier: [0, 1] image in, class probabilities out
(one sigmoid unit = P(second class) for a binary model, else a softmax over the K classes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import keras

from imgclf.config import TrainParams
from imgclf.model.architectures import applications, cnn, efficientnet_lite
from imgclf.model.architectures.layers import HorizontalFlip

PRETRAINED_ARCHS = (*efficientnet_lite.VARIANTS, *applications.NAMES)
HEAD_OUTPUT = "probability"  # the head's Dense: its kernel and bias are the classifier's logits


@dataclass(frozen=True)
class Classifier:
    """The model to train, and its parts: the backbone (image -> pooled features) and the head
    (features -> class probabilities). seed_cnn is one Sequential and has neither.

    `pretrained`: the backbone starts from ImageNet weights, so the head first trains on it
    frozen (two-phase transfer learning); otherwise the model trains end to end.
    """

    model: keras.Model
    backbone: keras.Model | None = None
    head: keras.Model | None = None
    pretrained: bool = False


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
            keras.layers.Dense(output.units, activation=output.activation, name=HEAD_OUTPUT),
        ],
        name="head",
    )


def _single_backbone(arch: str, params: TrainParams, pretrained_dir: Path | None) -> keras.Model:
    if arch in efficientnet_lite.VARIANTS:
        if params.weights == "imagenet":
            if pretrained_dir is None:
                raise ValueError(f"{arch} with imagenet weights needs the ported weights' folder")
            weights = efficientnet_lite.weights_file(pretrained_dir, arch)
            return efficientnet_lite.load_pretrained_backbone(weights, params.image_size, arch)
        return efficientnet_lite.efficientnet_lite(arch, False, (params.image_size,) * 2 + (3,))
    if arch == "small_cnn":
        return cnn.small_cnn_backbone(params.image_size)
    return applications.application_backbone(arch, params.image_size, params.weights)


def _backbone(params: TrainParams, pretrained_dir: Path | None) -> keras.Model:
    """The arch's backbone; for a list of archs, one model concatenating their pooled features."""
    members = [_single_backbone(arch, params, pretrained_dir) for arch in params.backbones]
    if len(members) == 1:
        return members[0]
    inputs = keras.Input((params.image_size, params.image_size, 3), name="image")
    features = keras.layers.Concatenate(name="features")([member(inputs) for member in members])
    return keras.Model(inputs, features, name=f"{params.arch_name}_backbone")


def build_classifier(
    params: TrainParams, n_classes: int, pretrained_dir: Path | None = None
) -> Classifier:
    """The classifier for `params.arch` and `n_classes`: [0, 1] images in, class probabilities
    out (`classifier_output`). `pretrained_dir` holds the pretrained stage's ported weights."""
    output = classifier_output(params, n_classes)
    if params.arch == "seed_cnn":
        return Classifier(cnn.seed_cnn(params.image_size, output.units, output.activation))
    inputs = keras.Input((params.image_size, params.image_size, 3), name="image")
    backbone = _backbone(params, pretrained_dir)
    head = classifier_head(backbone.output_shape[-1], output, params.dropout)
    model = keras.Model(inputs, head(backbone(inputs)), name=f"{params.arch_name}_classifier")
    pretrained = set(params.backbones) <= set(PRETRAINED_ARCHS) and params.weights is not None
    return Classifier(model, backbone, head, pretrained)


def unfreeze_top(backbone: keras.Model, archs: Sequence[str], blocks: int) -> None:
    """Make the top of a frozen backbone trainable for fine-tuning (BatchNorm stays frozen);
    for concatenated backbones (`archs` lists them), the top of each.

    EfficientNet-Lite counts MBConv blocks; keras.applications backbones count weighted layers.
    """
    backbone.trainable = True
    members = (
        [backbone] if len(archs) == 1 else [backbone.get_layer(f"{a}_backbone") for a in archs]
    )
    for arch, member in zip(archs, members, strict=True):
        if arch in efficientnet_lite.VARIANTS:
            efficientnet_lite.unfreeze_top_blocks(member, blocks)
            continue
        weighted = [layer for layer in _flat_layers(member) if layer.weights]
        for index, layer in enumerate(weighted):
            is_top = index >= len(weighted) - blocks
            layer.trainable = is_top and not isinstance(layer, keras.layers.BatchNormalization)


def _flat_layers(model: keras.Model) -> list[keras.layers.Layer]:
    flat: list[keras.layers.Layer] = []
    for layer in model.layers:
        flat.extend(_flat_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return flat


def calibrated_head(head: keras.Model, temperature: float) -> keras.Sequential:
    """The trained head for inference: its Dense as logits, divided by `temperature`, then its
    activation (the same function as the head when the temperature is 1)."""
    dense = head.get_layer(HEAD_OUTPUT)
    logits = keras.layers.Dense(dense.units, name="logits")
    calibrated = keras.Sequential(
        [
            keras.Input((dense.kernel.shape[0],), name="features"),
            logits,
            keras.layers.Rescaling(1.0 / temperature, name="temperature"),
            keras.layers.Activation(dense.activation, name=HEAD_OUTPUT),
        ],
        name="calibrated_head",
    )
    logits.set_weights(dense.get_weights())
    return calibrated


def inference_model(classifier: Classifier, temperature: float, tta: bool) -> keras.Model:
    """What is saved and served: the trained classifier, with its logits divided by `temperature`
    and, with `tta`, its probabilities averaged over the image and its mirror. Both live inside
    the model, so evaluation, batch prediction, exported engines and the service all get them."""
    if temperature == 1.0 and not tta:
        return classifier.model
    if classifier.backbone is None or classifier.head is None:
        raise ValueError(f"{classifier.model.name}: calibration and tta need a backbone and head")
    head = calibrated_head(classifier.head, temperature)
    inputs = keras.Input(classifier.model.input_shape[1:], name="image")
    views = [inputs, HorizontalFlip(name="mirror")(inputs)] if tta else [inputs]
    outputs = [head(classifier.backbone(view)) for view in views]
    probabilities = keras.layers.Average(name="tta_mean")(outputs) if tta else outputs[0]
    return keras.Model(inputs, probabilities, name=classifier.model.name)


def load_classifier(path: Path | str) -> keras.Model:
    """A saved `.keras` classifier, ready for inference."""
    return keras.models.load_model(path, compile=False)
