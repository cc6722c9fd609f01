"""THE decision rule: a model's probability -> predicted label and confidence.

Evaluate, batch prediction, the service and the drift monitor all call this, so a file gets the
same label everywhere. The model outputs P(second class); the second class is predicted when that
probability reaches `threshold`, and the confidence is the probability of the predicted class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike


@dataclass(frozen=True)
class Decision:
    index: int  # position of the predicted class in the model's class list
    label: str
    confidence: float  # probability of the predicted class


def predicted_indices(probabilities: ArrayLike, threshold: float) -> np.ndarray:
    """Class index per image (int64) for an array of P(second class)."""
    return (np.asarray(probabilities) >= threshold).astype(np.int64)


def confidences(probabilities: ArrayLike, threshold: float) -> np.ndarray:
    """Probability of the predicted class per image."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    return np.where(
        predicted_indices(probabilities, threshold) == 1, probabilities, 1 - probabilities
    )


def decide(probability: float, classes: Sequence[str], threshold: float) -> Decision:
    """One image's decision, from P(second class): the vector rule applied to one value."""
    index = int(predicted_indices(probability, threshold))
    confidence = float(confidences(probability, threshold))
    return Decision(index=index, label=classes[index], confidence=confidence)
