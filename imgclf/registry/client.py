"""Model registry: register train's run, gate the `champion` alias, promote and roll back by hand.

Aliases (MLflow 3 replaces stages with aliases):
    challenger  the newest registered version: every new version takes it when registered
    champion    the version in service: the BentoML service loads `models:/<name>@champion`

The gate (`register:` in params.yaml) decides whether a new version becomes champion:
  * its `test_<metric>` must reach `min_value` (a ceiling when lower is better), if set;
  * with no champion yet it is promoted;
  * otherwise it must beat the champion's `test_<metric>` by more than `min_delta`, where
    "beat" follows `direction` (auto: lower is better for log_loss, ece, fp, fn, ...);
  * only on the SAME data: both versions carry the train run's `data_version` tag (a content hash
    of the train/val/test manifests). When they differ, the two test scores come from different
    test sets and are not comparable, so the version stays challenger and the reason says so;
    a person compares them on one split and promotes by hand. (The hash covers all three
    manifests, so a change to the training data alone also blocks automatic promotion: the
    conservative side.)
  * `auto_promote: false` never moves `champion`; the report says what the gate would have done.

A person promotes or rolls back by moving `champion` in the MLflow UI (registered model ->
version -> aliases) or with `python -m stages.register promote --version N` / `rollback`.

Promotion history. MLflow keeps no record of which version was champion when (mlflow/mlflow#2169),
so every move of `champion` made here is appended as one registered-model tag
`champion_history.<seq>` (zero-padded, so the tags sort in order) whose value is a JSON event:
    {"seq": 3, "version": "2", "previous": "1", "action": "auto-promote" | "promote" |
     "rollback" | "external", "at": "<UTC ISO time>", "by": "<user>", "reason": "..."}
One tag per event keeps each value far below the 5000-character column of SQL backends and
shows the trail in the UI next to the model. A move made outside this module (the UI, the API) is
noticed the next time anything here runs, and recorded as an `external` event. Replaying the
events gives a stack of champions (a promotion of any kind pushes, a rollback pops): `rollback`
pops the current champion and returns `champion` to the one below, so repeated rollbacks walk
back through the champions, undoing promotions in reverse order, until only the first is left.
Two writers at the same instant could pick the same sequence number: promotions are rare and
made by one pipeline or one person, so that race is accepted.

Each version carries tags `data_version`, `git_commit`, `test_<metric>` for every test metric of
the run, and `gate_decision` / `gate_rule` / `gate_reason`; its description is the model card,
also logged to the run as `model_card.md`. Registering a run that already has a version reuses
that version (idempotent): the gate is not run again, so a later manual rollback is not undone.
"""

from __future__ import annotations

import getpass
import json
import math
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from imgclf.config import RegisterParams

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_PREFIX = "champion_history."
SPLITS = ("train", "val", "test")
# Metrics where a smaller value is better (direction: auto).
LOWER_IS_BETTER = frozenset({"log_loss", "ece", "fp", "fn", "loss", "brier", "error_rate"})
MAX_DESCRIPTION = 5000  # model version description column of the SQL backends
METRIC_ORDER = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "ece")
COUNT_KEYS = ("tn", "fp", "fn", "tp", "n")


class RegistryError(Exception):
    """A problem the user can act on; the CLI prints it as one line."""


# --------------------------------------------------------------------------------------------
# The gate (pure: no MLflow)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """What the gate compares for one version."""

    version: str | None
    value: float | None  # its test_<metric>; None when not logged
    data_version: str | None


@dataclass(frozen=True)
class Decision:
    promote: bool
    decision: str  # promoted | challenger | unchanged
    rule: str  # no_champion | better | not_better | below_min_value | data_version_differs |
    # metric_missing | champion_metric_missing | auto_promote_off | already_registered
    reason: str


def higher_is_better(metric: str, direction: str = "auto") -> bool:
    if direction != "auto":
        return direction == "higher"
    return metric not in LOWER_IS_BETTER


def decide(candidate: Candidate, champion: Candidate | None, params: RegisterParams) -> Decision:
    """The promotion gate for `candidate` against the current `champion` (None: there is none)."""
    verdict = _verdict(candidate, champion, params)
    if verdict.promote and not params.auto_promote:
        return Decision(
            False,
            "challenger",
            "auto_promote_off",
            f"register.auto_promote is false; the gate would promote it ({verdict.reason}). "
            f"A person promotes it: python -m stages.register promote --version "
            f"{candidate.version}",
        )
    return verdict


