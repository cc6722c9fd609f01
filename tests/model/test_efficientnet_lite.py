"""EfficientNet-Lite0: legacy .pth reader, Keras architecture, weight port, and a real-photo check.

The photo check uses the shared dogs-vs-cats sample through conftest's `sample_data_dir`
(`IMGCLF_SAMPLE_DATA`, default `<repo>/../shared/data/dogs-vs-cats`; skipped when missing).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from imgclf.model.architectures import efficientnet_lite as effl  # noqa: E402
from imgclf.model.weights import (  # noqa: E402
    LEGACY_MAGIC_NUMBER,
    LEGACY_PROTOCOL_VERSION,
    CheckpointError,
    load_state_dict,
)

CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
DOG_CLASSES = range(151, 269)  # ImageNet: Chihuahua .. Mexican hairless


@pytest.fixture(scope="module")
def state_dict():
    return load_state_dict(effl.packaged_checkpoint_path())


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """(weights .h5 written by the stage, the stage's info dict)."""
    from imgclf.config import Paths

    paths = Paths(tmp_path_factory.mktemp("pretrained"))
    info = effl.run_pretrained(paths)
    return paths.pretrained_weights, info


@pytest.fixture(scope="module")
def imagenet_224(pretrained):
    model = effl.efficientnet_lite0(True, (224, 224, 3))
    model.load_weights(str(pretrained[0]))
    return model


# ---------------------------------------------------------------- checkpoint reader


def test_reader_reads_every_tensor(state_dict):
    assert len(state_dict) == 296
    batches = [k for k in state_dict if k.endswith("num_batches_tracked")]
    assert len(batches) == 49
    floats = {k: v for k, v in state_dict.items() if k not in batches}
    assert len(floats) == 247 and all(v.dtype == np.float32 for v in floats.values())
    assert state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state_dict["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert state_dict["_fc.weight"].shape == (1000, 1280)
    assert not any("_se_" in k for k in state_dict)  # Lite: no squeeze-excite
    assert all(np.isfinite(v).all() for v in floats.values())


def _legacy_headers() -> bytes:
    return b"".join(
        pickle.dumps(obj, protocol=2)
        for obj in (LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, {"little_endian": True})
    )


def test_reader_refuses_arbitrary_globals(tmp_path):
    evil = tmp_path / "evil.pth"
    marker = tmp_path / "pwned"
    # A pickle that would call os.system(...) if globals were resolved freely.
    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    evil.write_bytes(_legacy_headers() + payload)
    with pytest.raises(CheckpointError, match=r"refusing to unpickle os\.system"):
        load_state_dict(evil)
    assert not marker.exists()


def test_reader_rejects_zip_format_and_non_checkpoints(tmp_path):
    zipped = tmp_path / "new_format.pt"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("archive/data.pkl", b"")
    with pytest.raises(CheckpointError, match="zip-format"):
        load_state_dict(zipped)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_state_dict(garbage)
    wrong_magic = tmp_path / "wrong_magic.pth"
    wrong_magic.write_bytes(pickle.dumps(12345, protocol=2))
    with pytest.raises(CheckpointError, match="magic number"):
        load_state_dict(wrong_magic)


# ---------------------------------------------------------------- architecture


def test_architecture_shapes_at_160_and_224():
    backbone = effl.efficientnet_lite0(False, (160, 160, 3))
    assert backbone.output_shape == (None, effl.FEATURE_DIM)
    assert tuple(backbone(np.zeros((2, 160, 160, 3), "float32")).shape) == (2, 1280)
    fmap = effl.efficientnet_lite0(False, (160, 160, 3), pooling=None)
    assert fmap.output_shape == (None, 5, 5, 1280)
    full = effl.efficientnet_lite0(True, (224, 224, 3))
    assert full.output_shape == (None, 1000)
    assert full.get_layer("top_activation").output.shape == (None, 7, 7, 1280)
    # Lite0: 4,652,008 trainable parameters, + 42,016 BN moving statistics.
    trainable = sum(int(np.prod(w.shape)) for w in full.trainable_weights)
    assert (trainable, full.count_params()) == (4_652_008, 4_694_024)
    names = {layer.name for layer in full.layers}
    assert len([n for n in names if n.endswith("_dwconv")]) == 16
    assert len([n for n in names if n.endswith("_add")]) == 9  # stride 1, same channels
    assert "block00_expand_conv" not in names and "block15_expand_conv" in names
    assert not any(isinstance(layer, keras.layers.Multiply) for layer in full.layers)  # no SE


def test_normalisation_layer_maps_unit_range_to_checkpoint_range():
    model = effl.efficientnet_lite0(False, (32, 32, 3))
    scaling = model.get_layer("input_scaling")
    out = np.asarray(scaling(np.array([0.0, 0.5, 1.0], "float32")))
    np.testing.assert_allclose(out, [-127 / 128, 0.5 / 128, 1.0], atol=1e-6)
    assert model.layers[1] is scaling  # first thing after the input


def test_top_block_helpers():
    model = effl.efficientnet_lite0(True, (64, 64, 3))
    last2 = effl.top_block_layers(model, 2, include_head=False)
    assert {layer.name[:7] for layer in last2} == {"block14", "block15"}
    assert effl.top_block_layers(model, 0, include_head=False) == []
    unfrozen = effl.unfreeze_top_blocks(model, 1)
    trainable = {layer.name for layer in model.layers if layer.trainable and layer.weights}
    assert trainable == {
        "block15_expand_conv",
        "block15_dwconv",
        "block15_project_conv",
        "top_conv",
        "predictions",  # not part of the backbone: left alone
    }
    assert {layer.name for layer in unfrozen} >= {"block15_dw_bn", "top_bn"}
    with pytest.raises(ValueError):
        effl.top_block_layers(model, 17)


# ---------------------------------------------------------------- weight port


def test_port_uses_every_tensor_once_and_sets_every_weight(state_dict):
    model = effl.efficientnet_lite0(True, (64, 64, 3))
    counts = effl.port_state_dict(model, state_dict)
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
        effl.port_state_dict(model, missing)
    extra = dict(state_dict, **{"_blocks.16._bn1.weight": np.zeros(3, "float32")})
    with pytest.raises(ValueError, match="unused"):
        effl.port_state_dict(model, extra)


def test_stage_writes_weights_and_provenance(pretrained):
    weights, info = pretrained
    assert weights.is_file()
    assert (weights.parent / "efficientnet_lite0.json").is_file()
    assert info["checkpoint_entries"] == 296 and info["tensors_used"] == 247
    assert len(info["source_sha256"]) == 64
    assert not [p for p in weights.parent.parent.iterdir() if p.name.startswith(".")]


def test_backbone_matches_full_model_and_round_trips(pretrained, imagenet_224, tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (2, 224, 224, 3)).astype("float32")
    backbone = effl.load_pretrained_backbone(pretrained[0], 224)
    features = backbone.predict_on_batch(images)
    pooled = keras.Model(imagenet_224.input, imagenet_224.get_layer("avg_pool").output)
    np.testing.assert_allclose(features, pooled.predict_on_batch(images), rtol=1e-5, atol=1e-5)

    path = tmp_path / "backbone.keras"
    backbone.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_array_equal(restored.predict_on_batch(images), features)

    small = effl.load_pretrained_backbone(pretrained[0], 192)
    assert small.predict_on_batch(images[:, :192, :192]).shape == (2, 1280)


# ---------------------------------------------------------------- real photos


def _sample_paths(folder: Path, label: str) -> list[Path]:
    """Fixed choice: ids 25, 50, ..., 2500 (every 25th) that exist."""
    paths = [folder / label / f"{label}.{i}.jpg" for i in range(25, 2501, 25)]
    return [p for p in paths if p.is_file()]


def test_imagenet_head_recognises_real_cats_and_dogs(imagenet_224, sample_data_dir):
    from imgclf.model.preprocess import load_images

    cats, dogs = _sample_paths(sample_data_dir, "cat"), _sample_paths(sample_data_dir, "dog")
    assert len(cats) >= 50 and len(dogs) >= 50, f"too few sample photos in {sample_data_dir}"
    images = load_images(cats + dogs, 224)
    probs = np.concatenate(
        [imagenet_224.predict_on_batch(images[i : i + 32]) for i in range(0, len(images), 32)]
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
        f"\n{n_cat} cats, {len(dogs)} dogs at 224: cat top-1 in cat classes {cat_rate:.1%}, "
        f"dog top-1 in dog classes {dog_rate:.1%}, dog-vs-cat class mass accuracy {mass_acc:.1%}"
    )
    assert cat_rate >= 0.70
    assert dog_rate >= 0.88
    assert mass_acc >= 0.85
