"""Model tests: architectures as specified, augmentation only in training, every arch builds
for two classes (one sigmoid unit, or a softmax on request) and for more (a softmax)."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import keras
import numpy as np
import pytest

from imgclf.config import Arch, AugmentParams, TrainParams
from imgclf.model.architectures import applications
from imgclf.model.architectures.cnn import seed_cnn
from imgclf.model.architectures.factory import (
    Output,
    build_classifier,
    classifier_output,
    inference_model,
    load_classifier,
    unfreeze_top,
)
from imgclf.model.training import augmentation


def _params(**overrides: object) -> TrainParams:
    return TrainParams(**{"arch": "small_cnn", "image_size": 64, "weights": None, **overrides})


def _images(n: int = 4, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, 3), dtype="float32")


def test_seed_cnn_is_exactly_the_brief() -> None:
    model = seed_cnn(224, 1, "sigmoid")
    described = [
        (type(layer).__name__, getattr(layer, "filters", None) or getattr(layer, "units", None))
        for layer in model.layers
    ]
    assert described == [
        ("Conv2D", 32), ("MaxPooling2D", None), ("Conv2D", 64), ("MaxPooling2D", None),
        ("Conv2D", 128), ("Flatten", None), ("Dense", 128), ("Dense", 64), ("Dense", 1),
    ]  # fmt: skip
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert all(c.kernel_size == (3, 3) and c.activation.__name__ == "relu" for c in convs)
    assert model.layers[-1].activation.__name__ == "sigmoid"
    assert model.count_params() == pytest.approx(44.4e6, rel=0.01)  # the README's figure


def test_augmentation_changes_training_images_only() -> None:
    augment = augmentation(
        AugmentParams(enabled=True, rotation=0.2, shift=0.2, zoom=0.2, brightness=0.3)
    )
    images = _images()
    assert not np.allclose(augment(images, training=True), images)
    np.testing.assert_array_equal(augment(images, training=False), images)
    assert augmentation(AugmentParams(enabled=False)) is None


def test_saved_model_holds_no_augmentation() -> None:
    """Augmentation lives in the training pipeline, so no caller can trigger it at inference."""
    model = build_classifier(_params(augment=AugmentParams(enabled=True)), 2).model
    random_layers = [
        layer for layer in _all_layers(model) if type(layer).__name__.startswith("Random")
    ]
    assert random_layers == []
    images = _images()
    np.testing.assert_array_equal(model(images), model(images))


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    nested = [_all_layers(layer) for layer in model.layers if isinstance(layer, keras.Model)]
    return [*model.layers, *(layer for group in nested for layer in group)]


def test_head_auto_is_binary_for_two_classes_and_softmax_otherwise() -> None:
    auto, softmax = _params(), _params(head="softmax")
    assert classifier_output(auto, 2) == Output(1, "sigmoid")
    assert classifier_output(softmax, 2) == Output(2, "softmax")
    assert classifier_output(auto, 3) == classifier_output(softmax, 3) == Output(3, "softmax")
    with pytest.raises(ValueError, match="at least two classes"):
        classifier_output(auto, 1)


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("arch", get_args(Arch))
def test_every_arch_maps_images_to_class_probabilities(arch: str, n_classes: int) -> None:
    size = 32 if arch == "seed_cnn" else 64
    classifier = build_classifier(_params(arch=arch, image_size=size), n_classes)
    probabilities = np.asarray(classifier.model(_images(size=size), training=False))
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    if n_classes == 2:
        assert probabilities.shape == (4, 1)  # P(second class), the binary model
    else:
        assert probabilities.shape == (4, n_classes)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert not classifier.pretrained  # random weights: nothing worth freezing, trains end to end


@pytest.mark.parametrize("arch", ["seed_cnn", "small_cnn"])
def test_softmax_head_gives_two_classes_two_columns(arch: str) -> None:
    model = build_classifier(_params(arch=arch, image_size=32, head="softmax"), 2).model
    probabilities = np.asarray(model(_images(size=32), training=False))
    assert probabilities.shape == (4, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_pretrained_application_splits_backbone_and_head() -> None:
    params = _params(arch="mobilenet_v2", weights="imagenet")
    classifier = build_classifier(params.model_copy(update={"weights": None}), 3)
    assert not classifier.pretrained
    # With imagenet weights Keras would download them; build the split by hand on random ones.
    backbone = applications.application_backbone("mobilenet_v2", 64, None)
    unfreeze_top(backbone, ("mobilenet_v2",), blocks=3)
    trainable = [layer for layer in backbone.layers[-1].layers if layer.trainable_weights]
    assert 0 < len(trainable) <= 3


def test_saved_classifier_gives_identical_outputs(tmp_path: Path) -> None:
    model = build_classifier(_params(), 3).model
    images = _images()
    model.save(tmp_path / "model.keras")
    restored = load_classifier(tmp_path / "model.keras")
    np.testing.assert_allclose(restored(images), model(images, training=False), atol=1e-6)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_inference_model_divides_logits_by_the_temperature_and_averages_the_mirror(
    tmp_path: Path, n_classes: int
) -> None:
    classifier = build_classifier(_params(), n_classes)
    assert inference_model(classifier, 1.0, tta=False) is classifier.model  # nothing to add
    images = _images()
    mirrored = images[:, :, ::-1]
    features = keras.Model(classifier.model.input, classifier.backbone(classifier.model.input))
    kernel, bias = classifier.head.get_layer("probability").get_weights()

    def expected(batch: np.ndarray, temperature: float) -> np.ndarray:
        z = (np.asarray(features(batch)) @ kernel + bias) / temperature
        return 1 / (1 + np.exp(-z)) if n_classes == 2 else keras.ops.softmax(z).numpy()

    model = inference_model(classifier, 2.5, tta=True)
    both = (expected(images, 2.5) + expected(mirrored, 2.5)) / 2
    np.testing.assert_allclose(model(images), both, atol=1e-6)
    np.testing.assert_allclose(model(mirrored), model(images), atol=1e-6)  # mirror-invariant
    np.testing.assert_allclose(inference_model(classifier, 2.5, tta=False)(images),
                               expected(images, 2.5), atol=1e-6)  # fmt: skip
    model.save(tmp_path / "model.keras")  # the mirror layer saves and loads by its registered name
    np.testing.assert_array_equal(load_classifier(tmp_path / "model.keras")(images), model(images))


def test_concatenated_backbones_feed_one_head_and_fine_tune_each() -> None:
    params = _params(arch=["efficientnet_lite0", "mobilenet_v2"], image_size=32)
    classifier = build_classifier(params, 2)
    members = [classifier.backbone.get_layer(f"{arch}_backbone") for arch in params.backbones]
    assert classifier.backbone.output_shape == (None, 1280 + 1280)
    assert classifier.model.name == "efficientnet_lite0-mobilenet_v2_classifier"
    classifier.backbone.trainable = False
    unfreeze_top(classifier.backbone, params.backbones, blocks=2)
    for member in members:
        trainable = [layer for layer in _all_layers(member) if layer.trainable_weights]
        assert 0 < len(trainable) < len(_all_layers(member)) / 10, member.name


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"arch": ["efficientnet_lite0", "efficientnet_lite0"]}, "twice"),
        ({"arch": ["efficientnet_lite0", "small_cnn"]}, "arch"),
        ({"arch": "efficientnet_lite2", "linear_head": {"enabled": True, "c": []}}, "c"),
    ],
)
def test_train_params_refuse_impossible_backbones(overrides: dict, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        TrainParams(**overrides)
    assert TrainParams(arch=["efficientnet_lite0", "efficientnet_lite2"]).backbones == (
        "efficientnet_lite0",
        "efficientnet_lite2",
    )
