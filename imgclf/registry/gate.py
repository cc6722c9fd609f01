"""The promotion gate: does a new version replace the champion? Pure: no MLflow.

The gate (`register:` in params.yaml) decides whether a new version becomes champion:
  * its `test_<metric>` must reach `min_value` (a ceiling when lower is better), if set;
  * with no champion yet it is promoted;
  * otherwise it must beat the champion's `test_<metric>` by more than `min_delta`, where
    "beat" follows `direction` (auto: lower is better for log_loss, ece, fp, fn, ...);
  * only for the SAME classes: both versions carry the `classes` tag (the class list, in label
    order). A version with another list (or order) answers another question, so it stays
    challenger and a person decides; a version registered before the tag existed has no list
    and is compared on its metric as before.
  * only on the SAME data: both versions carry the train run's `data_version` tag (a content hash
    of the train/val/test manifests). When they differ, the two test scores come from different
    test sets and are not comparable, so the version stays challenger and the reason says so;
    a person compares them on one split and promotes by hand. (The hash covers all three
    manifests, so a change to the training data alone also blocks automatic promotion: the
    conservative side.)
  * `auto_promote: false` never moves `champion`; the report says what the gate would have done.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imgclf.config import RegisterParams

# Metrics where a smaller value is better (direction: auto).
LOWER_IS_BETTER = frozenset({"log_loss", "ece", "fp", "fn", "loss", "brier", "error_rate"})


@dataclass(frozen=True)
class Candidate:
    """What the gate compares for one version."""

    version: str | None
    value: float | None  # its test_<metric>; None when not logged
    data_version: str | None
    classes: tuple[str, ...] | None = None  # its class list; None: unknown (registered before)


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    decision: str  # promoted | challenger | unchanged
    rule: str  # no_champion | better | not_better | below_min_value | classes_differ |
    # data_version_differs | metric_missing | champion_metric_missing | auto_promote_off |
    # already_registered
    reason: str


def higher_is_better(metric: str, direction: str = "auto") -> bool:
    if direction != "auto":
        return direction == "higher"
    return metric not in LOWER_IS_BETTER


def decide(
    candidate: Candidate, champion: Candidate | None, params: RegisterParams
) -> GateDecision:
    """The promotion gate for `candidate` against the current `champion` (None: there is none)."""
    verdict = _verdict(candidate, champion, params)
    if verdict.promote and not params.auto_promote:
        return GateDecision(
            False,
            "challenger",
            "auto_promote_off",
            f"register.auto_promote is false; the gate would promote it ({verdict.reason}). "
            f"A person promotes it: imgclf promote --version "
            f"{candidate.version}",
        )
    return verdict


def _verdict(
    candidate: Candidate, champion: Candidate | None, params: RegisterParams
) -> GateDecision:
    key = f"test_{params.metric}"
    higher = higher_is_better(params.metric, params.direction)
    better = "higher" if higher else "lower"
    value = candidate.value
    if value is None or not math.isfinite(value):
        return GateDecision(
            False, "challenger", "metric_missing", f"the run has no {key}: run evaluate first"
        )
    if params.min_value is not None and (
        value < params.min_value if higher else value > params.min_value
    ):
        bar = "below" if higher else "above"
        return GateDecision(
            False,
            "challenger",
            "below_min_value",
            f"{key} {value:.4g} is {bar} register.min_value {params.min_value:.4g}",
        )
    if champion is None:
        return GateDecision(
            True,
            "promoted",
            "no_champion",
            f"no champion yet and {key} {value:.4g} passes the gate",
        )
    if champion.version == candidate.version:
        return GateDecision(False, "unchanged", "already_champion", "it is the champion already")
    if candidate.classes and champion.classes and candidate.classes != champion.classes:
        return GateDecision(
            False,
            "challenger",
            "classes_differ",
            f"champion v{champion.version} classifies into {list(champion.classes)} and this "
            f"version into {list(candidate.classes)}: another class list answers "
            f"another question, so it is not promoted automatically; a person decides "
            f"(imgclf promote --version {candidate.version})",
        )
    if not candidate.data_version or candidate.data_version != champion.data_version:
        return GateDecision(
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
        return GateDecision(
            False,
            "challenger",
            "champion_metric_missing",
            f"champion v{champion.version} has no {key} to compare with; promote by hand",
        )
    gain = value - champion.value if higher else champion.value - value
    if gain > params.min_delta:
        return GateDecision(
            True,
            "promoted",
            "better",
            f"{key} {value:.4g} beats champion v{champion.version}'s {champion.value:.4g} "
            f"by {gain:.4g} > min_delta {params.min_delta:g} ({better} is better)",
        )
    return GateDecision(
        False,
        "challenger",
        "not_better",
        f"{key} {value:.4g} does not beat champion v{champion.version}'s "
        f"{champion.value:.4g} by more than min_delta {params.min_delta:g} ({better} is better)",
    )


def engine_problem(report: Mapping[str, Any]) -> str | None:
    """Why the export stage's report (reports/export.json) keeps its model out of the registry,
    or None: the engine that would answer must say what Keras says."""
    if report["flipped"]:
        return (
            f"the {report['engine']} engine changes {report['flipped']} of {report['images']} "
            f"labels against Keras"
        )
    if report["max_abs_diff"] > report["tolerance"]:
        return (
            f"the {report['engine']} engine differs from Keras by {report['max_abs_diff']:.2e} "
            f"(> export.tolerance {report['tolerance']:.0e}) on {report['images']} photos"
        )
    return None
