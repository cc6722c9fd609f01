"""Batched forward passes over a tf.data pipeline: features for training, probabilities for
evaluation and prediction. One compiled graph per call, never `model.predict` per image."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tqdm import tqdm


def predict_batches(
    model: tf.keras.Model | object,
    dataset: tf.data.Dataset,
    total: int | None = None,
    desc: str = "",
) -> np.ndarray:
    """Run `model` (training=False) over every batch of `dataset`; concatenate the outputs.

    `total` is the number of batches, for the progress bar.
    """
    # One trace for every batch size: the signature leaves the batch dimension open.
    forward = tf.function(
        lambda batch: model(batch, training=False), input_signature=[dataset.element_spec]
    )
    outputs = [
        forward(batch).numpy()
        for batch in tqdm(dataset, total=total, desc=desc, unit="batch", disable=not desc)
    ]
    return np.concatenate(outputs) if outputs else np.zeros((0,), "float32")
