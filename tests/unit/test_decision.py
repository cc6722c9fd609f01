"""THE decision rule: class probabilities -> predicted class and its confidence, for two classes
(threshold on the second) and for K (the most probable)."""

from __future__ import annotations

import numpy as np
import pytest

from imgclf.model.decision import class_probabilities, confidences, decide, predicted_indices

CLASSES = ["cat", "dog"]
THREE = ["cat", "dog", "fox"]


def binary(*positive: float) -> np.ndarray:
    return class_probabilities(np.array(positive))


def test_a_sigmoid_column_becomes_two_class_columns_and_softmax_is_kept() -> None:
    np.testing.assert_allclose(class_probabilities([[0.25], [1.0]]), [[0.75, 0.25], [0, 1]])
    softmax = np.array([[0.2, 0.5, 0.3]])
    np.testing.assert_array_equal(class_probabilities(softmax), softmax)


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.85])
def test_probability_at_the_threshold_is_the_second_class(threshold: float) -> None:
    below = np.nextafter(threshold, 0.0)
    assert predicted_indices(binary(below, threshold), threshold).tolist() == [0, 1]
    assert decide(binary(threshold)[0], CLASSES, threshold).label == "dog"
    assert decide(binary(below)[0], CLASSES, threshold).label == "cat"


def test_confidence_is_the_probability_of_the_predicted_class() -> None:
    np.testing.assert_allclose(confidences(binary(0.1, 0.45, 0.5, 0.9), 0.5), [0.9, 0.55, 0.5, 0.9])
    # a low threshold predicts dog at 0.3, so the confidence is P(dog) itself, under a half
    assert decide(binary(0.3)[0], CLASSES, 0.25).confidence == pytest.approx(0.3)
    assert decide(binary(0.2)[0], CLASSES, 0.25).confidence == pytest.approx(0.8)


def test_more_classes_take_the_most_probable_whatever_the_threshold() -> None:
    probabilities = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1], [0.4, 0.4, 0.2]])
    assert predicted_indices(probabilities, 0.9).tolist() == [2, 0, 0]  # a tie: the lowest index
    np.testing.assert_allclose(confidences(probabilities, 0.9), [0.5, 0.6, 0.4])
    assert decide(probabilities[0], THREE, 0.5).label == "fox"


def test_a_row_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="3 probabilities for 2 classes"):
        decide([0.2, 0.3, 0.5], CLASSES, 0.5)


@pytest.mark.parametrize(("classes", "threshold"), [(2, 0.5), (2, 0.2), (2, 0.7), (5, 0.5)])
def test_one_image_decision_agrees_with_the_matrix_rule(classes: int, threshold: float) -> None:
    rng = np.random.default_rng(0)
    if classes == 2:
        probabilities = binary(*rng.random(500))
        probabilities[:3] = binary(0.0, 1.0, threshold)
    else:
        probabilities = rng.dirichlet(np.ones(classes), 500)
    names = [f"c{i}" for i in range(classes)]
    decisions = [decide(row, names, threshold) for row in probabilities]
    indices = predicted_indices(probabilities, threshold)
    assert indices.tolist() == [d.index for d in decisions]
    np.testing.assert_allclose(
        confidences(probabilities, threshold), [d.confidence for d in decisions], rtol=0, atol=0
    )
