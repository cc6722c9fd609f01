"""Registering train's run as a model version: tags, model card, `challenger`, then the gate.

Each version carries tags `data_version`, `git_commit`, `classes` (its class list, a JSON list in
label order: the service and the gate read it), `engine` (the run artifact of its exported inference
engine, which the service runs) with `engine_max_abs_diff` (its distance from Keras on real photos),
`test_<metric>` for every test metric of the run,
and `gate_decision` / `gate_rule` / `gate_reason`; its description is the model card,
also logged to the run as `model_card.md`. Registering a run that already has a version reuses
that version (idempotent): the gate is not run again, so a later manual rollback is not undone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclf.config import RegisterParams
from imgclf.registry.card import description_for, model_card, split_metrics
from imgclf.registry.client import (
    CHALLENGER,
    CLASSES_TAG,
    ENGINE_ARTIFACTS,
    ENGINE_TAG,
    RegistryError,
    aliases_of,
    candidate_of,
    champion_version,
    ensure_registered_model,
    get_run,
    model_version,
    version_for_run,
)
from imgclf.registry.gate import Candidate, GateDecision, decide, higher_is_better
from imgclf.registry.history import move_champion, sync_history

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient


def _report(
    client: MlflowClient,
    name: str,
    version: ModelVersion,
    decision: GateDecision,
    params: RegisterParams,
    candidate: Candidate,
    champion: Candidate | None,
) -> dict[str, Any]:
    return {
        "model_name": name,
        "version": int(version.version),
        "run_id": version.run_id,
        "model_uri": f"models:/{name}/{version.version}",
        "aliases": aliases_of(client, name, str(version.version)),
        "champion_version": champion_version(client, name),
        "decision": decision.decision,
        "rule": decision.rule,
        "reason": decision.reason,
        "metric": params.metric,
        "direction": "higher" if higher_is_better(params.metric, params.direction) else "lower",
        "value": candidate.value,
        "data_version": candidate.data_version,
        "classes": None if candidate.classes is None else list(candidate.classes),
        "git_commit": version.tags.get("git_commit"),
        "previous_champion": asdict(champion) if champion else None,
    }


def _gated_test_metrics(
    client: MlflowClient, run: Run, params: RegisterParams, artifact_path: str
) -> dict[str, float]:
    """The run's finite test metrics, after checking it holds a model and the gate's metric."""
    run_id = run.info.run_id
    if "MLmodel" not in {
        a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run_id, artifact_path)
    }:
        raise RegistryError(f"run {run_id} has no model at artifact path {artifact_path!r}")
    test_metrics = {
        k: v for k, v in run.data.metrics.items() if k.startswith("test_") and math.isfinite(v)
    }
    if f"test_{params.metric}" not in test_metrics:  # no version without a score to gate on
        raise RegistryError(
            f"run {run_id} has no test_{params.metric} metric: run evaluate first "
            f"(or set register.metric to one of: "
            f"{', '.join(sorted(k.removeprefix('test_') for k in test_metrics)) or 'none'})"
        )
    return test_metrics


def _already_registered(
    client: MlflowClient, name: str, existing: ModelVersion, params: RegisterParams
) -> dict[str, Any]:
    """The report for a run whose version went through the gate before: nothing changes."""
    decision = GateDecision(
        False,
        "unchanged",
        "already_registered",
        f"run {existing.run_id} is already version {existing.version} (its gate said "
        f"{existing.tags['gate_decision']}: {existing.tags.get('gate_reason', '')}); "
        f"nothing changed",
    )
    candidate = candidate_of(client, existing, params.metric)
    return _report(client, name, existing, decision, params, candidate, None)


def _create_or_retag(
    client: MlflowClient,
    name: str,
    run: Run,
    existing: ModelVersion | None,
    tags: Mapping[str, str],
    artifact_path: str,
) -> str:
    """The version's number: a new version, or the one an earlier attempt registered before it
    stopped short of the gate (tagged again)."""
    if existing is None:
        version = client.create_model_version(
            name,
            source=f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}",
            run_id=run.info.run_id,
            tags=dict(tags),
        )
        return str(version.version)
    for key, value in tags.items():
        client.set_model_version_tag(name, existing.version, key, value)
    return str(existing.version)


def engine_tags(
    client: MlflowClient, run_id: str, path: Path, report: Mapping[str, Any]
) -> dict[str, str]:
    """Log the exported engine into the run; the tags that point the service at it."""
    client.log_artifact(run_id, str(path), ENGINE_ARTIFACTS)
    return {
        ENGINE_TAG: f"{ENGINE_ARTIFACTS}/{path.name}",
        "engine_max_abs_diff": repr(float(report["max_abs_diff"])),
    }


def register_run(
    client: MlflowClient,
    run_id: str,
    params: RegisterParams,
    *,
    metrics: Mapping[str, Mapping[str, Any]] | None = None,
    split_counts: Mapping[str, Any] | None = None,
    classes: Sequence[str] | None = None,
    engine: tuple[Path, Mapping[str, Any]] | None = None,
    artifact_path: str = "model",
) -> dict[str, Any]:
    """Register `runs:/<run_id>/<artifact_path>` under params.model_name and run the gate.

    `metrics` ({"train": {...}, "val": {...}, "test": {...}}, reports/metrics.json) feeds the
    model card; without it the run's `<split>_<name>` metrics do. The gate always reads the
    run's `test_<metric>`. `classes` (the split's class list) becomes the version's `classes`
    tag, shown on the card and compared with the champion's. `engine` (the exported engine's file
    and the export report, already checked) is logged into the run and named by the `engine` tag.
    Returns the report written to reports/register.json.
    """
    name = params.model_name
    run = get_run(client, run_id)
    test_metrics = _gated_test_metrics(client, run, params, artifact_path)

    ensure_registered_model(client, name)
    sync_history(client, name)
    existing = version_for_run(client, name, run_id)
    if existing is not None and "gate_decision" in existing.tags:
        return _already_registered(client, name, existing, params)

    tags = {
        "data_version": run.data.tags.get("data_version", "unknown"),
        "git_commit": run.data.tags.get("git_commit", "unknown"),
        **({CLASSES_TAG: json.dumps(list(classes))} if classes else {}),
        **{k: repr(float(v)) for k, v in test_metrics.items()},
        **(engine_tags(client, run_id, *engine) if engine else {}),
    }
    number = _create_or_retag(client, name, run, existing, tags, artifact_path)
    card = model_card(
        name,
        number,
        run,
        metrics or split_metrics(run.data.metrics),
        split_counts,
        params,
        classes,
    )
    client.update_model_version(name, number, description=description_for(card))
    client.log_text(run_id, card, "model_card.md")

    champion_number = champion_version(client, name)
    champion = (
        candidate_of(client, model_version(client, name, champion_number), params.metric)
        if champion_number
        else None
    )
    client.set_registered_model_alias(name, CHALLENGER, number)
    version = model_version(client, name, number)
    candidate = candidate_of(client, version, params.metric)
    decision = decide(candidate, champion, params)
    if decision.promote:
        move_champion(client, name, number, "auto-promote", decision.reason)
    for key, value in (
        ("gate_decision", decision.decision),
        ("gate_rule", decision.rule),
        ("gate_reason", decision.reason),
    ):
        client.set_model_version_tag(name, number, key, value)
    return _report(client, name, version, decision, params, candidate, champion)
