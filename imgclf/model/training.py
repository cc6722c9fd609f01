"""The train stage: compile, callbacks and fit, two-phase transfer learning or end to end from
scratch, calibration, and `run_train`, which writes artifacts/train and records the MLflow run.

Phase 1 trains the head with the pretrained backbone frozen: on features extracted once (on the
backbone exported to LiteRT, `train.feature_engine`), by Adam epochs or as a regularised logistic
regression (`train.linear_head`); phase 2 optionally fine-tunes the backbone's top blocks on
(augmented) images. With `train.tta: flip` the mirrored images' features are extra training rows
and the saved model averages each image with its mirror; with `train.calibration: temperature` a
temperature fitted on validation divides the saved model's logits.
The loss follows the model's output: binary cross-entropy on a sigmoid unit (labels 0/1),
categorical cross-entropy on a softmax (one-hot labels, as Keras' sparse variant has no label
smoothing).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from scipy.optimize import minimize_scalar
from scipy.special import expit, softmax
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_class_weight
from tqdm import tqdm

from imgclf.config import AugmentParams, MlflowParams, Paths, TrainParams
from imgclf.io import atomic_dir, write_json, write_tsv
from imgclf.model.architectures.factory import (
    HEAD_OUTPUT,
    Classifier,
    build_classifier,
    inference_model,
    unfreeze_top,
)
from imgclf.model.dataset import LabelledFiles, image_dataset, read_split
from imgclf.model.decision import class_probabilities, predicted_indices
from imgclf.model.engines import ENGINE_FILES, Engine, KerasEngine, export_engine, load_engine
from imgclf.model.preprocess import load_images


@dataclass(frozen=True)
class Calibration:
    """The temperature the saved model divides its logits by, and the validation log loss (of
    the saved model's probabilities, mirror averaged in) before and after it."""

    temperature: float = 1.0
    val_log_loss_before: float | None = None
    val_log_loss_after: float | None = None


@dataclass(frozen=True)
class Trained:
    """What `train_classifier` returns: the model to save (calibration and TTA inside), one
    history row per epoch (per regularisation strength for a linear head), the calibration."""

    model: keras.Model
    history: list[dict[str, float]]
    calibration: Calibration


@dataclass(frozen=True)
class TrainRun:
    """What `run_train` did: the MLflow run, the split sizes, one history row per epoch and the
    calibration."""

    run_id: str
    train_images: int
    val_images: int
    history: list[dict[str, float]]
    calibration: Calibration

    @property
    def best_epoch(self) -> dict[str, float]:
        """The epoch whose weights were kept (lowest val_loss)."""
        return min(self.history, key=lambda row: row["val_loss"])


def run_train(
    paths: Paths, params: TrainParams, classes: Sequence[str], mlflow_params: MlflowParams
) -> TrainRun:
    """Train on the split manifests; write model.keras, history.csv and mlflow_run.json (all or
    nothing) and log params, tags, curves, calibration and the model into a new MLflow run."""
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
        tracking.open_run(mlflow_params, paths.root, run_name=params.arch_name) as run,
        distribution_strategy(params.strategy).scope(),
    ):
        tracking.log_run_context(logged, paths.root, manifests)
        classifier = build_classifier(params, len(classes), paths.pretrained_dir)
        trained = train_classifier(classifier, train, val, params)
        trained.model.save(out / paths.model.name)
        columns = list(dict.fromkeys(key for row in trained.history for key in row))
        write_tsv(out / paths.history.name, trained.history, columns, delimiter=",")
        write_json(out / paths.mlflow_run.name, {"run_id": run.info.run_id})
        for row in trained.history:
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
        mlflow.log_metrics({k: v for k, v in vars(trained.calibration).items() if v is not None})
        example = load_images(train.files[:1], params.image_size)
        tracking.log_classifier(trained.model, example, classes)
    return TrainRun(run.info.run_id, len(train), len(val), trained.history, trained.calibration)


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
    params: TrainParams,
    class_weight: dict[int, float] | None,
    initial_epoch: int = 0,
) -> list[dict[str, float]]:
    """Compile with Adam and the output's loss, fit with early stopping, and end on the best
    val_loss weights."""
    loss, accuracy = loss_and_accuracy(model.output_shape[-1], params.label_smoothing)
    steps = epochs * int(train.cardinality())  # batches per epoch are known: no repeat, no filter
    model.compile(
        optimizer=keras.optimizers.Adam(_learning_rate(lr, params.lr_schedule, steps)),
        loss=loss,
        metrics=[accuracy, keras.metrics.AUC(name="auc")],
    )
    with tempfile.TemporaryDirectory() as scratch:
        best = Path(scratch) / "best.weights.h5"
        callbacks = [
            _LearningRateLogger(),
            keras.callbacks.EarlyStopping("val_loss", patience=params.early_stopping_patience),
            keras.callbacks.ModelCheckpoint(
                best, "val_loss", save_best_only=True, save_weights_only=True
            ),
        ]
        if params.lr_schedule == "plateau":
            callbacks.append(keras.callbacks.ReduceLROnPlateau("val_loss", factor=0.3, patience=2))
        history = model.fit(
            train,
            validation_data=val,
            epochs=initial_epoch + epochs,
            initial_epoch=initial_epoch,
            class_weight=class_weight,
            callbacks=callbacks,
            verbose=2,
        )
        model.load_weights(best)
    return [
        {"epoch": initial_epoch + i, **{k: float(v[i]) for k, v in history.history.items()}}
        for i in range(len(history.epoch))
    ]


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
    classifier: Classifier, train: LabelledFiles, val: LabelledFiles, params: TrainParams
) -> Trained:
    """Train `classifier` in place (its phases, `params`), calibrate it, and return the model to
    save with the history of every phase.

    Phase 1 on cached features when the backbone is pretrained and `cache_features` is on (then
    augmentation applies to fine-tuning only); otherwise on images.
    """
    units = classifier.model.output_shape[-1]
    images = (
        _training_images(train, units, params),
        image_dataset(
            val.files, params.image_size, params.batch_size, loss_targets(val.labels, units)
        ),
    )
    weights = class_weights(train.labels, params.class_weights)

    def fit_images(lr: float, epochs: int, initial_epoch: int = 0) -> list[dict[str, float]]:
        return _fit(classifier.model, *images, lr=lr, epochs=epochs, params=params,
                    class_weight=weights, initial_epoch=initial_epoch)  # fmt: skip

    backbone, head = classifier.backbone, classifier.head
    val_features = None  # of the final backbone, when phase 1 extracted them
    if not classifier.pretrained:
        history = fit_images(params.lr, params.epochs)
    else:
        backbone.trainable = False
        if params.cache_features:
            train_features, val_features = frozen_features(backbone, (train, val), params)
            history = _fit_head(head, train_features, val_features, params)
        else:
            history = fit_images(params.lr, params.epochs)
        tune = params.fine_tune
        if tune.blocks and tune.epochs:
            unfreeze_top(backbone, params.backbones, tune.blocks)
            history += fit_images(tune.lr, tune.epochs, initial_epoch=len(history))
            val_features = None  # the backbone moved
    if head is None:  # seed_cnn: one Sequential, its own output
        return Trained(classifier.model, history, Calibration())
    calibration = Calibration()
    if params.calibration == "temperature":
        if val_features is None:
            [val_features] = frozen_features(backbone, (val,), params)
        calibration = _calibrate(head, val_features)
    model = inference_model(classifier, calibration.temperature, params.tta == "flip")
    return Trained(model, history, calibration)


