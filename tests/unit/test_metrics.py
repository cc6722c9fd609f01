"""Evaluation metrics for any number of classes (imgclf/evaluation/metrics.py), checked by hand
and against scikit-learn's own functions on hand-made three- and five-class cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from imgclf.evaluation.metrics import (
    calibration_inputs,
    compute_metrics,
    confused_pairs,
    confusion_counts,
    curve_auc,
    curve_inputs,
    flat_metrics,
    per_class_table,
    precision_recall_points,
    roc_points,
    row_normalised,
    worst_mistakes,
)
from imgclf.model.decision import class_probabilities, predicted_indices

THREE = ["cat", "dog", "fox"]
# Rows sum to one; predicted (argmax): 0 0 1 | 1 1 2 | 2 0 2, so three mistakes: one per class.
LABELS_3 = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
PROBS_3 = np.array(
    [
        [0.70, 0.20, 0.10],
        [0.50, 0.40, 0.10],
        [0.20, 0.50, 0.30],  # cat taken for a dog
        [0.10, 0.80, 0.10],
        [0.30, 0.60, 0.10],
        [0.20, 0.30, 0.50],  # dog taken for a fox
        [0.10, 0.10, 0.80],
        [0.45, 0.15, 0.40],  # fox taken for a cat; fox is its second guess
        [0.05, 0.15, 0.80],
    ]
)

FIVE = ["ant", "bee", "cat", "dog", "eel"]
LABELS_5 = np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 2, 3])
PROBS_5 = np.array(
    [
        [0.60, 0.10, 0.10, 0.10, 0.10],
        [0.10, 0.30, 0.40, 0.10, 0.10],  # bee -> cat
        [0.05, 0.05, 0.70, 0.15, 0.05],
        [0.10, 0.10, 0.10, 0.20, 0.50],  # dog -> eel, dog ranked second
        [0.02, 0.03, 0.05, 0.10, 0.80],
        [0.25, 0.35, 0.20, 0.10, 0.10],  # ant -> bee
        [0.05, 0.85, 0.04, 0.03, 0.03],
        [0.10, 0.10, 0.25, 0.45, 0.10],  # cat -> dog
        [0.02, 0.08, 0.10, 0.70, 0.10],
        [0.30, 0.20, 0.15, 0.05, 0.30],  # eel ties ant at the top: the lower index, ant, wins
        [0.10, 0.10, 0.60, 0.10, 0.10],
        [0.10, 0.15, 0.05, 0.30, 0.40],  # dog -> eel again
    ]
)
CASES = {"three": (LABELS_3, PROBS_3, THREE), "five": (LABELS_5, PROBS_5, FIVE)}
BINARY_KEYS = {"precision", "recall", "f1", "tn", "fp", "fn", "tp", "threshold"}


def metrics_of(labels: np.ndarray, probs: np.ndarray, top_k: int = 3, bins: int = 10) -> dict:
    return compute_metrics(labels, probs, threshold=0.5, calibration_bins=bins, top_k=top_k)


def test_three_classes_by_hand() -> None:
    m = metrics_of(LABELS_3, PROBS_3, top_k=2, bins=2)
    assert m["n"] == 9
    assert m["accuracy"] == pytest.approx(6 / 9)
    # the true class is among the two most probable everywhere except the first mistake's
    assert m["top_2_accuracy"] == pytest.approx(8 / 9)
    # each class: 2 of its 3 images found, 2 of the 3 images predicted as it right
    for average in ("macro", "weighted"):
        for name in ("precision", "recall", "f1"):
            assert m[f"{average}_{name}"] == pytest.approx(2 / 3)
    truth = PROBS_3[np.arange(9), LABELS_3]
    assert m["log_loss"] == pytest.approx(-np.mean(np.log(truth)))
    # top-class confidences: the 0.45 mistake alone in [0, .5) (gap .45); the other 8 in
    # [.5, 1]: mean confidence 5.2 / 8 = .65, 6 of 8 right = .75 (gap .1)
    assert m["ece"] == pytest.approx((0.45 + 8 * 0.1) / 9)
    assert not BINARY_KEYS & set(m)


@pytest.mark.parametrize("case", CASES)
def test_every_scalar_matches_scikit_learn(case: str) -> None:
    labels, probs, classes = CASES[case]
    k = len(classes)
    predicted = np.argmax(probs, axis=1)
    m = metrics_of(labels, probs, top_k=2)
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted))
    assert m["top_2_accuracy"] == pytest.approx(
        sk.top_k_accuracy_score(labels, probs, k=2, labels=range(k))
    )
    for average in ("macro", "weighted"):
        for name, score in (
            ("precision", sk.precision_score),
            ("recall", sk.recall_score),
            ("f1", sk.f1_score),
        ):
            expected = score(labels, predicted, average=average, zero_division=0)
            assert m[f"{average}_{name}"] == pytest.approx(expected), (average, name)
    assert m["log_loss"] == pytest.approx(sk.log_loss(labels, probs, labels=range(k)))
    assert m["roc_auc"] == pytest.approx(
        sk.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    )
    assert set(flat_metrics({"test": m})) == {f"test_{key}" for key in m}  # all flat numbers


def test_nested_tables_stay_out_of_the_flat_metrics() -> None:
    predicted = predicted_indices(PROBS_3, 0.5)
    section = metrics_of(LABELS_3, PROBS_3) | {
        "per_class": per_class_table(LABELS_3, predicted, THREE)
    }
    flat = flat_metrics({"val": section})
    assert "val_per_class" not in flat and flat["val_accuracy"] == pytest.approx(6 / 9)
    assert len(flat) == len(section) - 1


def test_top_k_accuracy_only_when_there_are_more_classes_than_k() -> None:
    assert "top_3_accuracy" in metrics_of(LABELS_5, PROBS_5, top_k=3)
    assert metrics_of(LABELS_5, PROBS_5, top_k=3)["top_3_accuracy"] == pytest.approx(
        sk.top_k_accuracy_score(LABELS_5, PROBS_5, k=3)
    )
    assert not any(key.startswith("top_") for key in metrics_of(LABELS_3, PROBS_3, top_k=3))
    two = class_probabilities(np.array([0.2, 0.9, 0.7]))
    labels = np.array([0, 1, 0])
    assert not any(key.startswith("top_") for key in metrics_of(labels, two, top_k=2))
    assert metrics_of(labels, two, top_k=1)["top_1_accuracy"] == pytest.approx(2 / 3)


def test_more_than_two_classes_ignore_the_threshold() -> None:
    low = compute_metrics(LABELS_5, PROBS_5, threshold=0.05, calibration_bins=5, top_k=3)
    high = compute_metrics(LABELS_5, PROBS_5, threshold=0.95, calibration_bins=5, top_k=3)
    assert low == high


def test_two_classes_keep_the_binary_keys_beside_the_common_ones() -> None:
    labels = np.array([0, 0, 1, 1, 1, 0])
    probs = class_probabilities(np.array([0.1, 0.6, 0.8, 0.4, 0.9, 0.2]))
    m = metrics_of(labels, probs)
    common = {"n", "accuracy", "log_loss", "roc_auc", "ece"}
    common |= {f"{a}_{n}" for a in ("macro", "weighted") for n in ("precision", "recall", "f1")}
    assert set(m) == common | BINARY_KEYS
    predicted = predicted_indices(probs, 0.5)
    assert m["f1"] == pytest.approx(sk.f1_score(labels, predicted))
    assert m["macro_f1"] == pytest.approx(sk.f1_score(labels, predicted, average="macro"))
    assert m["roc_auc"] == pytest.approx(sk.roc_auc_score(labels, probs[:, 1]))


def test_roc_auc_is_undefined_when_a_class_is_missing() -> None:
    present = LABELS_3 != 2
    m = metrics_of(LABELS_3[present], PROBS_3[present])
    assert m["roc_auc"] is None
    assert "test_roc_auc" not in flat_metrics({"test": m})
    assert m["accuracy"] == pytest.approx(4 / 6)


@pytest.mark.parametrize("case", CASES)
def test_per_class_table_matches_the_classification_report(case: str) -> None:
    labels, probs, classes = CASES[case]
    predicted = predicted_indices(probs, 0.5)
    table = per_class_table(labels, predicted, classes)
    report = sk.classification_report(
        labels, predicted, target_names=classes, output_dict=True, zero_division=0
    )
    assert list(table) == classes
    for name, row in table.items():
        expected = report[name]
        assert row["support"] == expected["support"]
        for metric in ("precision", "recall", "f1"):
            key = "f1-score" if metric == "f1" else metric
            assert row[metric] == pytest.approx(expected[key]), (name, metric)


@pytest.mark.parametrize("case", CASES)
def test_confusion_matrix_matches_scikit_learn(case: str) -> None:
    labels, probs, classes = CASES[case]
    predicted = predicted_indices(probs, 0.5)
    counts = confusion_counts(labels, predicted, len(classes))
    np.testing.assert_array_equal(counts, sk.confusion_matrix(labels, predicted))
    np.testing.assert_allclose(
        row_normalised(counts), sk.confusion_matrix(labels, predicted, normalize="true")
    )


def test_confusion_matrix_by_hand_and_a_class_absent_from_the_split() -> None:
    counts = confusion_counts(LABELS_3, predicted_indices(PROBS_3, 0.5), 3)
    np.testing.assert_array_equal(counts, [[2, 1, 0], [0, 2, 1], [1, 0, 2]])
    # a fourth class nobody holds or is predicted as: a row of zeros, no division by zero
    absent = row_normalised(confusion_counts(LABELS_3, predicted_indices(PROBS_3, 0.5), 4))
    np.testing.assert_array_equal(absent[3], [0, 0, 0, 0])
    np.testing.assert_allclose(absent[0], [2 / 3, 1 / 3, 0, 0])


def test_confused_pairs_are_the_largest_off_diagonal_cells() -> None:
    counts = np.array([[5, 3, 0], [1, 4, 3], [0, 2, 6]])
    pairs = confused_pairs(counts, THREE, limit=3)
    assert [(p["actual"], p["predicted"], p["count"]) for p in pairs] == [
        ("cat", "dog", 3),  # ties in class order
        ("dog", "fox", 3),
        ("fox", "dog", 2),
    ]
    assert [p["share"] for p in pairs] == pytest.approx([3 / 8, 3 / 8, 2 / 8])
    assert len(confused_pairs(counts, THREE)) == 4  # every non-zero off-diagonal cell
    assert confused_pairs(np.diag([3, 4, 5]), THREE) == []


def test_calibration_is_of_the_second_class_for_two_and_of_the_top_class_for_more() -> None:
    labels = np.array([0, 1, 1])
    two = class_probabilities(np.array([0.3, 0.2, 0.9]))
    outcomes, scores = calibration_inputs(labels, two, 0.5)
    np.testing.assert_array_equal(outcomes, [0, 1, 1])
    np.testing.assert_allclose(scores, [0.3, 0.2, 0.9])
    outcomes, scores = calibration_inputs(LABELS_3, PROBS_3, 0.5)
    np.testing.assert_array_equal(outcomes, [1, 1, 0, 1, 1, 0, 1, 0, 1])
    np.testing.assert_allclose(scores, PROBS_3.max(axis=1))


def test_curves_for_more_classes_are_the_micro_average() -> None:
    outcomes, scores = curve_inputs(LABELS_5, PROBS_5)
    assert len(outcomes) == len(scores) == PROBS_5.size and outcomes.sum() == len(LABELS_5)
    assert curve_auc(outcomes, scores) == pytest.approx(
        sk.roc_auc_score(LABELS_5, PROBS_5, multi_class="ovr", average="micro")
    )
    roc = roc_points(outcomes, scores)
    assert (roc[0]["fpr"], roc[-1]["fpr"], roc[-1]["tpr"]) == (0.0, 1.0, 1.0)
    assert precision_recall_points(outcomes, scores)[0]["recall"] == 1.0
    labels = np.array([0, 1, 1, 0])
    two = class_probabilities(np.array([0.2, 0.7, 0.4, 0.5]))
    outcomes, scores = curve_inputs(labels, two)
    np.testing.assert_array_equal(outcomes, labels)
    assert curve_auc(outcomes, scores) == pytest.approx(sk.roc_auc_score(labels, two[:, 1]))
    assert curve_auc(np.ones(3), np.array([0.1, 0.5, 0.9])) is None


def test_worst_mistakes_of_more_classes() -> None:
    # wrong: 2 (dog at .5), 5 (fox at .5), 7 (cat at .45); ties by index
    assert worst_mistakes(LABELS_3, PROBS_3, 0.5, 5) == [2, 5, 7]
    assert worst_mistakes(LABELS_3, PROBS_3, 0.5, 1) == [2]
