"""Replaying champion moves (imgclf/registry/history.py's stack): pure, no MLflow."""

from __future__ import annotations

from imgclf.registry.history import champion_stack


def _event(action: str, version: str | None) -> dict[str, str | None]:
    return {"action": action, "version": version}


def test_promotions_push_and_rollbacks_pop() -> None:
    events = [
        _event("auto-promote", "1"),
        _event("auto-promote", "2"),
        _event("promote", "3"),
        _event("rollback", "2"),
        _event("external", "4"),
    ]
    assert champion_stack(events) == ["1", "2", "4"]


def test_a_rollback_past_the_first_champion_leaves_an_empty_stack() -> None:
    events = [_event("auto-promote", "1"), _event("rollback", None), _event("rollback", None)]
    assert champion_stack(events) == []


def test_an_external_move_to_no_champion_pushes_nothing() -> None:
    assert champion_stack([_event("auto-promote", "1"), _event("external", None)]) == ["1"]
