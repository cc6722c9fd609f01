"""THE decision rule: P(second class) -> predicted class and its confidence."""

from __future__ import annotations

import numpy as np
import pytest

from imgclf.model.decision import confidences, decide, predicted_indices

CLASSES = ["cat", "dog"]


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.85])
def test_probability_at_the_threshold_is_the_second_class(threshold: float) -> None:
    below = np.nextafter(threshold, 0.0)
    assert predicted_indices(np.array([below, threshold]), threshold).tolist() == [0, 1]
    assert decide(threshold, CLASSES, threshold).label == "dog"
    assert decide(below, CLASSES, threshold).label == "cat"


def test_confidence_is_the_probability_of_the_predicted_class() -> None:
    probabilities = np.array([0.1, 0.45, 0.5, 0.9])
    np.testing.assert_allclose(confidences(probabilities, 0.5), [0.9, 0.55, 0.5, 0.9])
    # a low threshold predicts dog at 0.3, so the confidence is P(dog) itself, under a half
    assert decide(0.3, CLASSES, 0.25).confidence == pytest.approx(0.3)
    assert decide(0.2, CLASSES, 0.25).confidence == pytest.approx(0.8)


@pytest.mark.parametrize("threshold", [0.5, 0.2, 0.7])
def test_one_image_decision_agrees_with_the_vector_rule(threshold: float) -> None:
    probabilities = np.random.default_rng(0).random(500)
    probabilities[:3] = [0.0, 1.0, threshold]
    decisions = [decide(float(p), CLASSES, threshold) for p in probabilities]
    indices = predicted_indices(probabilities, threshold)
    assert indices.tolist() == [d.index for d in decisions]
    assert [CLASSES[i] for i in indices] == [d.label for d in decisions]
    np.testing.assert_allclose(
        confidences(probabilities, threshold), [d.confidence for d in decisions], rtol=0, atol=0
    )
