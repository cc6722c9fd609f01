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

Before any of that, `engine_problem` keeps out a version whose exported engine would answer
differently: a float32 engine must agree with Keras (export.tolerance, no changed label); a
reduced-precision one (export.precision float16 or int8) must keep its test `register.metric`
within export.max_metric_drop of the float Keras model's, both measured by evaluate.
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


def metric_drop(engine_value: float, float_value: float, params: RegisterParams) -> float:
    """How far a reduced-precision engine's test metric falls short of the float model's, in the
    metric's units (negative: the engine scores better)."""
    higher = higher_is_better(params.metric, params.direction)
    return float_value - engine_value if higher else engine_value - float_value


def engine_problem(
    report: Mapping[str, Any], metrics: Mapping[str, Any] | None, params: RegisterParams
) -> str | None:
    """Why the export stage's report (reports/export.json) keeps its model out of the registry,
    or None. A float32 engine must say what Keras says. A reduced-precision one (float16, int8)
    changes the numbers by design, so its test `params.metric` (reports/metrics.json, `metrics`)
    must instead stay within export.max_metric_drop of the float Keras model's (no `metrics`:
    refused)."""
    precision = report.get("precision", "float32")  # reports from before precision: float32
    if precision == "float32":
        return _disagreement(report)
    return _precision_loss(report, precision, metrics or {}, params)


def _disagreement(report: Mapping[str, Any]) -> str | None:
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


def _precision_loss(
    report: Mapping[str, Any], precision: str, metrics: Mapping[str, Any], params: RegisterParams
) -> str | None:
    engine = f"the {precision} {report['engine']} engine"
    check = metrics.get("reduced_precision", {})
    engine_value = metrics.get("test", {}).get(params.metric)
    float_value = check.get("float32_test", {}).get(params.metric)
    if check.get("precision") != precision or not _finite(engine_value, float_value):
        return (
            f"{engine} has no test {params.metric} beside the float32 model's in "
            f"reports/metrics.json: run evaluate"
        )
    drop = metric_drop(engine_value, float_value, params)
    # Rounded: 0.972 - 0.971 is 0.0010000000000000009 in binary floating point.
    if round(drop, 12) > report["max_metric_drop"]:
        return (
            f"{engine}'s test {params.metric} {engine_value:.4f} is {drop:.4f} worse than the "
            f"float32 model's {float_value:.4f} (> export.max_metric_drop "
            f"{report['max_metric_drop']:g})"
        )
    return None


def _finite(*values: Any) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)
