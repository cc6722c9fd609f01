"""Stratified, group-aware, seeded splitting (imgclf.data.split)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from imgclf.data.labels import ClassListError
from imgclf.data.split import (
    SPLIT_COLUMNS,
    SPLITS,
    check_class_counts,
    min_images_per_class,
    split_report,
    split_rows,
)
from imgclf.io import write_tsv

FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}


def make_rows(n_cat: int = 700, n_dog: int = 300, seed: int = 0) -> list[dict]:
    """Rows of two imbalanced classes; about a fifth of the groups hold 2-4 images."""
    rng = random.Random(seed)
    rows, group = [], 0
    for label, count in (("cat", n_cat), ("dog", n_dog)):
        made = 0
        while made < count:
            size = min(rng.choice([1, 1, 1, 1, 2, 3, 4]), count - made)
            for k in range(size):
                path = f"{label}/{label}.{made + k:05d}.jpg"
                rows.append(
                    {"path": path, "label": label, "group": group, "sha256": f"{group}-{k}"}
                )
            made += size
            group += 1
    return rows


def singletons(n: int) -> list[dict]:
    """n rows of class `a`, each its own group (what dedupe's kept rows are)."""
    return [{"path": f"x/{i:04d}", "label": "a", "group": i, "sha256": str(i)} for i in range(n)]


def as_bytes(splits: dict[str, list[dict]], tmp_path: Path) -> dict[str, bytes]:
    out = {}
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        write_tsv(tmp_path / f"{name}.tsv", splits[name], SPLIT_COLUMNS)
        out[name] = (tmp_path / f"{name}.tsv").read_bytes()
    return out


def test_fractions_and_stratification():
    rows = make_rows()
    splits = split_rows(rows, FRACTIONS, seed=42)
    assert sum(len(s) for s in splits.values()) == len(rows)
    assert sorted(r["path"] for s in splits.values() for r in s) == sorted(r["path"] for r in rows)
    totals = Counter(r["label"] for r in rows)
    for name, fraction in FRACTIONS.items():
        assert abs(len(splits[name]) / len(rows) - fraction) < 0.01, name
        counts = Counter(r["label"] for r in splits[name])
        for label, total in totals.items():  # each class keeps its share in every split
            assert abs(counts[label] - fraction * total) <= 4, (name, label, counts)
        assert [r["path"] for r in splits[name]] == sorted(r["path"] for r in splits[name])


def test_no_group_straddles_splits():
    rows = make_rows()
    splits = split_rows(rows, FRACTIONS, seed=7)
    owner: dict[object, str] = {}
    for name, members in splits.items():
        for r in members:
            assert owner.setdefault(r["group"], name) == name
    sizes = Counter(r["group"] for r in rows)
    assert max(sizes.values()) > 1  # the data really has multi-image groups


def test_singletons_meet_targets_exactly():
    splits = split_rows(singletons(200), FRACTIONS, seed=1)
    assert {name: len(s) for name, s in splits.items()} == {"train": 140, "val": 30, "test": 30}


def test_byte_identical_reruns_and_input_order_invariance(tmp_path):
    rows = make_rows()
    first = as_bytes(split_rows(rows, FRACTIONS, seed=42), tmp_path / "a")
    again = as_bytes(split_rows(rows, FRACTIONS, seed=42), tmp_path / "b")
    shuffled_rows = [dict(reversed(list(r.items()))) for r in rows]
    random.Random(3).shuffle(shuffled_rows)
    shuffled = as_bytes(split_rows(shuffled_rows, FRACTIONS, seed=42), tmp_path / "c")
    assert first == again == shuffled
    assert first["train"].startswith(b"path\tlabel\tgroup\tsha256\n")


def test_different_seed_gives_a_different_split(tmp_path):
    rows = make_rows()
    a = split_rows(rows, FRACTIONS, seed=42)
    b = split_rows(rows, FRACTIONS, seed=43)
    assert {r["path"] for r in a["test"]} != {r["path"] for r in b["test"]}
    assert abs(len(a["test"]) - len(b["test"])) <= 6  # same targets, different members


def test_zero_val_fraction_and_tiny_classes():
    rows = make_rows(n_cat=3, n_dog=2)
    splits = split_rows(rows, {"train": 0.8, "val": 0.0, "test": 0.2}, seed=0)
    assert splits["val"] == []
    assert sum(len(s) for s in splits.values()) == 5


def test_group_with_mixed_labels_is_refused():
    rows = [
        {"path": "a", "label": "cat", "group": 1, "sha256": "x"},
        {"path": "b", "label": "dog", "group": 1, "sha256": "y"},
    ]
    with pytest.raises(ValueError, match="mixes labels"):
        split_rows(rows, FRACTIONS, seed=0)


def test_report_counts():
    rows = make_rows(n_cat=70, n_dog=30)
    report = split_report(split_rows(rows, FRACTIONS, seed=0))
    assert report["total"] == 100
    assert report["classes"] == {"cat": 70, "dog": 30}
    assert sum(s["total"] for s in report["splits"].values()) == 100
    assert (
        report["splits"]["train"]["classes"]["cat"]
        + report["splits"]["val"]["classes"]["cat"]
        + report["splits"]["test"]["classes"]["cat"]
        == 70
    )


@pytest.mark.parametrize(
    ("fractions", "needed"),
    [
        ((0.70, 0.15, 0.15), 5),  # 4 images round to 3/1/0: test would get none of the class
        ((0.8, 0.0, 0.2), 3),  # no val split: one image each for train and test
        ((0.6, 0.2, 0.2), 4),
        ((0.5, 0.25, 0.25), 3),
    ],
)
def test_min_images_per_class_fills_every_split_from_there_on(fractions, needed):
    assert min_images_per_class(fractions) == needed
    named = dict(zip(SPLITS, fractions, strict=True))
    for n in range(needed - 1, needed + 40):  # against the rule the split really applies
        splits = split_rows(singletons(n), named, seed=0)
        filled = all(splits[name] for name, fraction in named.items() if fraction)
        assert filled == (n >= needed), n


def test_class_counts_are_checked_before_splitting():
    rows = make_rows(n_cat=20, n_dog=5)
    check_class_counts(rows, ["cat", "dog"], FRACTIONS)  # 5 is enough for 0.70/0.15/0.15
    with pytest.raises(ClassListError) as small:
        check_class_counts(make_rows(n_cat=20, n_dog=4), ["cat", "dog"], FRACTIONS)
    assert str(small.value).startswith("class 'dog' has 4 images after dedupe")
    assert "at least 5 images per class" in str(small.value)
    with pytest.raises(ClassListError, match=r"^class 'dog' has 4 images, 'bird' has 0 images"):
        check_class_counts(make_rows(n_cat=20, n_dog=4), ["cat", "dog", "bird"], FRACTIONS)
    with pytest.raises(ClassListError, match=r"labels \['dog'\] are not in the class list"):
        check_class_counts(rows, ["cat", "bird"], FRACTIONS)
