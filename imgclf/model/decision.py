"""THE decision rule: a model's class probabilities -> predicted class and confidence.

Evaluate, batch prediction, the service and the drift monitor all call this, so a file gets the
same label everywhere. Probabilities are a (n, K) matrix, one column per class in the model's
class order (`class_probabilities` turns a sigmoid head's single column into two). With two
classes the second class is predicted when its probability reaches `threshold` (the binary rule,
tunable); with more the most probable class wins (ties: the lowest index). The confidence is the
probability of the predicted class.
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


def class_probabilities(outputs: ArrayLike) -> np.ndarray:
    """(n, K) class probabilities from a model's outputs: a sigmoid head's (n,) or (n, 1)
    P(second class) becomes the two columns [1 - p, p]; a softmax head's (n, K) is kept."""
    outputs = np.asarray(outputs)
    if outputs.ndim == 1 or outputs.shape[-1] == 1:
        positive = outputs.reshape(-1)
        return np.stack([1 - positive, positive], axis=1)
    return outputs


def predicted_indices(probabilities: ArrayLike, threshold: float) -> np.ndarray:
    """Class index per image (int64) for an (n, K) matrix of class probabilities."""
    probabilities = np.asarray(probabilities)
    if probabilities.shape[-1] == 2:
        return (probabilities[..., 1] >= threshold).astype(np.int64)
    return np.argmax(probabilities, axis=-1).astype(np.int64)


def confidences(probabilities: ArrayLike, threshold: float) -> np.ndarray:
    """Probability of the predicted class per image (float64)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    picked = predicted_indices(probabilities, threshold)
    return np.take_along_axis(probabilities, picked[..., None], axis=-1)[..., 0]


def decide(probabilities: ArrayLike, classes: Sequence[str], threshold: float) -> Decision:
    """One image's decision, from its K class probabilities: the matrix rule applied to one row."""
    row = np.asarray(probabilities, dtype=np.float64).reshape(1, -1)
    if row.shape[1] != len(classes):
        raise ValueError(f"{row.shape[1]} probabilities for {len(classes)} classes")
    index = int(predicted_indices(row, threshold)[0])
    return Decision(index=index, label=classes[index], confidence=float(row[0, index]))