def _verdict(candidate: Candidate, champion: Candidate | None, params: RegisterParams) -> Decision:
    key = f"test_{params.metric}"
    higher = higher_is_better(params.metric, params.direction)
    better = "higher" if higher else "lower"
    value = candidate.value
    if value is None or not math.isfinite(value):
        return Decision(
            False, "challenger", "metric_missing", f"the run has no {key}: run evaluate first"
        )
    if params.min_value is not None and (
        value < params.min_value if higher else value > params.min_value
    ):
        bar = "below" if higher else "above"
        return Decision(
            False,
            "challenger",
            "below_min_value",
            f"{key} {value:.4g} is {bar} register.min_value {params.min_value:.4g}",
        )
    if champion is None:
        return Decision(
            True,
            "promoted",
            "no_champion",
            f"no champion yet and {key} {value:.4g} passes the gate",
        )
    if champion.version == candidate.version:
        return Decision(False, "unchanged", "already_champion", "it is the champion already")
    if not candidate.data_version or candidate.data_version != champion.data_version:
        return Decision(
            False,
            "challenger",
            "data_version_differs",
            f"champion v{champion.version} was tested on data_version "
            f"{champion.data_version or 'unknown'} and this version on "
            f"{candidate.data_version or 'unknown'}: scores on different test splits are not "
            f"comparable, so it is not promoted automatically; compare both on one split and "
            f"promote by hand",
        )
    if champion.value is None or not math.isfinite(champion.value):
        return Decision(
            False,
            "challenger",
            "champion_metric_missing",
            f"champion v{champion.version} has no {key} to compare with; promote by hand",
        )
    gain = value - champion.value if higher else champion.value - value
    if gain > params.min_delta:
        return Decision(
            True,
            "promoted",
            "better",
            f"{key} {value:.4g} beats champion v{champion.version}'s {champion.value:.4g} "
            f"by {gain:.4g} > min_delta {params.min_delta:g} ({better} is better)",
        )
    return Decision(
        False,
        "challenger",
        "not_better",
        f"{key} {value:.4g} does not beat champion v{champion.version}'s "
        f"{champion.value:.4g} by more than min_delta {params.min_delta:g} ({better} is better)",
    )


# --------------------------------------------------------------------------------------------
# Connecting
# --------------------------------------------------------------------------------------------


