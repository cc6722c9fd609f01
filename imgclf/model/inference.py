"""Running a trained model: load it, check its input size, and turn image files into class
probabilities (an (n, K) matrix, `imgclf.model.decision.class_probabilities`).

`predict_probabilities` is THE way from image files to probabilities: evaluate calls it for the
split manifests and batch prediction for a user's folder, so both see the same preprocessing
(`imgclf.model.dataset.image_dataset` -> `imgclf.model.preprocess.preprocess_bytes`) and the same
forward pass (`predict_batches`, which training also uses to extract features): an exported engine
(`imgclf.model.engines`), or a Keras model through one compiled graph, never `model.predict`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from imgclf.model.dataset import image_dataset
from imgclf.model.decision import class_probabilities
from imgclf.model.engines import Engine, KerasEngine

MLFLOW_URI_PREFIXES = ("models:/", "runs:/", "mlflow-artifacts:/")


def load_model(ref: Path | str):
    """`models:/NAME@alias`, `runs:/ID/path` (and other MLflow URIs) via MLflow; else a .keras
    file."""
    text = str(ref)
    if text.startswith(MLFLOW_URI_PREFIXES):
        return load_mlflow_model(text)
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no model at {path}")
    from imgclf.model.architectures.factory import load_classifier

    return load_classifier(path)


def load_mlflow_model(uri: str):
    """A Keras model logged with MLflow, from an MLflow URI or a local MLflow model folder."""
    import mlflow.keras

    import imgclf.model.architectures.efficientnet_lite  # noqa: F401  (registers layers, if any)

    return mlflow.keras.load_model(uri)


def model_image_size(model) -> int:
    """S of a model taking (None, S, S, 3) and returning (None, 1) = P(second class) from a
    sigmoid head, or (None, K) class probabilities from a softmax head."""
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[1] != shape[2] or shape[1] is None or shape[3] != 3:
        raise ValueError(f"expected a model input (None, S, S, 3), got {shape}")
    out = tuple(model.output_shape)
    if len(out) != 2 or out[1] is None:
        raise ValueError(f"expected a model output (None, 1) or (None, K), got {out}")
    return int(shape[1])


def as_engine(model: Engine | keras.Model) -> Engine:
    """An exported engine as it is; a Keras model behind one compiled graph."""
    return KerasEngine(model) if isinstance(model, keras.Model) else model


def predict_batches(
    model: Engine | keras.Model,
    dataset: tf.data.Dataset,
    total: int | None = None,
    desc: str = "",
) -> np.ndarray:
    """Run `model` (an engine, or a Keras model with training=False) over every batch of
    `dataset`; concatenate the outputs. `total` is the number of batches, for the progress bar."""
    engine = as_engine(model)
    outputs = [
        engine(batch.numpy())
        for batch in tqdm(dataset, total=total, desc=desc, unit="batch", disable=not desc)
    ]
    return np.concatenate(outputs) if outputs else np.zeros((0,), "float32")


def predict_probabilities(
    model: Engine | keras.Model, files: Sequence[str | Path], batch_size: int, desc: str = "predict"
) -> np.ndarray:
    """(n, K) class probabilities, a row per file (float32, same order), batched through THE
    preprocessing and `model` (an exported engine or a Keras model).

    Every file must be decodable by TensorFlow: one that is not fails the whole call. Nothing is
    skipped here; a caller that may meet such files must handle them itself.
    """
    engine = as_engine(model)
    files = [str(f) for f in files]
    if not files:
        return np.zeros((0, max(engine.outputs, 2)), "float32")
    dataset = image_dataset(files, engine.image_size, batch_size)
    batches = math.ceil(len(files) / batch_size)
    outputs = predict_batches(engine, dataset, total=batches, desc=desc)
    return class_probabilities(np.asarray(outputs, dtype="float32"))
