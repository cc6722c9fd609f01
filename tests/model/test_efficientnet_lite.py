"""EfficientNet-Lite0's Keras architecture: shapes, input scaling and the fine-tuning helpers."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from imgclf.model.architectures import efficientnet_lite as effl


def test_architecture_shapes_at_160_and_224():
    backbone = effl.efficientnet_lite0(False, (160, 160, 3))
    assert backbone.output_shape == (None, effl.FEATURE_DIM)
    assert tuple(backbone(np.zeros((2, 160, 160, 3), "float32")).shape) == (2, 1280)
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
    head = set(effl.HEAD_LAYER_NAMES)
    last2 = {layer.name for layer in effl.top_block_layers(model, 2)}
    assert {name[:7] for name in last2 - head} == {"block14", "block15"} and head <= last2
    assert {layer.name for layer in effl.top_block_layers(model, 0)} == head
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


def test_width_rounding_follows_the_reference():
    # tensorflow/tpu round_filters: nearest multiple of 8, bumped when more than 10% below.
    assert [effl.round_filters(f, 1.1) for f in (16, 24, 40, 80, 112, 192, 320)] == [
        16, 24, 48, 88, 120, 208, 352,
    ]  # fmt: skip
    assert [effl.round_filters(f, 1.0) for f in (16, 24, 40)] == [16, 24, 40]


@pytest.mark.parametrize(
    ("variant", "blocks", "last_width", "parameters"),
    [("efficientnet_lite1", 21, 320, 5_470_344), ("efficientnet_lite2", 21, 352, 6_150_168)],
)
def test_scaled_variants_keep_stem_head_and_outer_stages(
    variant: str, blocks: int, last_width: int, parameters: int
):
    size = effl.VARIANTS[variant].resolution
    full = effl.efficientnet_lite(variant, True, (size, size, 3))
    assert full.count_params() == parameters
    assert effl.block_count(full) == blocks
    assert full.get_layer("stem_conv").filters == effl.STEM_FILTERS  # stem not scaled
    assert full.get_layer("top_conv").filters == effl.HEAD_FILTERS  # head not scaled
    assert full.get_layer(f"block{blocks - 1:02d}_project_conv").filters == last_width
    # First and last stage keep one block each: block 00 has no expand conv, block 01 does.
    assert "block00_expand_conv" not in {layer.name for layer in full.layers}
    assert full.get_layer(f"block{blocks - 2:02d}_project_conv").filters != last_width
    backbone = effl.efficientnet_lite(variant, False, (64, 64, 3))
    assert backbone.output_shape == (None, effl.FEATURE_DIM)
    assert backbone.name == f"{variant}_backbone"
    top = {layer.name[:7] for layer in effl.top_block_layers(backbone, 1)}
    assert top - {name[:7] for name in effl.HEAD_LAYER_NAMES} == {f"block{blocks - 1:02d}"}
