"""The export stage: a trained model converted to LiteRT or ONNX Runtime answers what Keras answers
on real photos, for two classes and for K, and the engines serve any batch size; at reduced
precision (float16, int8) the engine is smaller and keeps the labels of clear cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from imgclf.config import ExportParams, Paths
from imgclf.io import read_json, write_tsv
from imgclf.model.decision import class_probabilities, predicted_indices
from imgclf.model.engines import ENGINE_FILES, KerasEngine, load_engine
from imgclf.model.export import exported_engine, run_export
from imgclf.model.preprocess import load_images
from tests.support.helpers import tiny_model

PHOTOS = 12


def project(root: Path, photos: Path, classes: list[str]) -> Paths:
    """A val split of real photos (labels in turn) and a classes.json, as split leaves them."""
    paths = Paths(root)
    paths.split_dir.mkdir(parents=True)
    files = sorted((photos / "cat").glob("*.jpg"))[: PHOTOS // 2]
    files += sorted((photos / "dog").glob("*.jpg"))[: PHOTOS // 2]
    rows = [{"path": str(f), "label": classes[i % len(classes)]} for i, f in enumerate(files)]
    write_tsv(paths.split_manifest("val"), rows, ("path", "label"))
    paths.split_classes.write_text(json.dumps(classes))
    paths.train_dir.mkdir(parents=True)
    return paths


@pytest.mark.parametrize(
    ("engine", "classes"),
    [("litert", ["cat", "dog"]), ("onnx", ["cat", "dog"]), ("litert", ["a", "b", "c"])],
)
def test_the_exported_engine_agrees_with_keras_on_real_photos(
    tmp_path: Path, sample_data_dir: Path, engine: str, classes: list[str]
) -> None:
    paths = project(tmp_path, sample_data_dir, classes)
    model = tiny_model(size=64, classes=len(classes))
    model.save(paths.model)

    report = run_export(paths, ExportParams(engine=engine, check_images=PHOTOS), classes)

    assert report == read_json(paths.export_report)
    assert (report["engine"], report["file"], report["images"]) == (
        engine,
        ENGINE_FILES[engine],
        PHOTOS,
    )
    assert report["passed"] and report["flipped"] == 0 and report["max_abs_diff"] < 1e-5
    assert sorted(p.name for p in paths.export_dir.iterdir()) == [ENGINE_FILES[engine]]
    exported = exported_engine(paths)
    assert (exported.kind, exported.image_size, exported.outputs) == (
        engine,
        64,
        1 if len(classes) == 2 else 3,
    )


@pytest.mark.parametrize("engine", ["litert", "onnx"])
def test_an_engine_answers_any_batch_size_like_keras(
    tmp_path: Path, sample_data_dir: Path, engine: str
) -> None:
    paths = project(tmp_path, sample_data_dir, ["cat", "dog"])
    model = tiny_model(size=64, classes=4)
    model.save(paths.model)
    run_export(paths, ExportParams(engine=engine, check_images=2), ["cat", "dog"])
    exported = load_engine(paths.export_dir / ENGINE_FILES[engine])
    files = sorted(str(f) for f in (sample_data_dir / "dog").glob("*.jpg"))[:7]
    images = load_images(files, 64)
    keras_says = class_probabilities(KerasEngine(model)(images))
    for size in (7, 1, 3, 7):  # the LiteRT interpreter is resized on each change
        np.testing.assert_allclose(exported(images[:size]), keras_says[:size], atol=1e-5)


def test_a_file_that_is_not_an_engine_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an exported engine"):
        load_engine(tmp_path / "model.keras")
    with pytest.raises(FileNotFoundError, match="no exported engine"):
        load_engine(tmp_path / "model.onnx")


def quantisable_model(images: np.ndarray):
    """A two-class model with weight tensors of over 1024 values (the smallest LiteRT
    quantises) and a wide final layer centred on `images`: half of them on each side of the
    threshold, most far from it."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input(images.shape[1:])
    x = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
    x = keras.layers.Conv2D(32, 3, activation="relu")(x)  # 4608 weights
    x = keras.layers.GlobalAveragePooling2D()(x)
    features = keras.layers.Dense(64, activation="relu")(x)  # 2048 weights
    wide = keras.initializers.RandomNormal(stddev=3.0)
    head = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=wide)
    model = keras.Model(inputs, head(features))
    kernel, _ = head.get_weights()
    logits = keras.Model(inputs, features)(images).numpy() @ kernel
    head.set_weights([kernel, -np.median(logits, axis=0)])
    return model


@pytest.mark.parametrize(
    ("engine", "precision"), [("litert", "float16"), ("litert", "int8"), ("onnx", "int8")]
)
def test_a_reduced_precision_engine_is_smaller_and_keeps_clear_labels(
    tmp_path: Path, sample_data_dir: Path, engine: str, precision: str
) -> None:
    classes = ["cat", "dog"]
    files = sorted(str(f) for f in (sample_data_dir / "dog").glob("*.jpg"))[:20]
    files += sorted(str(f) for f in (sample_data_dir / "cat").glob("*.jpg"))[:20]
    images = load_images(files, 64)
    model = quantisable_model(images)
    sizes = {}
    for exported_precision in ("float32", precision):
        paths = project(tmp_path / exported_precision, sample_data_dir, classes)
        model.save(paths.model)
        params = ExportParams(engine=engine, precision=exported_precision, check_images=PHOTOS)
        report = run_export(paths, params, classes)
        sizes[exported_precision] = report["bytes"]

    assert sizes[precision] < 0.7 * sizes["float32"]
    assert (report["precision"], report["max_metric_drop"]) == (precision, 0.001)
    assert report["passed"] is None  # the agreement check is reported, not the gate
    keras_says = class_probabilities(KerasEngine(model)(images))
    engine_says = class_probabilities(exported_engine(paths)(images))
    difference = np.abs(engine_says - keras_says)
    assert 1e-6 < difference.max() < 0.05  # weights changed, answers barely
    clear = np.abs(keras_says[:, 1] - 0.5) > 0.1  # far from the threshold, on both sides
    assert clear.sum() >= 20 and set(predicted_indices(keras_says[clear], 0.5)) == {0, 1}
    np.testing.assert_array_equal(
        predicted_indices(engine_says[clear], 0.5), predicted_indices(keras_says[clear], 0.5)
    )


def test_onnx_float16_is_refused_at_params_validation() -> None:
    with pytest.raises(ValidationError, match=r"export\.precision float16 needs engine litert"):
        ExportParams(engine="onnx", precision="float16")
    assert ExportParams(engine="onnx", precision="int8").precision == "int8"