# ---------------------------------------------------------------- frozen features


@contextmanager
def _feature_engine(backbone: keras.Model, kind: str) -> Iterator[Engine]:
    """The frozen backbone as a forward pass: exported to LiteRT once (XNNPACK runs it 2-3x
    faster than TensorFlow on CPU), or the Keras model itself (e.g. on GPUs)."""
    if kind == "keras":
        yield KerasEngine(backbone)
        return
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / ENGINE_FILES["litert"]
        yield load_engine(export_engine(backbone, "litert", path))


def _views(batch: np.ndarray, tta: str) -> list[np.ndarray]:
    """The images the saved model looks at: the batch, and with flip TTA its mirror (the same
    pixels as the model's HorizontalFlip layer makes)."""
    return [batch, batch[:, :, ::-1]] if tta == "flip" else [batch]


@dataclass(frozen=True)
class Features:
    """A split's backbone features for every view, (views, n, d) in file order, and its labels."""

    values: np.ndarray
    labels: np.ndarray

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """One row per view of each image, with its label: what a head trains on."""
        views, _, dim = self.values.shape
        return self.values.reshape(-1, dim), np.tile(self.labels, views)


def frozen_features(
    backbone: keras.Model, splits: Sequence[LabelledFiles], params: TrainParams
) -> list[Features]:
    """Per split, the frozen backbone's features of every view (`_views`)."""
    found = []
    with _feature_engine(backbone, params.feature_engine) as engine:
        for split in splits:
            dataset = image_dataset(split.files, params.image_size, params.batch_size)
            batches = math.ceil(len(split) / params.batch_size)
            per_view: list[list[np.ndarray]] = []
            for batch in tqdm(dataset.as_numpy_iterator(), total=batches, desc="features"):
                views = [engine(view) for view in _views(batch, params.tta)]
                per_view = per_view or [[] for _ in views]
                for chunks, features in zip(per_view, views, strict=True):
                    chunks.append(features)
            values = np.stack([np.concatenate(chunks) for chunks in per_view])
            found.append(Features(values, split.labels))
    return found