def redact(uri: str) -> str:
    """The URI without a password, for messages and reports."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def connect(uri: str, timeout: float = 5.0):
    """An MlflowClient for tracking and registry at `uri`.

    A server URI is probed first (GET /health): MLflow's own client retries a dead server for
    minutes before failing with a long traceback; this fails in `timeout` seconds with one line.
    """
    from mlflow.tracking import MlflowClient

    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
                pass
        except urllib.error.HTTPError:
            pass  # something answers (auth, proxy): let MLflow report the details
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RegistryError(
                f"cannot reach the MLflow tracking server at {redact(uri)} ({reason}); start it, "
                f"or unset MLFLOW_TRACKING_URI to use params.yaml's mlflow.tracking_uri"
            ) from None
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# --------------------------------------------------------------------------------------------
# Reading the registry
# --------------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _user() -> str:
    try:
        return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _is_missing(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def _registered_model(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if _is_missing(exc):
            raise RegistryError(f"no registered model {name!r}") from None
        raise


def _model_version(client, name: str, version: str | int):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if _is_missing(exc):
            raise RegistryError(f"model {name!r} has no version {version}") from None
        raise


def champion_version(client, name: str) -> str | None:
    """The version `champion` points at, or None."""
    version = _registered_model(client, name).aliases.get(CHAMPION)
    return None if version is None else str(version)  # the SQL store answers an int


def aliases_of(client, name: str, version: str) -> list[str]:
    aliases = _registered_model(client, name).aliases
    return sorted(alias for alias, v in aliases.items() if str(v) == str(version))


def champion_history(client, name: str) -> list[dict[str, Any]]:
    """Every recorded move of `champion`, oldest first (see the module docstring)."""
    tags = _registered_model(client, name).tags
    events = [json.loads(v) for k, v in tags.items() if k.startswith(HISTORY_PREFIX)]
    return sorted(events, key=lambda event: event["seq"])


def _append_history(
    client, name: str, version: str | None, previous: str | None, action: str, reason: str
) -> dict[str, Any]:
    history = champion_history(client, name)
    seq = history[-1]["seq"] + 1 if history else 1
    event = {
        "seq": seq,
        "version": version,
        "previous": previous,
        "action": action,
        "at": _now(),
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


def sync_history(client, name: str) -> dict[str, Any] | None:
    """Record a move of `champion` made outside this module (UI, API) as an `external` event."""
    history = champion_history(client, name)
    recorded = history[-1]["version"] if history else None
    current = champion_version(client, name)
    if current == recorded:
        return None
    return _append_history(
        client,
        name,
        current,
        recorded,
        "external",
        "champion moved outside stages.register (MLflow UI or API); noticed at this time",
    )


def test_metric(client, version, metric: str) -> float | None:
    """A version's test_<metric>: its tag, else its run's metric."""
    key = f"test_{metric}"
    if key in version.tags:
        try:
            return float(version.tags[key])
        except ValueError:
            return None
    if version.run_id:
        return client.get_run(version.run_id).data.metrics.get(key)
    return None


def _data_version_of(client, version) -> str | None:
    if "data_version" in version.tags:
        return version.tags["data_version"]
    if version.run_id:
        return client.get_run(version.run_id).data.tags.get("data_version")
    return None


def _candidate(client, version, metric: str) -> Candidate:
    return Candidate(
        str(version.version),
        test_metric(client, version, metric),
        _data_version_of(client, version),
    )


# --------------------------------------------------------------------------------------------
# Moving `champion`
# --------------------------------------------------------------------------------------------


def _move_champion(client, name: str, version: str, action: str, reason: str) -> dict[str, Any]:
    previous = champion_version(client, name)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    return _append_history(client, name, str(version), previous, action, reason)


def promote(client, name: str, version: str | int, reason: str = "") -> dict[str, Any]:
    """Point `champion` at `version` (a person's decision) and record it.

    Returns {"version", "previous", "event", "note"}; note warns when the two versions were
    tested on different data (the promotion still happens: a person decided).
    """
    sync_history(client, name)
    target = _model_version(client, name, version)
    current = champion_version(client, name)
    if current == str(target.version):
        return {"version": current, "previous": current, "event": None, "note": "already champion"}
    note = ""
    if current is not None:
        old = _model_version(client, name, current)
        mine, theirs = _data_version_of(client, target), _data_version_of(client, old)
        if mine != theirs:
            note = f"data_version differs from v{current}'s ({mine} vs {theirs})"
    event = _move_champion(client, name, str(target.version), "promote", reason or "manual")
    return {"version": str(target.version), "previous": current, "event": event, "note": note}


def rollback(client, name: str, reason: str = "") -> dict[str, Any]:
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
            f"(promote a version: python -m stages.register promote --version N)"
        )
    _model_version(client, name, target)  # still there?
    event = _move_champion(client, name, target, "rollback", reason or f"rollback from v{current}")
    return {"version": target, "previous": current, "event": event, "note": ""}


# --------------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------------


def split_metrics(run_metrics: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """{"test_accuracy": 0.9} -> {"test": {"accuracy": 0.9}} (train/val/test prefixes only).

    Prefer reports/metrics.json where it exists: Keras' MlflowCallback logs `val_accuracy`
    and `val_loss` per epoch into the same run, and the run keeps the highest step's value.
    """
    out: dict[str, dict[str, float]] = {split: {} for split in SPLITS}
    for key, value in run_metrics.items():
        split, _, name = key.partition("_")
        if split in out and name:
            out[split][name] = value
    return out


def _fmt(name: str, value: Any) -> str:
    if value is None:
        return "–"
    if name in COUNT_KEYS:
        return str(int(value))
    if isinstance(value, int | float):
        return f"{value:.4f}"
    return str(value)


def _cell(value: Any, width: int = 80) -> str:
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def model_card(
    name: str,
    version: str,
    run,
    metrics: Mapping[str, Mapping[str, Any]],
    split_counts: Mapping[str, Any] | None,
    params: RegisterParams,
    classes: Sequence[str] | None = None,
) -> str:
    """The version's model card (Markdown): identity, metrics, data, use, limits, params."""
    tags, run_params = run.data.tags, run.data.params
    test = metrics.get("test", {})
    classes = list(classes or [])
    lines = [
        f"# {name} v{version}",
        "",
        "| | |",
        "|---|---|",
        f"| Model URI | `models:/{name}/{version}` |",
        f"| Run | `{run.info.run_id}` ({run_params.get('train.arch', 'unknown arch')}) |",
        f"| Git commit | `{tags.get('git_commit', 'unknown')}` |",
        f"| Data version | `{tags.get('data_version', 'unknown')}` (hash of the split manifests) |",
        f"| Registered | {_now()} |",
        f"| Gate metric | test {params.metric} "
        f"({'higher' if higher_is_better(params.metric, params.direction) else 'lower'} "
        f"is better) |",
        "",
        "## Metrics",
        "",
        "| metric | train | val | test |",
        "|---|---|---|---|",
    ]
    names = [m for m in METRIC_ORDER if any(m in metrics.get(s, {}) for s in SPLITS)]
    names += sorted(
        {m for s in SPLITS for m in metrics.get(s, {})} - set(names) - {"threshold"},
        key=lambda m: (m in COUNT_KEYS, m),
    )
    for metric in names:
        cells = " | ".join(_fmt(metric, metrics.get(s, {}).get(metric)) for s in SPLITS)
        lines.append(f"| {metric} | {cells} |")
    if "threshold" in test:
        lines += [
            "",
            f"Decision threshold on P({classes[1] if classes else 'class 1'}): "
            f"{test['threshold']}.",
        ]
    lines += ["", "## Data", ""]
    if split_counts and split_counts.get("splits"):
        class_names = sorted(split_counts.get("classes", {}))
        lines += [
            "| split | images | groups | " + " | ".join(class_names) + " |",
            "|---|---|---|" + "---|" * len(class_names),
        ]
        for split, row in split_counts["splits"].items():
            counts = " | ".join(str(row.get("classes", {}).get(c, 0)) for c in class_names)
            lines.append(f"| {split} | {row.get('total')} | {row.get('groups')} | {counts} |")
        totals = " | ".join(str(split_counts["classes"][c]) for c in class_names)
        lines.append(f"| total | {split_counts.get('total')} | | {totals} |")
    else:
        lines.append("Split counts not available (reports/split.json missing).")
    label = " / ".join(classes) if classes else "the training classes"
    n, accuracy = test.get("n"), test.get("accuracy")
    interval = ""
    if n and accuracy is not None:
        half = 1.96 * math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / n)
        interval = (
            f" With {int(n)} test images, test accuracy {accuracy:.4f} is uncertain by about "
            f"±{half:.4f} (95% normal interval)."
        )
    ece = test.get("ece")
    lines += [
        "",
        "## Intended use",
        "",
        f"Binary classification of one photo as {label}, for photos like the training data "
        f"(consumer photos of one pet). Served by the BentoML service from "
        f"`models:/{name}@champion`. Not for decisions about people or safety.",
        "",
        "## Limitations",
        "",
        f"- It always answers one of {label}: there is no 'neither' class, so out-of-scope "
        f"images (other animals, drawings, several animals) get a confident wrong answer.",
        f"- Measured only on the data version above.{interval}",
        "- Scores of versions tested on a different data version are not comparable.",
    ]
    if ece is not None:
        lines.append(f"- Probabilities are calibrated to about ECE {ece:.4f} on the test split.")
    # Last: a description longer than the SQL column is cut here, keeping the sections above.
    lines += ["", "## Parameters", "", "| param | value |", "|---|---|"]
    for key in sorted(run_params):
        lines.append(f"| {key} | {_cell(run_params[key])} |")
    return "\n".join(lines) + "\n"


