"""The model card (imgclf/registry/card.py) from a run-like object: no MLflow."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from imgclf.config import RegisterParams
from imgclf.registry.card import MAX_DESCRIPTION, description_for, model_card, per_class_metrics

SPLITS = ("train", "val", "test")
CLASSES = ["dog", "cat", "bird"]


def fake_run(params: dict[str, str] | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        info=SimpleNamespace(run_id="r1"),
        data=SimpleNamespace(
            tags={"data_version": "dv1", "git_commit": "abc"}, params=params or {}
        ),
    )


def test_model_card_keeps_use_and_limits_when_the_description_is_cut() -> None:
    run = fake_run({f"p{i:03d}": "x" * 60 for i in range(100)})
    metrics = {s: {"accuracy": 0.9, "n": 100, "ece": 0.02} for s in ("train", "val", "test")}
    card = model_card("m", "3", run, metrics, None, RegisterParams(), ["cat", "dog"])
    assert card.startswith("# m v3") and "| accuracy | 0.9000 | 0.9000 | 0.9000 |" in card
    assert "±0.0588" in card and "ECE 0.0200" in card and "| p099 |" in card
    description = description_for(card)
    assert len(description) <= MAX_DESCRIPTION < len(card)
    assert "## Limitations" in description and description.endswith("model_card.md)\n")


ROWS = {
    c: {"precision": 0.5 + i / 10, "recall": 0.9 - i / 10, "support": 10 + i}
    for i, c in enumerate(CLASSES)
}


@pytest.mark.parametrize(
    "table",
    [
        ROWS,  # {class: {metric: x}}, as scikit-learn's classification_report(output_dict=True)
        {m: {c: ROWS[c][m] for c in CLASSES} for m in ("precision", "recall", "support")},
        [{"class": c, **ROWS[c]} for c in reversed(CLASSES)],  # records, in any order
    ],
    ids=["class-major", "metric-major", "records"],
)
def test_per_class_metrics_are_read_whatever_their_nesting(table: Any) -> None:
    confusion = {a: {p: int(a == p) for p in CLASSES} for a in CLASSES}  # class-named columns
    test = {"accuracy": 0.9, "confusion": confusion, "tables": {"per_class": table}}
    assert per_class_metrics(test, CLASSES) == ROWS
    assert per_class_metrics({"accuracy": 0.9, "confusion": confusion}, CLASSES) == {}


def test_card_of_three_classes_shows_the_class_list_and_per_class_table() -> None:
    per_class = [{"class": c, **ROWS[c]} for c in CLASSES]
    metrics = {
        s: {"accuracy": 0.8, "macro_f1": 0.75, "n": 30, "per_class": per_class} for s in SPLITS
    }
    counts = {"bird": 10, "cat": 10, "dog": 10}
    split_counts = {
        "total": 30,
        "classes": counts,
        "splits": {
            s: {"total": 10, "groups": 10, "classes": {"bird": 3, "cat": 3, "dog": 4}}
            for s in SPLITS
        },
    }
    card = model_card("m", "2", fake_run(), metrics, split_counts, RegisterParams(), CLASSES)
    assert "| Classes | 0 = dog, 1 = cat, 2 = bird |" in card
    assert "| macro_f1 | 0.7500 | 0.7500 | 0.7500 |" in card
    assert "per_class" not in card  # a table is no row of the metrics table
    assert "| class | precision | recall | support |" in card
    assert "| bird | 0.7000 | 0.7000 | 12 |" in card
    assert "| split | images | groups | dog | cat | bird |" in card  # class order
    assert "Classification of one photo as one of 3 classes (dog / cat / bird)" in card
    binary = model_card("m", "1", fake_run(), metrics, None, RegisterParams(), ["cat", "dog"])
    assert "Binary classification of one photo as cat / dog" in binary
    assert "### Per class" not in binary  # its metrics name other classes
