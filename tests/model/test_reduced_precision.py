"""A reduced-precision engine through evaluate, the register gate's engine check and the model
card: evaluate runs the float Keras model on the test split beside the engine, the gate compares
the two on `register.metric`, the card shows both."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imgclf.config import EvaluateParams, ExportParams, Paths, RegisterParams
from imgclf.evaluation.report import run_evaluate
from imgclf.io import read_json, read_tsv
from imgclf.model.decision import predicted_indices
from imgclf.model.export import run_export
from imgclf.model.inference import load_model, predict_probabilities
from imgclf.model.preprocess import load_images
from imgclf.registry.card import model_card
from imgclf.registry.gate import engine_problem
from tests.model.test_evaluation import CLASSES, make_project
from tests.model.test_export import quantisable_model
from tests.unit.test_model_card import fake_run

SIZE = 32
PARAMS = EvaluateParams(batch_size=4, misclassified_grid=2, calibration_bins=5)


def evaluated(root: Path, precision: str) -> tuple[Paths, dict]:
    """The generated project exported at `precision` and evaluated."""
    paths = make_project(root, {"train": 4, "val": 4, "test": 12})
    test_files = [str(root / row["path"]) for row in read_tsv(paths.split_manifest("test"))]
    quantisable_model(load_images(test_files, SIZE)).save(paths.model)
    run_export(paths, ExportParams(precision=precision, check_images=4), CLASSES)
    return paths, run_evaluate(paths, CLASSES, PARAMS).metrics


@pytest.fixture(scope="module")
def int8(tmp_path_factory: pytest.TempPathFactory) -> tuple[Paths, dict]:
    return evaluated(tmp_path_factory.mktemp("int8"), "int8")


def test_evaluate_measures_the_float_model_on_test_beside_a_reduced_engine(
    int8: tuple[Paths, dict],
) -> None:
    paths, metrics = int8
    assert read_json(paths.metrics) == metrics
    check = metrics["reduced_precision"]
    assert (check["engine"], check["precision"]) == ("litert", "int8")
    test_scalars = {k for k, v in metrics["test"].items() if not isinstance(v, dict)}
    assert set(check["float32_test"]) == test_scalars
    files = [str(paths.root / row["path"]) for row in read_tsv(paths.split_manifest("test"))]
    keras_says = predict_probabilities(load_model(paths.model), files, 4)
    predicted = predicted_indices(keras_says, PARAMS.threshold)
    keras_accuracy = np.mean(predicted == np.arange(len(files)) % 2)  # cat, dog in turn
    assert check["float32_test"]["accuracy"] == pytest.approx(keras_accuracy)
    assert check["float32_test"]["log_loss"] != metrics["test"]["log_loss"]  # int8 numbers


def test_a_float32_engine_adds_no_float_model_block(tmp_path: Path) -> None:
    _, metrics = evaluated(tmp_path, "float32")
    assert set(metrics) == {"train", "val", "test"}


def test_the_gate_and_the_card_read_the_engine_and_float_metrics(int8: tuple[Paths, dict]) -> None:
    paths, metrics = int8
    export = read_json(paths.export_report)  # its max_metric_drop: 0.001
    float32 = metrics["reduced_precision"]["float32_test"]["accuracy"]
    for engine, refused in ((float32, False), (float32 - 0.001, False), (float32 - 0.002, True)):
        scored = metrics | {"test": metrics["test"] | {"accuracy": engine}}
        assert (engine_problem(export, scored, RegisterParams()) is not None) == refused
    engine = metrics["test"]["accuracy"]
    card = model_card("m", "1", fake_run(), metrics, None, RegisterParams(), CLASSES)
    assert (
        f"| Engine precision | int8 (litert): test accuracy {engine:.4f}, float32 model "
        f"{float32:.4f}, drop {float32 - engine:.4f} |"
    ) in card
