"""Training on generated images: it learns, keeps the best epoch, freezes what it should, for two
classes (one sigmoid unit, binary cross-entropy) and for three (softmax, categorical)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from imgclf.config import FineTuneParams, MlflowParams, Paths, TrainParams
from imgclf.io import read_json, write_tsv
from imgclf.model.architectures.cnn import small_cnn_backbone
from imgclf.model.architectures.factory import (
    Classifier,
    build_classifier,
    classifier_head,
    classifier_output,
)
from imgclf.model.dataset import LabelledFiles
from imgclf.model.inference import predict_probabilities
from imgclf.model.training import (
    class_weights,
    head_probabilities,
    loss_and_accuracy,
    loss_targets,
    run_train,
    set_seeds,
    train_classifier,
)

SIZE = 32
TINTS = (0, 2, 1)  # the colour channel that marks each class: reddish, bluish, greenish


def _write_images(folder: Path, n_per_class: int, seed: int, n_classes: int = 2) -> LabelledFiles:
    """Class c: noisy images tinted by channel TINTS[c]. Easy, not trivial."""
    rng = np.random.default_rng(seed)
    files, labels = [], []
    for label in range(n_classes):
        for i in range(n_per_class):
            pixels = rng.integers(0, 160, (SIZE, SIZE, 3))
            pixels[..., TINTS[label]] += 90
            path = folder / f"{label}_{seed}_{i}.png"
            Image.fromarray(pixels.astype("uint8")).save(path)
            files.append(str(path))
            labels.append(label)
    return LabelledFiles(files, np.array(labels, dtype="int32"))


@pytest.fixture(scope="module", params=[2, 3], ids=["2 classes", "3 classes"])
def splits(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[LabelledFiles, LabelledFiles]:
    folder = tmp_path_factory.mktemp("images")
    n_classes = request.param
    return _write_images(folder, 24, 1, n_classes), _write_images(folder, 8, 2, n_classes)


def _n_classes(split: LabelledFiles) -> int:
    return int(split.labels.max()) + 1


def _params(**overrides: object) -> TrainParams:
    defaults = {"arch": "small_cnn", "image_size": SIZE, "weights": None, "batch_size": 8}
    return TrainParams(**{**defaults, "epochs": 4, "lr": 3e-3, **overrides})


def test_class_weights_balance_unequal_classes() -> None:
    weights = class_weights(np.array([0, 0, 0, 1]), "auto")
    assert weights == pytest.approx({0: 4 / 6, 1: 2.0})
    assert class_weights(np.array([0, 1]), "auto") == {0: 1.0, 1: 1.0}
    assert class_weights(np.array([0, 0, 1]), "none") is None


def test_class_weights_balance_three_unequal_classes() -> None:
    labels = np.array([0] * 6 + [1] * 3 + [2])
    weights = class_weights(labels, "auto")
    assert weights == pytest.approx({0: 10 / 18, 1: 10 / 9, 2: 10 / 3})
    # Every class then weighs the same in the loss: n / k.
    totals = [weights[c] * np.sum(labels == c) for c in range(3)]
    assert totals == pytest.approx([10 / 3] * 3)


def test_sigmoid_unit_trains_on_labels_softmax_on_one_hot_rows() -> None:
    labels = np.array([0, 2, 1], dtype="int32")
    np.testing.assert_array_equal(loss_targets(labels[:1], 1), [0.0])
    one_hot = loss_targets(labels, 3)
    np.testing.assert_array_equal(one_hot, [[1, 0, 0], [0, 0, 1], [0, 1, 0]])
    assert one_hot.dtype == np.float32
    loss, accuracy = loss_and_accuracy(1, 0.0)
    assert isinstance(loss, keras.losses.BinaryCrossentropy) and accuracy.name == "accuracy"
    loss, accuracy = loss_and_accuracy(2, 0.0)  # two classes with `head: softmax`
    assert isinstance(loss, keras.losses.CategoricalCrossentropy) and accuracy.name == "accuracy"


@pytest.mark.parametrize("units", [1, 3])
def test_label_smoothing_changes_the_loss(units: int) -> None:
    labels = np.array([0, 1, 0], dtype="int32") if units == 1 else np.array([0, 2, 1], "int32")
    truth = loss_targets(labels, units)
    confident = np.clip(truth, 0.01, 0.99)  # right and sure of it
    plain = float(loss_and_accuracy(units, 0.0)[0](truth, confident))
    smoothed = float(loss_and_accuracy(units, 0.2)[0](truth, confident))
    assert np.isfinite(plain) and smoothed > plain  # smoothing penalises over-confidence


def test_from_scratch_training_learns_and_keeps_the_best_epoch(splits) -> None:
    train, val = splits
    set_seeds(0)
    classifier = build_classifier(_params(), _n_classes(train))
    history = train_classifier(classifier, train, val, _params()).history
    assert [row["epoch"] for row in history] == list(range(len(history)))
    assert {"loss", "val_loss", "accuracy", "val_accuracy", "lr"} <= history[0].keys()
    model = classifier.model
    units = model.output_shape[-1]
    model.compile(loss=loss_and_accuracy(units, 0.0)[0])
    images = np.stack([np.asarray(Image.open(f), "float32") / 255 for f in val.files])
    truth = loss_targets(val.labels, units)
    val_loss = model.evaluate(images, truth, verbose=0, return_dict=True)["loss"]
    # The weights kept are the best epoch's, not the last one's.
    assert val_loss == pytest.approx(min(row["val_loss"] for row in history), rel=1e-3)
    assert history[-1]["lr"] < history[0]["lr"]  # cosine schedule decays


def _pretrained_like(params: TrainParams, n_classes: int) -> Classifier:
    """A small backbone standing in for a pretrained one (no downloads in tests)."""
    backbone = small_cnn_backbone(SIZE, widths=(8, 16))
    output = classifier_output(params, n_classes)
    head = classifier_head(backbone.output_shape[-1], output, params.dropout)
    inputs = keras.Input((SIZE, SIZE, 3))
    return Classifier(keras.Model(inputs, head(backbone(inputs))), backbone, head, pretrained=True)


def _backbone_weights(classifier: Classifier) -> list[np.ndarray]:
    return [np.array(w) for w in classifier.backbone.get_weights()]


def test_cached_feature_training_leaves_the_backbone_untouched(splits) -> None:
    train, val = splits
    params = _params(epochs=3, linear_head={"enabled": False})  # the Adam-trained head
    classifier = _pretrained_like(params, _n_classes(train))
    before = _backbone_weights(classifier)
    train_classifier(classifier, train, val, params)
    for old, new in zip(before, _backbone_weights(classifier), strict=True):
        np.testing.assert_array_equal(old, new)


def test_fine_tuning_changes_only_the_top_of_the_backbone(splits) -> None:
    train, val = splits
    params = _params(epochs=2, fine_tune=FineTuneParams(blocks=2, epochs=2, lr=1e-3))
    classifier = _pretrained_like(params, _n_classes(train))
    layers = [layer for layer in classifier.backbone.layers if layer.weights]
    before = {layer.name: [np.array(w) for w in layer.get_weights()] for layer in layers}
    history = train_classifier(classifier, train, val, params).history
    assert len(history) > 2  # head phase + fine-tune phase
    changed = {
        layer.name
        for layer in layers
        if any(
            not np.array_equal(old, new)
            for old, new in zip(before[layer.name], layer.get_weights(), strict=True)
        )
    }
    top_conv = [layer.name for layer in layers if isinstance(layer, keras.layers.Conv2D)][-1]
    assert top_conv in changed
    assert layers[0].name not in changed  # the stem stays frozen


def _frozen_pretrained_params(**overrides: object) -> TrainParams:
    """Params of a frozen pretrained backbone (what the linear head requires); the tests hand
    `train_classifier` a small stand-in built by `_pretrained_like`."""
    return _params(arch="efficientnet_lite0", weights="imagenet", **overrides)


def _val_log_loss(model: keras.Model, val: LabelledFiles) -> float:
    from sklearn.metrics import log_loss

    from imgclf.model.decision import class_probabilities

    probabilities = class_probabilities(predict_probabilities(model, val.files, 8, desc=""))
    return log_loss(val.labels, probabilities, labels=list(range(probabilities.shape[1])))


def test_linear_head_keeps_the_strength_with_the_lowest_validation_loss(splits) -> None:
    train, val = splits
    strengths = [1e-4, 0.1, 10.0]
    params = _frozen_pretrained_params(
        linear_head={"enabled": True, "c": strengths}, calibration="none"
    )
    classifier = _pretrained_like(params, _n_classes(train))
    before = _backbone_weights(classifier)
    trained = train_classifier(classifier, train, val, params)
    assert [row["c"] for row in trained.history] == strengths
    assert [row["epoch"] for row in trained.history] == [0, 1, 2]
    best = min(trained.history, key=lambda row: row["val_loss"])
    assert best["val_loss"] < trained.history[0]["val_loss"]  # 1e-4 is far too strong
    assert best["val_accuracy"] >= 0.9
    # The saved model is the chosen fit: its validation loss is the history's best row.
    assert _val_log_loss(trained.model, val) == pytest.approx(best["val_loss"], rel=1e-3)
    for old, new in zip(before, _backbone_weights(classifier), strict=True):
        np.testing.assert_array_equal(old, new)


def test_calibration_and_flip_tta_live_in_the_saved_model(splits, tmp_path: Path) -> None:
    train, val = splits
    params = _frozen_pretrained_params(tta="flip", calibration="temperature",
                                       linear_head={"enabled": True, "c": [100.0]})  # fmt: skip
    classifier = _pretrained_like(params, _n_classes(train))
    trained = train_classifier(classifier, train, val, params)
    calibration = trained.calibration
    # Fitted, not left at 1: the validation loss it reaches is at most the uncalibrated one.
    assert calibration.temperature != pytest.approx(1.0, abs=1e-3)
    assert calibration.val_log_loss_after <= calibration.val_log_loss_before
    assert _val_log_loss(trained.model, val) == pytest.approx(
        calibration.val_log_loss_after, rel=1e-3
    )
    layer_names = {layer.name for layer in trained.model.layers}
    assert {"mirror", "tta_mean"} <= layer_names
    images = np.stack([np.asarray(Image.open(f), "float32") / 255 for f in val.files[:4]])
    np.testing.assert_allclose(
        trained.model(images[:, :, ::-1]), trained.model(images), rtol=1e-5, atol=1e-6
    )
    trained.model.save(tmp_path / "model.keras")
    restored = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(restored(images), trained.model(images))


def test_head_probabilities_average_views_like_the_model() -> None:
    features = np.random.default_rng(0).normal(size=(2, 5, 3))  # 2 views, 5 images, 3 features
    kernel, bias = np.ones((3, 1)), np.zeros(1)
    probabilities = head_probabilities(features, kernel, bias, temperature=2.0)
    positive = (1 / (1 + np.exp(-features.sum(axis=2) / 2))).mean(axis=0)
    np.testing.assert_allclose(probabilities, np.stack([1 - positive, positive], axis=1))
    three = head_probabilities(features, np.eye(3), np.zeros(3))
    assert three.shape == (5, 3)
    np.testing.assert_allclose(three.sum(axis=1), 1.0)


def test_read_once_datasets_run_without_autotune(splits) -> None:
    """Inference and feature extraction read a dataset once; autotune would stall its end."""
    from imgclf.model.dataset import image_dataset

    train, _ = splits
    inference = image_dataset(train.files, SIZE, 8)
    training = image_dataset(train.files, SIZE, 8, loss_targets(train.labels, 1), shuffle_seed=0)
    assert inference.options().autotune.enabled is False
    assert training.options().autotune.enabled is not False
    assert sum(len(batch) for batch in inference) == len(train)


def _write_manifests(paths: Paths, classes: list[str]) -> None:
    """Split manifests (paths relative to the root, as split writes them) over fresh images."""
    paths.split_dir.mkdir(parents=True)
    for seed, name in enumerate(("train", "val", "test")):
        folder = paths.root / "images" / name
        folder.mkdir(parents=True)
        split = _write_images(folder, 8, seed, len(classes))
        rows = [
            {"path": str(Path(f).relative_to(paths.root)), "label": classes[label]}
            for f, label in zip(split.files, split.labels, strict=True)
        ]
        write_tsv(paths.split_manifest(name), rows, ("path", "label"))


@pytest.mark.parametrize(
    ("classes", "units"), [(["cat", "dog"], 1), (["cat", "dog", "fox"], 3)], ids=["2", "3"]
)
def test_run_train_writes_the_stage_outputs_into_one_mlflow_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, classes: list[str], units: int
) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    paths = Paths(tmp_path / "project")
    mlflow_params = MlflowParams(artifact_location=str(tmp_path / "mlartifacts"), experiment="t")
    _write_manifests(paths, classes)

    result = run_train(paths, _params(epochs=2), classes, mlflow_params)

    n_images = 8 * len(classes)
    assert (result.train_images, result.val_images) == (n_images, n_images)
    assert all(np.isfinite(row["loss"]) and np.isfinite(row["val_loss"]) for row in result.history)
    assert read_json(paths.mlflow_run) == {"run_id": result.run_id}
    with open(paths.history, newline="") as fh:
        written = list(csv.DictReader(fh))
    assert [float(row["val_loss"]) for row in written] == [r["val_loss"] for r in result.history]
    assert result.best_epoch["val_loss"] == min(r["val_loss"] for r in result.history)
    model = keras.models.load_model(paths.model)
    assert model.output_shape == (None, units)
    files = sorted(str(f) for f in (paths.root / "images" / "test").iterdir())
    probabilities = predict_probabilities(model, files, batch_size=8, desc="")
    assert probabilities.shape == (len(files), len(classes))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    run = MlflowClient(tracking_uri=uri).get_run(result.run_id)
    assert run.data.params["train.arch"] == "small_cnn"
    # Only the sections the run received (Keras' callback adds undotted optimizer_* params).
    sections = {name.split(".")[0] for name in run.data.params if "." in name}
    assert sections == {"download", "train"}
    assert run.data.params["download.classes"] == str(classes)
    assert {"git_commit", "data_version"} <= run.data.tags.keys()
    assert json.loads(run.data.tags["classes"]) == classes
    logged_model = mlflow.models.get_model_info(f"runs:/{result.run_id}/model")
    assert logged_model.metadata == {"classes": classes}
    assert "val_loss" in run.data.metrics
    logged = {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(result.run_id)}
    assert "model" in logged
