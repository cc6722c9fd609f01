"""Pure metric functions of labels and an (n, K) matrix of class probabilities (columns in the
model's class order, `imgclf.model.decision`): the scalar metrics the gate compares, per-class
and confusion tables, calibration, curve points and the most confident mistakes. No files, no
plotting.

Two classes are the binary case: the second class is the positive one, predicted when its
probability reaches the threshold, and the binary keys (precision, recall and F1 of the second
class, tn/fp/fn/tp, threshold) are reported beside the keys every K gets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from imgclf.model.decision import confidences, predicted_indices

MAX_CURVE_POINTS = 200
MAX_CONFUSED_PAIRS = 20  # rows of the confused-pairs table per split
LOG_LOSS_EPSILON = 1e-7  # log loss clips probabilities to [eps, 1 - eps]: a sure mistake is finite


def calibration_table(
    outcomes: np.ndarray, scores: np.ndarray, bins: int
) -> list[dict[str, float]]:
    """Equal-width bins of `scores` on [0, 1] ([a, b), the last one closed), non-empty only: bin
    edges, count, mean score, observed fraction of outcome 1 (`calibration_inputs` says what
    the outcome and the score are)."""
    outcomes = np.asarray(outcomes, dtype="float64")
    scores = np.asarray(scores, dtype="float64")
    index = np.minimum((scores * bins).astype(int), bins - 1)
    table = []
    for b in range(bins):
        mask = index == b
        if mask.any():
            table.append(
                {
                    "lower": b / bins,
                    "upper": (b + 1) / bins,
                    "count": int(mask.sum()),
                    "mean_probability": float(scores[mask].mean()),
                    "fraction_positive": float(outcomes[mask].mean()),
                }
            )
    return table


def expected_calibration_error(outcomes: np.ndarray, scores: np.ndarray, bins: int) -> float:
    """Sum over bins of (bin share) × |fraction of outcome 1 − mean score|."""
    total = len(outcomes)
    if total == 0:
        return float("nan")
    return float(
        sum(
            row["count"] / total * abs(row["fraction_positive"] - row["mean_probability"])
            for row in calibration_table(outcomes, scores, bins)
        )
    )


def calibration_inputs(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """(outcome, score) per image that calibration is measured on. Two classes: is it the second
    class, and its probability (the binary reliability curve). More: is the predicted class
    right, and its probability (top-class calibration)."""
    labels = np.asarray(labels, dtype=int)
    probabilities = np.asarray(probabilities, dtype="float64")
    if probabilities.shape[1] == 2:
        return labels, probabilities[:, 1]
    correct = predicted_indices(probabilities, threshold) == labels
    return correct.astype(int), confidences(probabilities, threshold)


def curve_inputs(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(outcome, score) pairs the ROC and precision-recall curves are drawn from. Two classes:
    is it the second class, and its probability. More: every (image, class) pair one-vs-rest,
    so the curves are the micro average over classes."""
    labels = np.asarray(labels, dtype=int)
    probabilities = np.asarray(probabilities, dtype="float64")
    if probabilities.shape[1] == 2:
        return labels, probabilities[:, 1]
    one_hot = labels[:, None] == np.arange(probabilities.shape[1])
    return one_hot.ravel().astype(int), probabilities.ravel()


def compute_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    threshold: float,
    calibration_bins: int,
    top_k: int,
) -> dict[str, Any]:
    """Scalar metrics of one split, labels predicted by THE decision rule. `top_{top_k}_accuracy`
    only when there are more than `top_k` classes (else it is 1 by definition); roc_auc is None
    when a class is missing from the split (undefined)."""
    from sklearn.metrics import accuracy_score, log_loss, top_k_accuracy_score

    labels = np.asarray(labels, dtype=int)
    probabilities = np.asarray(probabilities, dtype="float64")
    n, n_classes = probabilities.shape
    if n == 0:
        return {"n": 0}
    classes = np.arange(n_classes)
    predicted = predicted_indices(probabilities, threshold)
    metrics: dict[str, Any] = {"n": n, "accuracy": float(accuracy_score(labels, predicted))}
    if n_classes > top_k:
        # scikit-learn takes two classes' scores as the second class's column
        scores = probabilities[:, 1] if n_classes == 2 else probabilities
        top = top_k_accuracy_score(labels, scores, k=top_k, labels=classes)
        metrics[f"top_{top_k}_accuracy"] = float(top)
    metrics |= averaged_scores(labels, predicted, n_classes)
    clipped = _rows_summing_to_one(np.clip(probabilities, LOG_LOSS_EPSILON, 1 - LOG_LOSS_EPSILON))
    metrics["log_loss"] = float(log_loss(labels, clipped, labels=classes))
    metrics["roc_auc"] = roc_auc(labels, probabilities)
    outcomes, scores = calibration_inputs(labels, probabilities, threshold)
    metrics["ece"] = expected_calibration_error(outcomes, scores, calibration_bins)
    if n_classes == 2:
        metrics |= binary_metrics(labels, predicted, threshold)
    return metrics


def averaged_scores(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> dict[str, float]:
    """Macro (every class counts the same) and support-weighted precision, recall and F1."""
    from sklearn.metrics import precision_recall_fscore_support

    scores = {}
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            labels, predicted, labels=np.arange(n_classes), average=average, zero_division=0
        )
        scores |= {
            f"{average}_precision": float(precision),
            f"{average}_recall": float(recall),
            f"{average}_f1": float(f1),
        }
    return scores