def _description(card: str) -> str:
    if len(card) <= MAX_DESCRIPTION:
        return card
    tail = "\n\n… (truncated: the full card is the run artifact model_card.md)\n"
    head = card[: MAX_DESCRIPTION - len(tail)]
    return head[: head.rfind("\n")] + tail  # whole lines only


# --------------------------------------------------------------------------------------------
# Registering a run
# --------------------------------------------------------------------------------------------


def _version_for_run(client, name: str, run_id: str):
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return min(found, key=lambda v: int(v.version)) if found else None


def _ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if not _is_missing(exc):
            raise
        client.create_registered_model(
            name,
            description=f"Image classifier; `{CHAMPION}` is served. See imgclf/registry/.",
        )


def _report(
    client,
    name: str,
    version,
    decision: Decision,
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
        "git_commit": version.tags.get("git_commit"),
        "previous_champion": asdict(champion) if champion else None,
    }


def register_run(
    client,
    run_id: str,
    params: RegisterParams,
    *,
    metrics: Mapping[str, Mapping[str, Any]] | None = None,
    split_counts: Mapping[str, Any] | None = None,
    classes: Sequence[str] | None = None,
    artifact_path: str = "model",
) -> dict[str, Any]:
    """Register `runs:/<run_id>/<artifact_path>` under params.model_name and run the gate.

    `metrics` ({"train": {...}, "val": {...}, "test": {...}}, reports/metrics.json) feeds the
    model card; without it the run's `<split>_<name>` metrics do. The gate always reads the
    run's `test_<metric>`. Returns the report written to reports/register.json.
    """
    from mlflow.exceptions import MlflowException

    name = params.model_name
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if _is_missing(exc):
            raise RegistryError(f"no MLflow run {run_id}: run train (and evaluate) first") from None
        raise
    if "MLmodel" not in {
        a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run_id, artifact_path)
    }:
        raise RegistryError(f"run {run_id} has no model at artifact path {artifact_path!r}")
    run_tags = run.data.tags
    test_metrics = {
        k: v for k, v in run.data.metrics.items() if k.startswith("test_") and math.isfinite(v)
    }
    if f"test_{params.metric}" not in test_metrics:  # no version without a score to gate on
        raise RegistryError(
            f"run {run_id} has no test_{params.metric} metric: run evaluate first "
            f"(or set register.metric to one of: "
            f"{', '.join(sorted(k.removeprefix('test_') for k in test_metrics)) or 'none'})"
        )

    _ensure_registered_model(client, name)
    sync_history(client, name)
    existing = _version_for_run(client, name, run_id)
    if existing is not None and "gate_decision" in existing.tags:
        candidate = _candidate(client, existing, params.metric)
        decision = Decision(
            False,
            "unchanged",
            "already_registered",
            f"run {run_id} is already version {existing.version} (its gate said "
            f"{existing.tags['gate_decision']}: {existing.tags.get('gate_reason', '')}); "
            f"nothing changed",
        )
        return _report(client, name, existing, decision, params, candidate, None)

    tags = {
        "data_version": run_tags.get("data_version", "unknown"),
        "git_commit": run_tags.get("git_commit", "unknown"),
        **{k: repr(float(v)) for k, v in test_metrics.items()},
    }
    if existing is None:
        version = client.create_model_version(
            name,
            source=f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}",
            run_id=run_id,
            tags=tags,
        )
    else:  # registered by an earlier attempt that stopped before the gate
        version = existing
        for key, value in tags.items():
            client.set_model_version_tag(name, version.version, key, value)
    number = str(version.version)
    card = model_card(
        name,
        number,
        run,
        metrics or split_metrics(run.data.metrics),
        split_counts,
        params,
        classes,
    )
    client.update_model_version(name, number, description=_description(card))
    client.log_text(run_id, card, "model_card.md")

    champion_number = champion_version(client, name)
    champion = (
        _candidate(client, _model_version(client, name, champion_number), params.metric)
        if champion_number
        else None
    )
    client.set_registered_model_alias(name, CHALLENGER, number)
    version = _model_version(client, name, number)
    candidate = _candidate(client, version, params.metric)
    decision = decide(candidate, champion, params)
    if decision.promote:
        _move_champion(client, name, number, "auto-promote", decision.reason)
    for key, value in (
        ("gate_decision", decision.decision),
        ("gate_rule", decision.rule),
        ("gate_reason", decision.reason),
    ):
        client.set_model_version_tag(name, number, key, value)
    return _report(client, name, version, decision, params, candidate, champion)
