"""Training on generated images: it learns, keeps the best epoch, freezes what it should."""

from __future__ import annotations

import csv
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from imgclf.config import FineTuneParams, MlflowParams, Paths, TrainParams
from imgclf.io import read_json, write_tsv
from imgclf.model.architectures.cnn import small_cnn_backbone
from imgclf.model.architectures.factory import Classifier, binary_head, build_classifier
from imgclf.model.dataset import LabelledFiles
from imgclf.model.training import class_weights, run_train, set_seeds, train_classifier

SIZE = 32


def _write_images(folder: Path, n_per_class: int, seed: int) -> LabelledFiles:
    """Class 0: noisy reddish images; class 1: noisy bluish ones. Easy, not trivial."""
    rng = np.random.default_rng(seed)
    files, labels = [], []
    for label in (0, 1):
        for i in range(n_per_class):
            pixels = rng.integers(0, 160, (SIZE, SIZE, 3))
            pixels[..., 0 if label == 0 else 2] += 90
            path = folder / f"{label}_{seed}_{i}.png"
            Image.fromarray(pixels.astype("uint8")).save(path)
            files.append(str(path))
            labels.append(label)
    return LabelledFiles(files, np.array(labels, dtype="int32"))


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> tuple[LabelledFiles, LabelledFiles]:
    folder = tmp_path_factory.mktemp("images")
    return _write_images(folder, 24, seed=1), _write_images(folder, 8, seed=2)


def _params(**overrides: object) -> TrainParams:
    defaults = {"arch": "small_cnn", "image_size": SIZE, "weights": None, "batch_size": 8}
    return TrainParams(**{**defaults, "epochs": 4, "lr": 3e-3, **overrides})


def test_class_weights_balance_unequal_classes() -> None:
    weights = class_weights(np.array([0, 0, 0, 1]), "auto")
    assert weights == pytest.approx({0: 4 / 6, 1: 2.0})
    assert class_weights(np.array([0, 1]), "auto") == {0: 1.0, 1: 1.0}
    assert class_weights(np.array([0, 0, 1]), "none") is None


def test_from_scratch_training_learns_and_keeps_the_best_epoch(splits) -> None:
    train, val = splits
    set_seeds(0)
    classifier = build_classifier(_params())
    history = train_classifier(classifier, train, val, _params())
    assert [row["epoch"] for row in history] == list(range(len(history)))
    assert {"loss", "val_loss", "accuracy", "val_accuracy", "lr"} <= history[0].keys()
    model = classifier.model
    model.compile(loss="binary_crossentropy")
    images = np.stack([np.asarray(Image.open(f), "float32") / 255 for f in val.files])
    val_loss = model.evaluate(images, val.labels.astype("float32"), verbose=0, return_dict=True)[
        "loss"
    ]
    # The weights kept are the best epoch's, not the last one's.
    assert val_loss == pytest.approx(min(row["val_loss"] for row in history), rel=1e-3)
    assert history[-1]["lr"] < history[0]["lr"]  # cosine schedule decays


def _pretrained_like(params: TrainParams) -> Classifier:
    """A small backbone standing in for a pretrained one (no downloads in tests)."""
    backbone = small_cnn_backbone(SIZE, widths=(8, 16))
    head = binary_head(backbone.output_shape[-1], params.dropout)
    inputs = keras.Input((SIZE, SIZE, 3))
    return Classifier(keras.Model(inputs, head(backbone(inputs))), backbone, head)


def _backbone_weights(classifier: Classifier) -> list[np.ndarray]:
    return [np.array(w) for w in classifier.backbone.get_weights()]


def test_cached_feature_training_leaves_the_backbone_untouched(splits) -> None:
    train, val = splits
    params = _params(epochs=3)
    classifier = _pretrained_like(params)
    before = _backbone_weights(classifier)
    train_classifier(classifier, train, val, params)
    for old, new in zip(before, _backbone_weights(classifier), strict=True):
        np.testing.assert_array_equal(old, new)


def test_fine_tuning_changes_only_the_top_of_the_backbone(splits) -> None:
    train, val = splits
    params = _params(epochs=2, fine_tune=FineTuneParams(blocks=2, epochs=2, lr=1e-3))
    classifier = _pretrained_like(params)
    layers = [layer for layer in classifier.backbone.layers if layer.weights]
    before = {layer.name: [np.array(w) for w in layer.get_weights()] for layer in layers}
    history = train_classifier(classifier, train, val, params)
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


def _write_manifests(paths: Paths, classes: list[str]) -> None:
    """Split manifests (paths relative to the root, as split writes them) over fresh images."""
    paths.split_dir.mkdir(parents=True)
    for seed, name in enumerate(("train", "val", "test")):
        folder = paths.root / "images" / name
        folder.mkdir(parents=True)
        split = _write_images(folder, 8, seed)
        rows = [
            {"path": str(Path(f).relative_to(paths.root)), "label": classes[label]}
            for f, label in zip(split.files, split.labels, strict=True)
        ]
        write_tsv(paths.split_manifest(name), rows, ("path", "label"))


def test_run_train_writes_the_stage_outputs_into_one_mlflow_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    paths = Paths(tmp_path / "project")
    mlflow_params = MlflowParams(artifact_location=str(tmp_path / "mlartifacts"), experiment="t")
    classes = ["cat", "dog"]
    _write_manifests(paths, classes)

    result = run_train(paths, _params(epochs=2), classes, mlflow_params)

    assert (result.train_images, result.val_images) == (16, 16)
    assert read_json(paths.mlflow_run) == {"run_id": result.run_id}
    with open(paths.history, newline="") as fh:
        written = list(csv.DictReader(fh))
    assert [float(row["val_loss"]) for row in written] == [r["val_loss"] for r in result.history]
    assert result.best_epoch["val_loss"] == min(r["val_loss"] for r in result.history)
    model = keras.models.load_model(paths.model)
    assert model.output_shape == (None, 1)
    run = MlflowClient(tracking_uri=uri).get_run(result.run_id)
    assert run.data.params["train.arch"] == "small_cnn"
    # Only the sections the run received (Keras' callback adds undotted optimizer_* params).
    sections = {name.split(".")[0] for name in run.data.params if "." in name}
    assert sections == {"download", "train"}
    assert run.data.params["download.classes"] == str(classes)
    assert {"git_commit", "data_version"} <= run.data.tags.keys()
    assert "val_loss" in run.data.metrics
    logged = {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(result.run_id)}
    assert "model" in logged
