"""The model card (imgclf/registry/card.py) from a run-like object: no MLflow."""

from __future__ import annotations

from types import SimpleNamespace

from imgclf.config import RegisterParams
from imgclf.registry.card import MAX_DESCRIPTION, description_for, model_card


def test_model_card_keeps_use_and_limits_when_the_description_is_cut() -> None:
    run = SimpleNamespace(
        info=SimpleNamespace(run_id="r1"),
        data=SimpleNamespace(
            tags={"data_version": "dv1", "git_commit": "abc"},
            params={f"p{i:03d}": "x" * 60 for i in range(100)},
        ),
    )
    metrics = {s: {"accuracy": 0.9, "n": 100, "ece": 0.02} for s in ("train", "val", "test")}
    card = model_card("m", "3", run, metrics, None, RegisterParams(), ["cat", "dog"])
    assert card.startswith("# m v3") and "| accuracy | 0.9000 | 0.9000 | 0.9000 |" in card
    assert "±0.0588" in card and "ECE 0.0200" in card and "| p099 |" in card
    description = description_for(card)
    assert len(description) <= MAX_DESCRIPTION < len(card)
    assert "## Limitations" in description and description.endswith("model_card.md)\n")
