"""The train stage: compile, callbacks and fit, two-phase transfer learning or end to end from
scratch, and `run_train`, which writes artifacts/train and records the MLflow run.

Phase 1 trains the head with the pretrained backbone frozen (on features extracted once, when
nothing random happens to the images); phase 2 optionally fine-tunes the backbone's top blocks.
The loss follows the model's output: binary cross-entropy on a sigmoid unit (labels 0/1),
categorical cross-entropy on a softmax (one-hot labels, as Keras' sparse variant has no label
smoothing).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from imgclf.config import AugmentParams, MlflowParams, Paths, TrainParams
from imgclf.io import atomic_dir, write_json, write_tsv
from imgclf.model.architectures.factory import Classifier, build_classifier, unfreeze_top
from imgclf.model.dataset import LabelledFiles, image_dataset, read_split
from imgclf.model.inference import predict_batches
from imgclf.model.preprocess import load_images


@dataclass(frozen=True)
class TrainRun:
    """What `run_train` did: the MLflow run, the split sizes and one history row per epoch."""

    run_id: str
    train_images: int
    val_images: int
    history: list[dict[str, float]]

    @property
    def best_epoch(self) -> dict[str, float]:
        """The epoch whose weights were kept (lowest val_loss)."""
        return min(self.history, key=lambda row: row["val_loss"])


def run_train(
    paths: Paths, params: TrainParams, classes: Sequence[str], mlflow_params: MlflowParams
) -> TrainRun:
    """Train on the split manifests; write model.keras, history.csv and mlflow_run.json (all or
    nothing) and log params, tags, curves and the model into a new MLflow run."""
    import mlflow

    from imgclf import tracking

    set_seeds(params.seed)
    train = read_split(paths.split_manifest("train"), classes, paths.root)
    val = read_split(paths.split_manifest("val"), classes, paths.root)
    manifests = [paths.split_manifest(name) for name in ("train", "val", "test")]
    # What this run received, under params.yaml's names; the data is the data_version tag.
    logged = {"download": {"classes": list(classes)}, "train": params.model_dump(mode="json")}

    with (
        atomic_dir(paths.train_dir) as out,
        tracking.open_run(mlflow_params, paths.root, run_name=params.arch) as run,
        distribution_strategy(params.strategy).scope(),
    ):
        tracking.log_run_context(logged, paths.root, manifests)
        classifier = build_classifier(params, len(classes), paths.pretrained_weights)
        history = train_classifier(
            classifier, train, val, params, callbacks=[mlflow.keras.MlflowCallback()]
        )
        classifier.model.save(out / paths.model.name)
        write_tsv(out / paths.history.name, history, list(history[0]), delimiter=",")
        write_json(out / paths.mlflow_run.name, {"run_id": run.info.run_id})
        example = load_images(train.files[:1], params.image_size)
        tracking.log_classifier(classifier.model, example, classes)
    return TrainRun(run.info.run_id, len(train), len(val), history)


def set_seeds(seed: int) -> None:
    """Python, NumPy and TensorFlow seeds in one call."""
    keras.utils.set_random_seed(seed)


def distribution_strategy(name: str) -> tf.distribute.Strategy:
    """`mirrored` replicates over every visible GPU; `default` is the plain single device."""
    return tf.distribute.MirroredStrategy() if name == "mirrored" else tf.distribute.get_strategy()


def class_weights(labels: np.ndarray, mode: str) -> dict[int, float] | None:
    """Inverse class frequency (n / (k * count_c), k = classes present): 1.0 each when balanced."""
    if mode == "none":
        return None
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(c): float(w) for c, w in zip(present, weights, strict=True)}


def loss_targets(labels: np.ndarray, units: int) -> np.ndarray:
    """What the loss compares with a model of `units` outputs: the label itself for one sigmoid
    unit, a one-hot row for a softmax."""
    if units == 1:
        return labels.astype("float32")
    return keras.utils.to_categorical(labels, units).astype("float32")


def loss_and_accuracy(
    units: int, label_smoothing: float
) -> tuple[keras.losses.Loss, keras.metrics.Metric]:
    """The loss for a model of `units` outputs, and its accuracy metric (always logged as
    `accuracy`, so the history keeps `val_accuracy`)."""
    if units == 1:
        return (
            keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing),
            keras.metrics.BinaryAccuracy(name="accuracy"),
        )
    return (
        keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        keras.metrics.CategoricalAccuracy(name="accuracy"),
    )


class _LearningRateLogger(keras.callbacks.Callback):
    """Adds the current learning rate to each epoch's logs (curves, MLflow, history.csv)."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


def _learning_rate(
    lr: float, schedule: str, total_steps: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(total_steps, 1))
    return lr


