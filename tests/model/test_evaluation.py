"""Evaluate stage: binary metrics computed by hand, plot data, PNGs, the stage outputs for two and
for three classes, MLflow logging. (Metrics for any K against scikit-learn: tests/unit/
test_metrics.py; the PNGs at K = 50: tests/unit/test_plots.py.)"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.config import EvaluateParams, ExportParams, MlflowParams, Paths
from imgclf.evaluation.metrics import (
    MAX_CURVE_POINTS,
    calibration_table,
    compute_metrics,
    expected_calibration_error,
    flat_metrics,
    precision_recall_points,
    roc_points,
    worst_mistakes,
)
from imgclf.evaluation.plots import plot_misclassified
from imgclf.evaluation.report import prediction_columns, run_evaluate
from imgclf.io import read_json, read_tsv, write_json, write_tsv
from imgclf.model.decision import class_probabilities
from imgclf.model.export import run_export
from imgclf.model.inference import load_model, predict_probabilities
from tests.support.helpers import tiny_model

CLASSES = ["cat", "dog"]
THREE = ["cat", "dog", "fox"]
PNGS = (
    "roc",
    "precision_recall",
    "confusion_matrix",
    "per_class_f1",
    "calibration",
    "misclassified",
)
TABLES = ("confusion_matrix.json", "confused_pairs.csv")
AVERAGED = {f"{a}_{n}" for a in ("macro", "weighted") for n in ("precision", "recall", "f1")}


def write_image(path: Path, seed: int, brightness: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(brightness, 40, (40, 48, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, "JPEG")


def csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


# --------------------------------------------------------------------------------------------
# Metrics by hand
# --------------------------------------------------------------------------------------------

LABELS = np.array([0, 0, 1, 1, 1, 0])
PROBS = np.array([0.1, 0.6, 0.8, 0.4, 0.9, 0.2])  # P(dog)


def binary_metrics(labels: np.ndarray, positive: np.ndarray, threshold: float, bins: int) -> dict:
    probabilities = class_probabilities(positive)
    return compute_metrics(labels, probabilities, threshold, bins, top_k=3)


def test_metrics_match_hand_computation() -> None:
    m = binary_metrics(LABELS, PROBS, threshold=0.5, bins=2)
    # predicted 0 1 1 0 1 0 -> tn 2 (0.1, 0.2), fp 1 (0.6), fn 1 (0.4), tp 2 (0.8, 0.9)
    assert (m["tn"], m["fp"], m["fn"], m["tp"], m["n"]) == (2, 1, 1, 2, 6)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    # positive > negative in 8 of 9 pairs (only 0.4 < 0.6 fails)
    assert m["roc_auc"] == pytest.approx(8 / 9)
    expected_loss = -np.mean(np.log([0.9, 0.4, 0.8, 0.4, 0.9, 0.8]))
    assert m["log_loss"] == pytest.approx(expected_loss)
    # bin [0, .5): p .1 .4 .2 (mean .2333), 1 of 3 positive -> gap .1; bin [.5, 1]: p .6 .8 .9
    # (mean .7667), 2 of 3 positive -> gap .1; ECE = .5 × .1 + .5 × .1
    assert m["ece"] == pytest.approx(0.1)
    assert m["threshold"] == 0.5


def test_threshold_moves_the_confusion_matrix() -> None:
    m = binary_metrics(LABELS, PROBS, threshold=0.7, bins=2)
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (3, 0, 1, 2)
    assert m["precision"] == pytest.approx(1.0)


def test_ece_known_cases() -> None:
    # a quarter of the items are positive and every item says 0.25: perfectly calibrated
    assert expected_calibration_error(np.array([1, 0, 0, 0]), np.full(4, 0.25), 10) == 0
    # always 0.9, never positive: ECE 0.9
    assert expected_calibration_error(np.zeros(5), np.full(5, 0.9), 15) == pytest.approx(0.9)
    # half the items in each bin, gaps .3 and .1 -> .2
    labels, probs = np.array([0, 0, 1, 1]), np.array([0.3, 0.3, 0.9, 0.9])
    assert expected_calibration_error(labels, probs, 2) == pytest.approx(0.5 * 0.3 + 0.5 * 0.1)
    # P = 1.0 falls in the last bin, not past it
    table = calibration_table(np.array([1]), np.array([1.0]), 4)
    assert [(r["lower"], r["upper"], r["count"]) for r in table] == [(0.75, 1.0, 1)]


def test_single_class_split_has_no_auc_and_no_curves() -> None:
    m = binary_metrics(np.ones(3), np.array([0.9, 0.8, 0.2]), 0.5, 15)
    assert m["roc_auc"] is None and m["tp"] == 2 and m["fn"] == 1
    assert roc_points(np.ones(3), np.array([0.9, 0.8, 0.2])) == []
    assert "test_roc_auc" not in flat_metrics({"test": m})
    assert flat_metrics({"test": m})["test_accuracy"] == pytest.approx(2 / 3)


def test_curves_are_downsampled_and_keep_their_ends() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 5000)
    probs = np.clip(labels * 0.3 + rng.random(5000) * 0.7, 0, 1)
    roc = roc_points(labels, probs)
    pr = precision_recall_points(labels, probs)
    assert 50 < len(roc) <= MAX_CURVE_POINTS and 50 < len(pr) <= MAX_CURVE_POINTS
    assert set(roc[0]) == {"fpr", "tpr", "threshold"}
    assert set(pr[0]) == {"recall", "precision", "threshold"}
    assert (roc[0]["fpr"], roc[0]["tpr"]) == (0.0, 0.0)
    assert (roc[-1]["fpr"], roc[-1]["tpr"]) == (1.0, 1.0)
    assert pr[0]["recall"] == 1.0
    fprs = [r["fpr"] for r in roc]
    assert fprs == sorted(fprs)


def test_worst_mistakes_are_the_most_confident_wrong_ones() -> None:
    labels = np.array([1, 0, 1, 0, 1, 0, 1])
    probs = class_probabilities(np.array([0.45, 0.55, 0.02, 0.99, 0.9, 0.1, 0.3]))
    # wrong: 0 (err .55), 1 (.55), 2 (.98), 3 (.99), 6 (.7)
    assert worst_mistakes(labels, probs, 0.5, 3) == [3, 2, 6]
    assert worst_mistakes(labels, probs, 0.5, 10) == [3, 2, 6, 0, 1]
    assert worst_mistakes(labels, probs, 0.5, 0) == []
    assert worst_mistakes(np.array([0, 1]), class_probabilities([0.1, 0.9]), 0.5, 4) == []


def test_misclassified_png_says_no_mistakes(tmp_path: Path) -> None:
    out = tmp_path / "m.png"
    plot_misclassified(out, [], 16)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 100


# --------------------------------------------------------------------------------------------
# The stage on generated images and a tiny model
# --------------------------------------------------------------------------------------------


def make_project(root: Path, per_split: dict[str, int], classes: list[str] = CLASSES) -> Paths:
    """Split manifests and classes.json over generated JPEGs (the classes in turn, each
    brighter than the one before: dark cats, bright dogs) and a history.csv."""
    paths = Paths(root)
    paths.split_dir.mkdir(parents=True)
    write_json(paths.split_classes, classes)  # as the split stage records the class list
    seed = 0
    for split, count in per_split.items():
        rows = []
        for i in range(count):
            index = i % len(classes)
            label = classes[index]
            rel = f"artifacts/download/images/{label}/{split}{i}.jpg"
            write_image(root / rel, seed, 70 + 110 * index // (len(classes) - 1))
            seed += 1
            rows.append({"path": rel, "label": label, "group": rel, "sha256": "x"})
        write_tsv(paths.split_manifest(split), rows, ("path", "label", "group", "sha256"))
    paths.train_dir.mkdir(parents=True)
    history = [
        {"epoch": e, "loss": 1 / (e + 1), "val_loss": 1.2 / (e + 1), "accuracy": 0.5 + e / 10}
        | {"val_accuracy": 0.5 + e / 12, "lr": 1e-3 / (e + 1)}
        for e in range(4)
    ]
    with open(paths.history, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    return paths


def exported(paths: Paths, model, classes: list[str]) -> None:
    """What train and export leave for evaluate: the Keras model and its LiteRT engine."""
    model.save(paths.model)
    run_export(paths, ExportParams(check_images=4), classes)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Paths, dict]:
    root = tmp_path_factory.mktemp("project")
    paths = make_project(root, {"train": 8, "val": 6, "test": 10})
    exported(paths, tiny_model(), CLASSES)
    params = EvaluateParams(batch_size=4, misclassified_grid=3, calibration_bins=5)
    metrics = run_evaluate(paths, CLASSES, params).metrics
    return paths, metrics


def test_stage_writes_predictions_and_metrics(evaluated: tuple[Paths, dict]) -> None:
    paths, metrics = evaluated
    rows = read_tsv(paths.predictions)
    assert list(rows[0]) == [
        "split",
        "path",
        "label",
        "probability",
        "predicted",
        "confidence",
        "p_cat",
        "p_dog",
    ]
    assert list(rows[0]) == prediction_columns(CLASSES)
    assert [r["split"] for r in rows] == ["train"] * 8 + ["val"] * 6 + ["test"] * 10
    assert rows[0]["path"] == "artifacts/download/images/cat/train0.jpg"
    assert {r["label"] for r in rows} == set(CLASSES)
    probs = [float(r["probability"]) for r in rows]
    assert all(0 <= p <= 1 for p in probs) and len(set(probs)) > 1
    for row, p in zip(rows, probs, strict=True):
        assert float(row["p_dog"]) == p
        assert float(row["p_cat"]) == pytest.approx(1 - p, abs=1e-6)
        assert row["predicted"] == ("dog" if p >= 0.5 else "cat")
        assert float(row["confidence"]) == pytest.approx(max(p, 1 - p), abs=1e-6)

    report = read_json(paths.metrics)
    assert set(report) == {"train", "val", "test"}
    assert report == json.loads(json.dumps(metrics))
    expected_keys = {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "ece"}
    expected_keys |= {"tn", "fp", "fn", "tp", "n", "threshold", "per_class"} | AVERAGED
    assert set(report["test"]) == expected_keys
    assert report["test"]["n"] == 10 and report["val"]["n"] == 6
    # the metrics are the ones of the written probabilities
    test = [r for r in read_tsv(paths.predictions) if r["split"] == "test"]
    labels = np.array([CLASSES.index(r["label"]) for r in test])
    again = binary_metrics(labels, np.array([float(r["probability"]) for r in test]), 0.5, 5)
    assert again["accuracy"] == pytest.approx(report["test"]["accuracy"])
    assert again["log_loss"] == pytest.approx(report["test"]["log_loss"], abs=1e-6)


def test_stage_writes_plot_data(evaluated: tuple[Paths, dict]) -> None:
    paths, metrics = evaluated
    out = paths.evaluate_dir
    columns, rows = csv_rows(out / "test_confusion.csv")
    assert columns == ["actual", "predicted"] and len(rows) == 10
    assert {r["actual"] for r in rows} == set(CLASSES)
    test = metrics["test"]
    dogs_predicted = sum(r["predicted"] == "dog" for r in rows)
    assert dogs_predicted == test["tp"] + test["fp"]
    columns, rows = csv_rows(out / "roc.csv")
    assert columns == ["fpr", "tpr", "threshold"] and 2 <= len(rows) <= MAX_CURVE_POINTS
    assert all(0 <= float(r["fpr"]) <= 1 for r in rows)
    columns, rows = csv_rows(out / "precision_recall.csv")
    assert columns == ["recall", "precision", "threshold"] and len(rows) >= 1
    for name in (*PNGS, "training_curves"):
        with Image.open(out / f"{name}.png") as image:
            assert image.format == "PNG" and image.width > 100, name


def test_stage_writes_the_class_tables(evaluated: tuple[Paths, dict]) -> None:
    paths, metrics = evaluated
    out = paths.evaluate_dir
    confusion = read_json(out / "confusion_matrix.json")
    assert confusion["classes"] == CLASSES and set(confusion["splits"]) == {"train", "val", "test"}
    test = metrics["test"]
    assert confusion["splits"]["test"]["counts"] == [
        [test["tn"], test["fp"]],
        [test["fn"], test["tp"]],
    ]
    dog = test["per_class"]["dog"]
    assert (dog["precision"], dog["recall"], dog["f1"]) == (
        test["precision"],
        test["recall"],
        test["f1"],
    )
    assert dog["support"] == test["tp"] + test["fn"] == 5
    assert set(metrics["val"]["per_class"]) == set(CLASSES)
    columns, rows = csv_rows(out / "confused_pairs.csv")
    assert columns == ["split", "actual", "predicted", "count", "share"]
    test_pairs = {(r["actual"], int(r["count"])) for r in rows if r["split"] == "test"}
    assert test_pairs == {(a, n) for a, n in (("cat", test["fp"]), ("dog", test["fn"])) if n}


def test_misclassified_grid_shows_the_worst(evaluated: tuple[Paths, dict]) -> None:
    paths, metrics = evaluated
    wrong = metrics["test"]["fp"] + metrics["test"]["fn"]
    test = [r for r in read_tsv(paths.predictions) if r["split"] == "test"]
    labels = np.array([CLASSES.index(r["label"]) for r in test])
    positive = np.array([float(r["probability"]) for r in test])
    picked = worst_mistakes(labels, class_probabilities(positive), 0.5, 3)
    assert len(picked) == min(3, wrong)


@pytest.fixture(scope="module")
def evaluated_three(tmp_path_factory: pytest.TempPathFactory) -> tuple[Paths, dict]:
    root = tmp_path_factory.mktemp("three")
    paths = make_project(root, {"train": 6, "val": 3, "test": 12}, THREE)
    exported(paths, tiny_model(classes=3), THREE)
    params = EvaluateParams(batch_size=4, misclassified_grid=4, calibration_bins=5, top_k=2)
    return paths, run_evaluate(paths, THREE, params).metrics


def test_three_classes_predictions_have_a_column_per_class(
    evaluated_three: tuple[Paths, dict],
) -> None:
    paths, _ = evaluated_three
    rows = read_tsv(paths.predictions)
    columns = ["split", "path", "label", "predicted", "confidence", "p_cat", "p_dog", "p_fox"]
    assert list(rows[0]) == columns == prediction_columns(THREE)
    assert len(rows) == 21 and {r["label"] for r in rows} == set(THREE)
    for row in rows:
        probabilities = np.array([float(row[f"p_{name}"]) for name in THREE])
        assert probabilities.sum() == pytest.approx(1, abs=1e-6)
        assert row["predicted"] == THREE[int(np.argmax(probabilities))]
        assert float(row["confidence"]) == probabilities.max()


def test_three_classes_metrics_and_tables(evaluated_three: tuple[Paths, dict]) -> None:
    paths, metrics = evaluated_three
    report = read_json(paths.metrics)
    assert report == json.loads(json.dumps(metrics))
    scalars = {"n", "accuracy", "top_2_accuracy", "log_loss", "roc_auc", "ece"} | AVERAGED
    assert set(report["test"]) == scalars | {"per_class"}
    assert all(isinstance(report["test"][k], int | float) for k in scalars)  # gate-comparable
    test = [r for r in read_tsv(paths.predictions) if r["split"] == "test"]
    right = sum(r["label"] == r["predicted"] for r in test)
    assert report["test"]["accuracy"] == pytest.approx(right / 12)

    out = paths.evaluate_dir
    confusion = read_json(out / "confusion_matrix.json")
    counts = np.array(confusion["splits"]["test"]["counts"])
    assert counts.shape == (3, 3) and counts.trace() == right
    np.testing.assert_array_equal(counts.sum(axis=1), [4, 4, 4])
    np.testing.assert_allclose(confusion["splits"]["test"]["row_normalised"], counts / 4)
    per_class = report["test"]["per_class"]
    assert list(per_class) == THREE and [c["support"] for c in per_class.values()] == [4, 4, 4]
    assert [c["recall"] for c in per_class.values()] == pytest.approx(counts.diagonal() / 4)
    _, pairs = csv_rows(out / "confused_pairs.csv")
    assert sum(int(r["count"]) for r in pairs if r["split"] == "test") == 12 - right
    _, confusion_rows = csv_rows(out / "test_confusion.csv")
    assert [r["predicted"] for r in confusion_rows] == [r["predicted"] for r in test]
    _, roc = csv_rows(out / "roc.csv")  # the micro average: still a curve from (0, 0) to (1, 1)
    assert (float(roc[0]["fpr"]), float(roc[-1]["tpr"])) == (0.0, 1.0)
    for name in (*PNGS, "training_curves"):
        with Image.open(out / f"{name}.png") as image:
            assert image.format == "PNG" and image.width > 100, name


def test_a_model_with_another_number_of_classes_is_refused(tmp_path: Path) -> None:
    paths = make_project(tmp_path, {"train": 2, "val": 2, "test": 2})
    exported(paths, tiny_model(classes=3), CLASSES)
    with pytest.raises(ValueError, match="gives 3 class probabilities for 2 classes"):
        run_evaluate(paths, CLASSES, EvaluateParams(batch_size=4))
    assert not paths.metrics.exists()


def test_predict_probabilities_batches_match_single_images(
    evaluated: tuple[Paths, dict],
) -> None:
    paths, _ = evaluated
    model = load_model(paths.model)
    files = sorted(str(p) for p in (paths.root / "artifacts/download/images").rglob("*.jpg"))[:5]
    together = predict_probabilities(model, files, batch_size=5, desc="")
    one_by_one = [predict_probabilities(model, [f], batch_size=1, desc="")[0] for f in files]
    np.testing.assert_allclose(together, one_by_one, atol=1e-6)
    assert predict_probabilities(model, [], 4).shape == (0, 2)


def test_stage_logs_into_the_train_run(
    evaluated: tuple[Paths, dict],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`python -m stages.evaluate` against a sqlite store: metrics and PNGs go into the run
    named in artifacts/train/mlflow_run.json, and no other run appears."""
    from mlflow.tracking import MlflowClient

    import stages.evaluate
    from imgclf.config import load_params
    from imgclf.tracking import open_run

    paths, metrics = evaluated
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    settings = MlflowParams(artifact_location=str(tmp_path / "mlartifacts"), experiment="t")
    with open_run(settings, paths.root, run_name="train") as run:
        run_id = run.info.run_id
    write_json(paths.mlflow_run, {"run_id": run_id})
    params = load_params().model_copy(
        update={
            "evaluate": EvaluateParams(batch_size=4, misclassified_grid=3, calibration_bins=5),
            "mlflow": settings,
        }
    )
    monkeypatch.setattr(stages.evaluate, "load_params", lambda: params)
    monkeypatch.setattr(stages.evaluate, "Paths", lambda: paths)

    stages.evaluate.main()

    summary = capsys.readouterr().out
    assert f"accuracy {metrics['test']['accuracy']:.4f}" in summary and "AUC" in summary
    client = MlflowClient(tracking_uri=uri)
    logged = client.get_run(run_id).data.metrics
    assert logged["test_accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert logged["val_f1"] == pytest.approx(metrics["val"]["f1"])
    assert logged["train_tp"] == metrics["train"]["tp"]
    assert math.isclose(logged["test_ece"], metrics["test"]["ece"], rel_tol=1e-6)
    assert len(client.search_runs([run.info.experiment_id])) == 1  # no second run
    names = {Path(a.path).name for a in client.list_artifacts(run_id, "evaluate")}
    assert {f"{n}.png" for n in PNGS} | {"training_curves.png", "metrics.json"} <= names
    assert set(TABLES) <= names


def test_model_uris_load_through_mlflow(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import mlflow.keras

    seen = []
    monkeypatch.setattr(mlflow.keras, "load_model", lambda uri: seen.append(uri) or "model")
    assert load_model("models:/imgclf@champion") == "model"
    assert load_model("runs:/abc/model") == "model"
    assert seen == ["models:/imgclf@champion", "runs:/abc/model"]
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.keras")