def _fit_head(
    head: keras.Model, train: Features, val: Features, params: TrainParams
) -> list[dict[str, float]]:
    """Phase 1 on cached features: Adam epochs, or the linear head's regularisation path."""
    if params.linear_head.enabled:
        return _fit_linear_head(head, train, val, params)
    units = head.output_shape[-1]

    def dataset(split: Features, seed: int | None) -> tf.data.Dataset:
        features, labels = split.rows()
        data = tf.data.Dataset.from_tensor_slices((features, loss_targets(labels, units)))
        if seed is not None:
            data = data.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
        return data.batch(params.batch_size).prefetch(tf.data.AUTOTUNE)

    return _fit(
        head,
        dataset(train, params.seed),
        dataset(val, None),
        lr=params.lr,
        epochs=params.epochs,
        params=params,
        class_weight=class_weights(train.labels, params.class_weights),
    )


def head_probabilities(
    features: np.ndarray, kernel: np.ndarray, bias: np.ndarray, temperature: float = 1.0
) -> np.ndarray:
    """(n, K) class probabilities of a linear head over (views, n, d) features, averaged over the
    views as the saved model does: a sigmoid for one unit, else a softmax."""
    logits = (features @ kernel + bias) / temperature
    probabilities = expit(logits) if kernel.shape[1] == 1 else softmax(logits, axis=-1)
    return class_probabilities(probabilities.mean(axis=0))


def linear_head_path(
    train: Features, strengths: Sequence[float], class_weight_mode: str, units: int
) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """L2-regularised logistic regression on standardised features, one fit per inverse strength
    (weakest regularisation last, warm-started), each as (c, kernel, bias) of a head's Dense of
    `units` on raw features."""
    x, y = train.rows()
    scaler = StandardScaler().fit(x)
    regression = LogisticRegression(
        max_iter=2000,
        warm_start=True,
        class_weight=class_weights(train.labels, class_weight_mode),
    )
    fitted = []
    for c in sorted(strengths):
        regression.set_params(C=c).fit(scaler.transform(x), y)
        fitted.append((c, *_dense_weights(regression, scaler, units)))
    return fitted


def _fit_linear_head(
    head: keras.Model, train: Features, val: Features, params: TrainParams
) -> list[dict[str, float]]:
    """The linear head's path (`linear_head_path`); the strength with the lowest validation log
    loss goes into the head's Dense. One history row per strength."""
    dense = head.get_layer(HEAD_OUTPUT)
    fitted = linear_head_path(train, params.linear_head.c, params.class_weights, dense.units)
    rows = [
        {"epoch": index, "c": c}
        | _scores("", head_probabilities(train.values, kernel, bias), train.labels)
        | _scores("val_", head_probabilities(val.values, kernel, bias), val.labels)
        for index, (c, kernel, bias) in enumerate(fitted)
    ]
    best = min(range(len(rows)), key=lambda i: rows[i]["val_loss"])
    dense.set_weights(list(fitted[best][1:]))
    return rows


def _dense_weights(
    regression: LogisticRegression, scaler: StandardScaler, units: int
) -> tuple[np.ndarray, np.ndarray]:
    """A fitted regression on standardised features as the kernel (d, units) and bias of a Dense
    on raw features. Two classes give one logit: a sigmoid unit takes it as is, a two-way softmax
    as [0, logit] (softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)])."""
    if len(regression.classes_) != max(units, 2):
        raise ValueError(f"training features cover classes {regression.classes_}, not {units}")
    kernel = (regression.coef_ / scaler.scale_).T
    bias = regression.intercept_ - scaler.mean_ @ kernel
    if units == 2:
        kernel = np.concatenate([np.zeros_like(kernel), kernel], axis=1)
        bias = np.concatenate([np.zeros_like(bias), bias])
    return kernel.astype("float32"), bias.astype("float32")


def _scores(prefix: str, probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """History columns: log loss and accuracy (THE decision rule at 0.5)."""
    classes = list(range(probabilities.shape[1]))
    correct = predicted_indices(probabilities, 0.5) == labels
    return {
        f"{prefix}loss": float(log_loss(labels, probabilities, labels=classes)),
        f"{prefix}accuracy": float(np.mean(correct)),
    }


# ---------------------------------------------------------------- calibration


def _calibrate(head: keras.Model, val: Features) -> Calibration:
    """Temperature scaling: the T that minimises the validation log loss of the saved model's
    probabilities (logits / T, mirror averaged in); one parameter, so accuracy cannot change for
    one view and barely for two."""
    kernel, bias = head.get_layer(HEAD_OUTPUT).get_weights()
    classes = list(range(max(kernel.shape[1], 2)))

    def val_loss(temperature: float) -> float:
        probabilities = head_probabilities(val.values, kernel, bias, temperature)
        return float(log_loss(val.labels, probabilities, labels=classes))

    found = minimize_scalar(
        lambda log_t: val_loss(math.exp(log_t)), bounds=(-3, 3), method="bounded"
    )
    temperature = math.exp(found.x)
    return Calibration(temperature, val_loss(1.0), val_loss(temperature))