def _fit(
    model: keras.Model,
    train: tf.data.Dataset,
    val: tf.data.Dataset,
    *,
    lr: float,
    epochs: int,
    steps_per_epoch: int,
    schedule: str,
    patience: int,
    label_smoothing: float,
    class_weight: dict[int, float] | None,
    callbacks: Sequence[keras.callbacks.Callback],
    initial_epoch: int = 0,
) -> list[dict[str, float]]:
    """Compile with Adam and the output's loss, fit with early stopping, and end on the best
    val_loss weights."""
    loss, accuracy = loss_and_accuracy(model.output_shape[-1], label_smoothing)
    model.compile(
        optimizer=keras.optimizers.Adam(_learning_rate(lr, schedule, epochs * steps_per_epoch)),
        loss=loss,
        metrics=[accuracy, keras.metrics.AUC(name="auc")],
    )
    with tempfile.TemporaryDirectory() as scratch:
        best = Path(scratch) / "best.weights.h5"
        standard = [
            _LearningRateLogger(),
            keras.callbacks.EarlyStopping("val_loss", patience=patience),
            keras.callbacks.ModelCheckpoint(
                best, "val_loss", save_best_only=True, save_weights_only=True
            ),
        ]
        if schedule == "plateau":
            standard.append(keras.callbacks.ReduceLROnPlateau("val_loss", factor=0.3, patience=2))
        history = model.fit(
            train,
            validation_data=val,
            epochs=initial_epoch + epochs,
            initial_epoch=initial_epoch,
            class_weight=class_weight,
            callbacks=[*standard, *callbacks],
            verbose=2,
        )
        model.load_weights(best)
    return [
        {"epoch": initial_epoch + i, **{k: float(v[i]) for k, v in history.history.items()}}
        for i in range(len(history.epoch))
    ]


def _feature_dataset(
    features: np.ndarray, targets: np.ndarray, batch: int, seed: int | None
) -> tf.data.Dataset:
    dataset = tf.data.Dataset.from_tensor_slices((features, targets))
    if seed is not None:
        dataset = dataset.shuffle(len(targets), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch).prefetch(tf.data.AUTOTUNE)


def augmentation(params: AugmentParams) -> keras.Sequential | None:
    """Keras preprocessing layers for the training input pipeline (None when disabled).

    They run in tf.data, never inside the saved model: a Keras random layer called without
    `training=False` augments, and a served model must never do that.
    """
    if not params.enabled:
        return None
    layers = keras.layers
    candidates = [
        (params.flip, lambda: layers.RandomFlip("horizontal")),
        (params.rotation, lambda: layers.RandomRotation(params.rotation, fill_mode="reflect")),
        (params.shift, lambda: layers.RandomTranslation(params.shift, params.shift, "reflect")),
        (params.zoom, lambda: layers.RandomZoom(params.zoom, fill_mode="reflect")),
        (params.brightness, lambda: layers.RandomBrightness(params.brightness, (0.0, 1.0))),
        (params.contrast, lambda: layers.RandomContrast(params.contrast)),
    ]
    return keras.Sequential([make() for wanted, make in candidates if wanted], name="augment")


def _training_images(split: LabelledFiles, units: int, params: TrainParams) -> tf.data.Dataset:
    """Shuffled labelled batches, augmented when enabled."""
    dataset = image_dataset(
        split.files,
        params.image_size,
        params.batch_size,
        loss_targets(split.labels, units),
        params.seed,
    )
    augment = augmentation(params.augment)
    if augment is None:
        return dataset
    return dataset.map(
        lambda images, labels: (augment(images, training=True), labels),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def train_classifier(
    classifier: Classifier,
    train: LabelledFiles,
    val: LabelledFiles,
    params: TrainParams,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> list[dict[str, float]]:
    """Train `classifier.model` in place; return one history row per epoch (all phases)."""
    steps = math.ceil(len(train) / params.batch_size)
    weights = class_weights(train.labels, params.class_weights)

    def fit(
        model: keras.Model,
        data: tuple[tf.data.Dataset, tf.data.Dataset],
        lr: float,
        epochs: int,
        initial_epoch: int = 0,
    ) -> list[dict[str, float]]:
        return _fit(
            model,
            *data,
            lr=lr,
            epochs=epochs,
            steps_per_epoch=steps,
            schedule=params.lr_schedule,
            patience=params.early_stopping_patience,
            label_smoothing=params.label_smoothing,
            class_weight=weights,
            callbacks=callbacks,
            initial_epoch=initial_epoch,
        )

    units = classifier.model.output_shape[-1]
    images = (
        _training_images(train, units, params),
        image_dataset(
            val.files, params.image_size, params.batch_size, loss_targets(val.labels, units)
        ),
    )
    backbone, head = classifier.backbone, classifier.head
    if backbone is None or head is None:
        return fit(classifier.model, images, params.lr, params.epochs)

    backbone.trainable = False
    if params.cache_features and not params.augment.enabled:
        history = fit(
            head, _cached_features(backbone, train, val, units, params), params.lr, params.epochs
        )
    else:
        history = fit(classifier.model, images, params.lr, params.epochs)
    tune = params.fine_tune
    if tune.blocks and tune.epochs:
        unfreeze_top(backbone, params.arch, tune.blocks)
        history += fit(classifier.model, images, tune.lr, tune.epochs, initial_epoch=len(history))
    return history


def _cached_features(
    backbone: keras.Model,
    train: LabelledFiles,
    val: LabelledFiles,
    units: int,
    params: TrainParams,
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Extract the frozen backbone's features once; the head then trains in seconds per epoch."""

    def features(split: LabelledFiles, name: str) -> np.ndarray:
        batches = math.ceil(len(split) / params.batch_size)
        images = image_dataset(split.files, params.image_size, params.batch_size)
        return predict_batches(backbone, images, batches, f"features {name}")

    return (
        _feature_dataset(
            features(train, "train"),
            loss_targets(train.labels, units),
            params.batch_size,
            params.seed,
        ),
        _feature_dataset(
            features(val, "val"), loss_targets(val.labels, units), params.batch_size, None
        ),
    )
