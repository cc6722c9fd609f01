"""Pure metric functions of labels and P(class 1): binary metrics at the decision threshold,
calibration, curve points and the most confident mistakes. No files, no plotting."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from imgclf.model.decision import class_probabilities, confidences, predicted_indices

MAX_CURVE_POINTS = 200


def calibration_table(
    labels: np.ndarray, probabilities: np.ndarray, bins: int
) -> list[dict[str, float]]:
    """Equal-width bins of P(class 1) on [0, 1] ([a, b), the last one closed), non-empty only:
    bin edges, count, mean predicted probability, observed fraction of class 1."""
    labels = np.asarray(labels, dtype="float64")
    probabilities = np.asarray(probabilities, dtype="float64")
    index = np.minimum((probabilities * bins).astype(int), bins - 1)
    table = []
    for b in range(bins):
        mask = index == b
        if mask.any():
            table.append(
                {
                    "lower": b / bins,
                    "upper": (b + 1) / bins,
                    "count": int(mask.sum()),
                    "mean_probability": float(probabilities[mask].mean()),
                    "fraction_positive": float(labels[mask].mean()),
                }
            )
    return table


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> float:
    """Sum over bins of (bin share) × |fraction of class 1 − mean P(class 1)|."""
    total = len(labels)
    if total == 0:
        return float("nan")
    return float(
        sum(
            row["count"] / total * abs(row["fraction_positive"] - row["mean_probability"])
            for row in calibration_table(labels, probabilities, bins)
        )
    )


def compute_metrics(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float, calibration_bins: int
) -> dict[str, Any]:
    """Binary metrics at `threshold`, labels predicted by THE decision rule.

    roc_auc is None when the split holds one class only (undefined).
    """
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        log_loss,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    labels = np.asarray(labels, dtype=int)
    probabilities = np.asarray(probabilities, dtype="float64")
    predicted = predicted_indices(class_probabilities(probabilities), threshold)
    n = len(labels)
    if n == 0:
        return {"n": 0}
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(labels, predicted, labels=[0, 1]).ravel())
    both = len(np.unique(labels)) == 2
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "precision": float(precision_score(labels, predicted, zero_division=0)),
        "recall": float(recall_score(labels, predicted, zero_division=0)),
        "f1": float(f1_score(labels, predicted, zero_division=0)),
        "roc_auc": float(roc_auc_score(labels, probabilities)) if both else None,
        "log_loss": float(log_loss(labels, np.clip(probabilities, 1e-7, 1 - 1e-7), labels=[0, 1])),
        "ece": expected_calibration_error(labels, probabilities, calibration_bins),
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "tp": tp,
        "n": n,
        "threshold": float(threshold),
    }


def flat_metrics(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """{"test": {"accuracy": 0.9}} -> {"test_accuracy": 0.9}; None values (undefined) dropped."""
    return {
        f"{split}_{name}": float(value)
        for split, values in metrics.items()
        for name, value in values.items()
        if value is not None and name != "threshold" and math.isfinite(float(value))
    }


def _downsample(rows: list[dict[str, Any]], max_points: int) -> list[dict[str, Any]]:
    """At most `max_points` rows, evenly spread, first and last kept."""
    if len(rows) <= max_points:
        return rows
    keep = np.unique(np.linspace(0, len(rows) - 1, max_points).round().astype(int))
    return [rows[i] for i in keep]


def roc_points(
    labels: np.ndarray, probabilities: np.ndarray, max_points: int = MAX_CURVE_POINTS
) -> list[dict[str, float]]:
    """ROC curve rows (fpr, tpr, threshold); empty when only one class is present. The first
    threshold is `inf` (nothing predicted class 1), as scikit-learn returns it."""
    from sklearn.metrics import roc_curve

    if len(np.unique(labels)) < 2:
        return []
    fpr, tpr, thresholds = roc_curve(labels, probabilities, drop_intermediate=True)
    rows = [
        {"fpr": float(f), "tpr": float(t), "threshold": float(h)}
        for f, t, h in zip(fpr, tpr, thresholds, strict=True)
    ]
    return _downsample(rows, max_points)


def precision_recall_points(
    labels: np.ndarray, probabilities: np.ndarray, max_points: int = MAX_CURVE_POINTS
) -> list[dict[str, float]]:
    """Precision-recall rows (recall, precision, threshold), recall decreasing; scikit-learn's
    final (recall 0, precision 1) point has no threshold and is left out."""
    from sklearn.metrics import precision_recall_curve

    if len(np.unique(labels)) < 2:
        return []
    precision, recall, thresholds = precision_recall_curve(labels, probabilities)
    rows = [
        {"recall": float(r), "precision": float(p), "threshold": float(h)}
        for r, p, h in zip(recall[:-1], precision[:-1], thresholds, strict=True)
    ]
    return _downsample(rows, max_points)


def worst_mistakes(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float, k: int
) -> list[int]:
    """Indices of at most `k` misclassified items, most confident mistake first (confidence of
    the wrongly predicted class, which is |label − P(class 1)|; ties by index)."""
    labels = np.asarray(labels, dtype=int)
    probabilities = np.asarray(probabilities, dtype="float64")
    matrix = class_probabilities(probabilities)
    wrong = np.flatnonzero(predicted_indices(matrix, threshold) != labels)
    confidence = confidences(matrix[wrong], threshold)
    order = np.lexsort((wrong, -confidence))  # primary key last: confidence descending, then index
    return [int(i) for i in wrong[order][: max(k, 0)]]