def binary_metrics(labels: np.ndarray, predicted: np.ndarray, threshold: float) -> dict[str, Any]:
    """The two-class keys: precision, recall and F1 of the second class, the confusion cells."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    tn, fp, fn, tp = (int(v) for v in confusion_matrix(labels, predicted, labels=[0, 1]).ravel())
    (precision,), (recall,), (f1,), _ = precision_recall_fscore_support(
        labels, predicted, labels=[1], zero_division=0
    )
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "tp": tp,
        "threshold": float(threshold),
    }


def roc_auc(labels: np.ndarray, probabilities: np.ndarray) -> float | None:
    """ROC AUC of the second class's probability for two classes; for more, one-vs-rest, the
    macro average over classes. None unless every class occurs in `labels`."""
    from sklearn.metrics import roc_auc_score

    n_classes = probabilities.shape[1]
    if len(np.unique(labels)) < n_classes:
        return None
    if n_classes == 2:
        return float(roc_auc_score(labels, probabilities[:, 1]))
    return float(
        roc_auc_score(
            labels,
            _rows_summing_to_one(probabilities),  # scikit-learn refuses float32 rounding
            multi_class="ovr",
            average="macro",
            labels=np.arange(n_classes),
        )
    )


def _rows_summing_to_one(probabilities: np.ndarray) -> np.ndarray:
    return probabilities / probabilities.sum(axis=1, keepdims=True)


def confusion_counts(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """K×K counts: row = actual class, column = predicted class, in class order."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(labels, predicted, labels=np.arange(n_classes))


def row_normalised(counts: np.ndarray) -> np.ndarray:
    """Each row over its total: the share of an actual class predicted as each class (a class
    absent from the split keeps a row of zeros)."""
    counts = np.asarray(counts, dtype="float64")
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)


def per_class_table(
    labels: np.ndarray, predicted: np.ndarray, classes: Sequence[str]
) -> dict[str, dict[str, float | int]]:
    """{class: {precision, recall, f1, support (true images)}}, in class order."""
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=np.arange(len(classes)), zero_division=0
    )
    return {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }


def confused_pairs(
    counts: np.ndarray, classes: Sequence[str], limit: int = MAX_CONFUSED_PAIRS
) -> list[dict[str, Any]]:
    """The most frequent mistakes: off-diagonal (actual, predicted) cells with a count, largest
    first (ties in class order), with the share of the actual class's images they hold."""
    counts = np.asarray(counts)
    shares = row_normalised(counts)
    cells = [(i, j) for i, j in zip(*np.nonzero(counts), strict=True) if i != j]
    cells.sort(key=lambda cell: (-counts[cell], cell))
    return [
        {
            "actual": classes[i],
            "predicted": classes[j],
            "count": int(counts[i, j]),
            "share": float(shares[i, j]),
        }
        for i, j in cells[: max(limit, 0)]
    ]


def flat_metrics(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """{"test": {"accuracy": 0.9}} -> {"test_accuracy": 0.9}; None values (undefined) and nested
    tables (a split's `per_class`) dropped."""
    return {
        f"{split}_{name}": float(value)
        for split, values in metrics.items()
        for name, value in values.items()
        if isinstance(value, int | float) and name != "threshold" and math.isfinite(value)
    }


def _downsample(rows: list[dict[str, Any]], max_points: int) -> list[dict[str, Any]]:
    """At most `max_points` rows, evenly spread, first and last kept."""
    if len(rows) <= max_points:
        return rows
    keep = np.unique(np.linspace(0, len(rows) - 1, max_points).round().astype(int))
    return [rows[i] for i in keep]


def roc_points(
    outcomes: np.ndarray, scores: np.ndarray, max_points: int = MAX_CURVE_POINTS
) -> list[dict[str, float]]:
    """ROC curve rows (fpr, tpr, threshold) of binary outcomes (`curve_inputs`); empty when
    only one outcome is present. The first threshold is `inf` (nothing predicted positive), as
    scikit-learn returns it."""
    from sklearn.metrics import roc_curve

    if len(np.unique(outcomes)) < 2:
        return []
    fpr, tpr, thresholds = roc_curve(outcomes, scores, drop_intermediate=True)
    rows = [
        {"fpr": float(f), "tpr": float(t), "threshold": float(h)}
        for f, t, h in zip(fpr, tpr, thresholds, strict=True)
    ]
    return _downsample(rows, max_points)


def curve_auc(outcomes: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve `roc_points` draws; None when it is undefined."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(outcomes, scores)) if len(np.unique(outcomes)) == 2 else None


def precision_recall_points(
    outcomes: np.ndarray, scores: np.ndarray, max_points: int = MAX_CURVE_POINTS
) -> list[dict[str, float]]:
    """Precision-recall rows (recall, precision, threshold), recall decreasing; scikit-learn's
    final (recall 0, precision 1) point has no threshold and is left out."""
    from sklearn.metrics import precision_recall_curve

    if len(np.unique(outcomes)) < 2:
        return []
    precision, recall, thresholds = precision_recall_curve(outcomes, scores)
    rows = [
        {"recall": float(r), "precision": float(p), "threshold": float(h)}
        for r, p, h in zip(recall[:-1], precision[:-1], thresholds, strict=True)
    ]
    return _downsample(rows, max_points)


def worst_mistakes(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float, k: int
) -> list[int]:
    """Indices of at most `k` misclassified items, most confident mistake first (probability of
    the wrongly predicted class; ties by index)."""
    labels = np.asarray(labels, dtype=int)
    probabilities = np.asarray(probabilities, dtype="float64")
    wrong = np.flatnonzero(predicted_indices(probabilities, threshold) != labels)
    confidence = confidences(probabilities[wrong], threshold)
    order = np.lexsort((wrong, -confidence))  # primary key last: confidence descending, then index
    return [int(i) for i in wrong[order][: max(k, 0)]]
