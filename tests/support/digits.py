"""A real ten-class image set that ships with a pinned package: scikit-learn's 1,797 handwritten
digits (8×8, 16 grey levels), written out as one PNG folder per digit and upscaled past the
pipeline's minimum side, the way a user's class folders look."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(root: Path, side: int = 64) -> Counter[str]:
    """root/<digit>/<index>.png for every digit image, `side` px square RGB; returns the counts."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts: Counter[str] = Counter()
    for index, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        grey = Image.fromarray((pixels * (255 / 16)).round().astype(np.uint8))
        image = grey.resize((side, side), Image.Resampling.BICUBIC).convert("RGB")
        folder = root / str(target)
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:04d}.png")
        counts[str(target)] += 1
    return counts
