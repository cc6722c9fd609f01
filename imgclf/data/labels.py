"""The class list (download.classes: listed names, or `auto`: the source's class folders) and a
file's class from its path inside the source: Kaggle-style names or class folders."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath


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


# --------------------------------------------------------------------------------------------
# The class list
# --------------------------------------------------------------------------------------------

AUTO = "auto"  # download.classes: the source's class folders
_UNSAFE = re.compile(r"[/\\\x00-\x1f]|^\s|\s$")  # path separators, tabs/newlines, outer spaces


class ClassListError(ValueError):
    """A class list the pipeline cannot use; the message is one line that names the class."""


def checked_classes(classes: Sequence[str]) -> list[str]:
    """`classes` as a list, refused when it cannot label a dataset: fewer than two, a name that
    cannot be a folder or a TSV cell, or two names that differ only in case (labels match any
    case, so the two would be one class)."""
    classes = list(classes)
    if len(classes) < 2:
        raise ClassListError(f"need at least 2 classes, got {classes}")
    seen: dict[str, str] = {}
    for name in classes:
        if not isinstance(name, str) or name in ("", ".", "..") or _UNSAFE.search(name):
            raise ClassListError(f"class name {name!r} cannot be a folder name")
        if name.lower() in seen:
            raise ClassListError(f"classes {seen[name.lower()]!r} and {name!r} are one class")
        seen[name.lower()] = name
    return classes


def _in_folders(paths: Sequence[tuple[str, ...]]) -> list[tuple[str, ...]]:
    return [parts for parts in paths if len(parts) > 1 and not parts[0].startswith(".")]


def class_folders(files: Sequence[str]) -> list[str]:
    """The sorted top-level folder names of a source's files (relative POSIX paths), below a
    single folder that wraps them all (`PetImages/Cat/…`, `PetImages/Dog/…` -> Cat, Dog).
    Hidden folders are never classes."""
    nested = _in_folders([PurePosixPath(f).parts for f in files])
    while len({parts[0] for parts in nested}) == 1:
        inner = _in_folders([parts[1:] for parts in nested])
        if not inner:  # the one folder holds files only: it is the only class
            break
        nested = inner
    return sorted({parts[0] for parts in nested})


def resolve_classes(classes: Sequence[str] | str, files: Sequence[str]) -> list[str]:
    """download.classes as the list to label with: the listed names, in order, or for `auto`
    the source's class folders (`class_folders`), sorted."""
    if classes != AUTO:
        return checked_classes(classes)
    found = class_folders(files)
    if len(found) < 2:
        raise ClassListError(
            f"download.classes is auto but the source has {len(found)} class folder(s) "
            f"({', '.join(found) or 'none'}); put each class's images in a folder of its own, "
            f"or list the classes"
        )
    return checked_classes(found)


def read_classes(path: Path) -> list[str]:
    """The class list the split stage wrote (a JSON list; label index = position)."""
    with open(path, encoding="utf-8") as fh:
        return checked_classes(json.load(fh))
