"""A file's class from its path inside the source: Kaggle-style names or class folders."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath


def _class_lookup(classes: Sequence[str]) -> dict[str, str]:
    """Lower-case spelling -> class; exact names win over singular/plural variants."""
    lookup = {c.lower(): c for c in classes}
    for c in classes:
        low = c.lower()
        variants = {low + "s", low + "es"}
        if low.endswith("s"):
            variants.add(low[:-1])
        if low.endswith("es"):
            variants.add(low[:-2])
        if low.endswith("y"):
            variants.add(low[:-1] + "ies")
        if low.endswith("ies"):
            variants.add(low[:-3] + "y")
        for variant in sorted(variants):
            lookup.setdefault(variant, c)
    return lookup


def infer_label(relpath: str | PurePosixPath, classes: Sequence[str]) -> str | None:
    """The class of a file from its path inside the source, or None.

    Kaggle-style names first (`cat.123.jpg` -> cat), then the nearest parent folder whose name is
    a class, case-insensitive, singular or plural (`PetImages/Dog/1.jpg`, `train/cats/x.png`).
    """
    parts = PurePosixPath(relpath).parts
    if not parts:
        return None
    lookup = _class_lookup(classes)
    name_parts = parts[-1].split(".")
    if len(name_parts) >= 3 and name_parts[0].lower() in lookup:
        return lookup[name_parts[0].lower()]
    for folder in reversed(parts[:-1]):
        if folder.lower() in lookup:
            return lookup[folder.lower()]
    return None
