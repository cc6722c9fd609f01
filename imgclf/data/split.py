"""Seeded, stratified, group-aware train/val/test split of the deduplicated manifest.

Rule (`split_rows`):
- Rows are bucketed by `group` (a duplicate group from dedupe); a group is never cut across splits.
  A group must carry one label (dedupe quarantines label conflicts).
- Per label, integer targets are the label's row count × fractions, rounded by largest remainder.
- Per label, groups are ordered by (size descending, sha256(seed, label, smallest path)), a seeded
  shuffle that depends only on the rows, never on their input order. Each group goes to the split
  furthest below its target (ties: train, val, test). With singleton groups the targets are met
  exactly; larger groups may overshoot by less than the group's size.
- Each split file is sorted by path, so the same rows give byte-identical files.

The class list comes from the download report (download.classes resolved: listed or `auto`) and
is written beside the split files as classes.json (label index = position), what train, evaluate
and register read. Every class must be big enough to be stratified: `min_images_per_class`.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from imgclf.config import Paths, SplitParams
from imgclf.data.labels import ClassListError, checked_classes
from imgclf.io import atomic_dir, read_json, read_tsv, write_json, write_tsv

SPLITS = ("train", "val", "test")
SPLIT_COLUMNS = ("path", "label", "group", "sha256")


def _targets(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder rounding of n × fractions (sums to n; ties -> earlier split)."""
    raw = [n * f for f in fractions]
    floors = [math.floor(x) for x in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (-(raw[i] - floors[i]), i))
    for i in by_remainder[: n - sum(floors)]:
        floors[i] += 1
    return floors


def _fills_every_split(n: int, fractions: Sequence[float]) -> bool:
    targets = _targets(n, fractions)
    return all(target > 0 for target, fraction in zip(targets, fractions, strict=True) if fraction)


def min_images_per_class(fractions: Sequence[float]) -> int:
    """The fewest images a class needs so that this count and every larger one put at least one
    image in each split with a non-zero fraction (largest-remainder rounding is not monotonic
    below that). Since train and test are never empty, it is also at least the 2 per class that
    scikit-learn's stratified splitters ask for."""
    smallest = min(f for f in fractions if f > 0)
    # From ceil(1 / smallest) on, every non-zero split's floor is already >= 1.
    short = [n for n in range(math.ceil(1 / smallest) + 1) if not _fills_every_split(n, fractions)]
    return max(short) + 1


def check_class_counts(
    rows: Sequence[Mapping[str, Any]], classes: Sequence[str], fractions: Mapping[str, float]
) -> None:
    """Refuse, with one line naming each class and its count, labels outside `classes` and
    classes with too few images (none at all included) for a stratified split."""
    counts = Counter(str(row["label"]) for row in rows)
    unknown = sorted(set(counts) - set(classes))
    if unknown:
        raise ClassListError(f"labels {unknown} are not in the class list {list(classes)}")
    needed = min_images_per_class(list(fractions.values()))
    too_few = [c for c in classes if counts[c] < needed]
    if too_few:
        named = ", ".join(f"{c!r} has {counts[c]} image{'s' * (counts[c] != 1)}" for c in too_few)
        shares = "/".join(f"{fraction:g}" for fraction in fractions.values())
        raise ClassListError(
            f"class {named} after dedupe: too few for a stratified {'/'.join(fractions)} split "
            f"({shares}), which needs at least {needed} images per class; add images or leave "
            f"the class out of download.classes"
        )


def _shuffle_key(seed: int, label: str, first_path: str) -> str:
    return hashlib.sha256(f"{seed}\0{label}\0{first_path}".encode()).hexdigest()


def split_rows(
    rows: Sequence[Mapping[str, Any]],
    fractions: Mapping[str, float],
    seed: int,
) -> dict[str, list[dict[str, Any]]]:
    """Assign rows (path, label, group, sha256) to splits; see the module docstring for the rule."""
    names = list(fractions)
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row["group"]), []).append(dict(row))
    by_label: dict[str, list[list[dict[str, Any]]]] = {}
    for key, members in groups.items():
        labels = {str(m["label"]) for m in members}
        if len(labels) != 1:
            raise ValueError(f"group {key} mixes labels {sorted(labels)}; dedupe should quarantine")
        by_label.setdefault(labels.pop(), []).append(members)

    out: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for label in sorted(by_label):
        label_groups = by_label[label]
        for members in label_groups:
            members.sort(key=lambda m: str(m["path"]))
        label_groups.sort(
            key=lambda g: (-len(g), _shuffle_key(seed, label, str(g[0]["path"])), g[0]["path"])
        )
        n = sum(len(g) for g in label_groups)
        targets = dict(zip(names, _targets(n, [fractions[s] for s in names]), strict=True))
        filled = dict.fromkeys(names, 0)
        for members in label_groups:
            best = max(names, key=lambda s: (targets[s] - filled[s], targets[s], -names.index(s)))
            filled[best] += len(members)
            out[best].extend(members)

    seen: dict[str, str] = {}
    for name in names:
        out[name].sort(key=lambda m: str(m["path"]))
        for row in out[name]:
            owner = seen.setdefault(str(row["group"]), name)
            assert owner == name, f"group {row['group']} straddles {owner} and {name}"
    return out


def split_report(splits: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Per-split class counts, group counts and totals."""
    report: dict[str, Any] = {"splits": {}}
    classes: Counter[str] = Counter()
    for name, rows in splits.items():
        counts = Counter(str(r["label"]) for r in rows)
        classes.update(counts)
        report["splits"][name] = {
            "total": len(rows),
            "groups": len({str(r["group"]) for r in rows}),
            "classes": dict(sorted(counts.items())),
        }
    total = sum(len(rows) for rows in splits.values())
    report["total"] = total
    report["classes"] = dict(sorted(classes.items()))
    for name in splits:
        report["splits"][name]["fraction"] = round(len(splits[name]) / total, 4) if total else 0.0
    return report


def run_split(paths: Paths, params: SplitParams) -> dict[str, Any]:
    """Split the dedupe manifest's kept rows into artifacts/split (+ classes.json, the download
    report's class list); write reports/split.json. A class too small to split raises
    ClassListError and leaves the previous output."""
    classes = checked_classes(read_json(paths.download_report)["classes"])
    rows = [row for row in read_tsv(paths.dedupe_manifest) if row["kept"] == "1"]
    fractions = {"train": params.train, "val": params.val, "test": params.test}
    check_class_counts(rows, classes, fractions)
    splits = split_rows(rows, fractions, params.seed)
    with atomic_dir(paths.split_dir) as out:
        for name in SPLITS:
            write_tsv(out / paths.split_manifest(name).name, splits[name], SPLIT_COLUMNS)
        write_json(out / paths.split_classes.name, classes)
    report = split_report(splits) | {"seed": params.seed, "target_fractions": fractions}
    write_json(paths.split_report, report)
    return report
