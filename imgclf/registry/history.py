"""Moving `champion`, and the record of every move (promote, roll back, the gate's promotions).

MLflow keeps no record of which version was champion when (mlflow/mlflow#2169), so every move of
`champion` made here is appended as one registered-model tag `champion_history.<seq>`
(zero-padded, so the tags sort in order) whose value is a JSON event:
    {"seq": 3, "version": "2", "previous": "1", "action": "auto-promote" | "promote" |
     "rollback" | "external", "at": "<UTC ISO time>", "by": "<user>", "reason": "..."}
One tag per event keeps each value far below the 5000-character column of SQL backends and
shows the trail in the UI next to the model. A move made outside this package (the UI, the API)
is noticed the next time anything here runs, and recorded as an `external` event. Replaying the
events gives a stack of champions (a promotion of any kind pushes, a rollback pops): `rollback`
pops the current champion and returns `champion` to the one below, so repeated rollbacks walk
back through the champions, undoing promotions in reverse order, until only the first is left.
Two writers at the same instant could pick the same sequence number: promotions are rare and
made by one pipeline or one person, so that race is accepted.

A person promotes or rolls back by moving `champion` in the MLflow UI (registered model ->
version -> aliases) or with `imgclf promote --version N` / `imgclf rollback`.
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from imgclf.registry.client import (
    CHAMPION,
    RegistryError,
    champion_version,
    classes_of,
    data_version_of,
    model_version,
    registered_model,
    utc_now,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

HISTORY_PREFIX = "champion_history."


def _user() -> str:
    try:
        return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def champion_history(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Every recorded move of `champion`, oldest first."""
    tags = registered_model(client, name).tags
    events = [json.loads(v) for k, v in tags.items() if k.startswith(HISTORY_PREFIX)]
    return sorted(events, key=lambda event: event["seq"])


def _append_event(
    client: MlflowClient,
    name: str,
    version: str | None,
    previous: str | None,
    action: str,
    reason: str,
) -> dict[str, Any]:
    history = champion_history(client, name)
    seq = history[-1]["seq"] + 1 if history else 1
    event = {
        "seq": seq,
        "version": version,
        "previous": previous,
        "action": action,
        "at": utc_now(),
        "by": _user(),
        "reason": reason[:1000],
    }
    client.set_registered_model_tag(name, f"{HISTORY_PREFIX}{seq:05d}", json.dumps(event))
    return event


def champion_stack(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """Replay the events: every promotion pushes its version, every rollback pops one."""
    stack: list[str] = []
    for event in history:
        if event["action"] == "rollback":
            if stack:
                stack.pop()
        elif event["version"] is not None:
            stack.append(event["version"])
    return stack


def sync_history(client: MlflowClient, name: str) -> dict[str, Any] | None:
    """Record a move of `champion` made outside this package (UI, API) as an `external` event."""
    history = champion_history(client, name)
    recorded = history[-1]["version"] if history else None
    current = champion_version(client, name)
    if current == recorded:
        return None
    return _append_event(
        client,
        name,
        current,
        recorded,
        "external",
        "champion moved outside imgclf (MLflow UI or API); noticed at this time",
    )


def move_champion(
    client: MlflowClient, name: str, version: str, action: str, reason: str
) -> dict[str, Any]:
    """Point `champion` at `version` and record the move; returns the event."""
    previous = champion_version(client, name)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    return _append_event(client, name, str(version), previous, action, reason)


def promote(
    client: MlflowClient, name: str, version: str | int, reason: str = ""
) -> dict[str, Any]:
    """Point `champion` at `version` (a person's decision) and record it.

    Returns {"version", "previous", "event", "note"}; note warns when the two versions were
    tested on different data or classify into different classes (the promotion still happens:
    a person decided).
    """
    sync_history(client, name)
    target = model_version(client, name, version)
    current = champion_version(client, name)
    if current == str(target.version):
        return {"version": current, "previous": current, "event": None, "note": "already champion"}
    notes = []
    if current is not None:
        old = model_version(client, name, current)
        mine, theirs = data_version_of(client, target), data_version_of(client, old)
        if mine != theirs:
            notes.append(f"data_version differs from v{current}'s ({mine} vs {theirs})")
        my_classes, their_classes = classes_of(target), classes_of(old)
        if my_classes and their_classes and my_classes != their_classes:
            notes.append(f"classes differ from v{current}'s ({my_classes} vs {their_classes})")
    note = "; ".join(notes)
    event = move_champion(client, name, str(target.version), "promote", reason or "manual")
    return {"version": str(target.version), "previous": current, "event": event, "note": note}


def rollback(client: MlflowClient, name: str, reason: str = "") -> dict[str, Any]:
    """Point `champion` back at the version the current champion replaced, and record it."""
    sync_history(client, name)
    current = champion_version(client, name)
    if current is None:
        raise RegistryError(f"model {name!r} has no champion to roll back")
    stack = champion_stack(champion_history(client, name))
    target = stack[-2] if len(stack) >= 2 and stack[-1] == current else None
    if target is None:
        raise RegistryError(
            f"no champion before v{current} is recorded for {name!r}; nothing to roll back to "
            f"(promote a version: imgclf promote --version N)"
        )
    model_version(client, name, target)  # still there?
    event = move_champion(client, name, target, "rollback", reason or f"rollback from v{current}")
    return {"version": target, "previous": current, "event": event, "note": ""}
