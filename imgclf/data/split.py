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
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from imgclf.config import Paths, SplitParams
from imgclf.io import atomic_dir, read_tsv, write_json, write_tsv

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
    """Split the dedupe manifest's kept rows into artifacts/split; write reports/split.json."""
    rows = [row for row in read_tsv(paths.dedupe_manifest) if row["kept"] == "1"]
    fractions = {"train": params.train, "val": params.val, "test": params.test}
    splits = split_rows(rows, fractions, params.seed)
    with atomic_dir(paths.split_dir) as out:
        for name in SPLITS:
            write_tsv(out / paths.split_manifest(name).name, splits[name], SPLIT_COLUMNS)
    report = split_report(splits) | {"seed": params.seed, "target_fractions": fractions}
    write_json(paths.split_report, report)
    return report
