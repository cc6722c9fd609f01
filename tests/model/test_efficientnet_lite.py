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
