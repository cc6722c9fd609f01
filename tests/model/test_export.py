"""The export stage: a trained model converted to LiteRT or ONNX Runtime answers what Keras answers
on real photos, for two classes and for K, and the engines serve any batch size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imgclf.config import ExportParams, Paths
from imgclf.io import read_json, write_tsv
from imgclf.model.decision import class_probabilities
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
