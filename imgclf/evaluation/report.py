"""The evaluate stage: predict every split, write DVC metrics and plot data, draw the PNGs, log
to MLflow.

Probabilities come from `imgclf.model.inference.predict_probabilities` (the function batch
prediction uses too) and labels from THE decision rule, `imgclf.model.decision`.

Outputs of `run_evaluate` (all under Paths().evaluate_dir, built atomically):
    predictions.tsv         split, path (relative to the root), label (class name), probability
    test_confusion.csv      actual, predicted (class names), one row per test image
    roc.csv                 fpr, tpr, threshold (test, at most MAX_CURVE_POINTS rows)
    precision_recall.csv    recall, precision, threshold (test, at most MAX_CURVE_POINTS rows)
    roc.png, precision_recall.png, confusion_matrix.png, calibration.png, misclassified.png,
    training_curves.png     (only when artifacts/train/history.csv exists)
and reports/metrics.json: {"test": {...}, "val": {...}, "train": {...}}.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.config import EvaluateParams, MlflowParams, Paths
from imgclf.evaluation import plots
from imgclf.evaluation.metrics import (
    calibration_table,
    compute_metrics,
    flat_metrics,
    precision_recall_points,
    roc_points,
    worst_mistakes,
)
from imgclf.io import atomic_dir, read_json, write_json, write_tsv
from imgclf.model.dataset import LabelledFiles, read_split
from imgclf.model.decision import class_probabilities, predicted_indices
from imgclf.model.inference import load_model, predict_probabilities

SPLITS = ("train", "val", "test")
PREDICTION_COLUMNS = ("split", "path", "label", "probability")
PNG_NAMES = (
    "roc.png",
    "precision_recall.png",
    "confusion_matrix.png",
    "calibration.png",
    "misclassified.png",
    "training_curves.png",
)

# Each split's files and labels with the model's P(class 1) per file.
Predicted = dict[str, tuple[LabelledFiles, np.ndarray]]


@dataclass(frozen=True)
class Curves:
    """The test split's ROC and precision-recall points, for the CSVs DVC plots and the PNGs."""

    roc: list[dict[str, float]]
    precision_recall: list[dict[str, float]]

    @classmethod
    def of(cls, labels: np.ndarray, probabilities: np.ndarray) -> Curves:
        roc = roc_points(labels, probabilities)
        return cls(roc, precision_recall_points(labels, probabilities))


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, dict[str, Any]]  # {"train": {...}, "val": {...}, "test": {...}}
    mlflow_run_id: str | None  # train's run the results were logged into; None: not logged


def run_evaluate(
    paths: Paths,
    classes: Sequence[str],
    params: EvaluateParams,
    mlflow_params: MlflowParams | None = None,
) -> Evaluation:
    """Predict every split with the trained model at paths.model, write artifacts/evaluate/ and
    reports/metrics.json, and (given `mlflow_params`) log them into train's run when
    artifacts/train/mlflow_run.json names one."""
    model = load_model(paths.model)
    results = predict_splits(paths, classes, params.batch_size, model)
    metrics = {
        split: compute_metrics(data.labels, probs, params.threshold, params.calibration_bins)
        for split, (data, probs) in results.items()
    }
    test, test_probabilities = results["test"]
    curves = Curves.of(test.labels, test_probabilities)
    with atomic_dir(paths.evaluate_dir) as out:
        write_predictions(out / paths.predictions.name, results, classes, paths.root)
        write_plot_data(out, test, test_probabilities, curves, classes, params.threshold)
        draw_test_pngs(out, test, test_probabilities, curves, metrics["test"], classes, params)
        plots.plot_training_curves(out / "training_curves.png", paths.history)
    write_json(paths.metrics, metrics)
    if mlflow_params is None or not paths.mlflow_run.is_file():
        return Evaluation(metrics, None)
    run_id = read_json(paths.mlflow_run)["run_id"]
    log_to_mlflow(paths, mlflow_params, metrics, run_id)
    return Evaluation(metrics, run_id)


def predict_splits(paths: Paths, classes: Sequence[str], batch_size: int, model) -> Predicted:
    results = {}
    for split in SPLITS:
        data = read_split(paths.split_manifest(split), classes, paths.root)
        probabilities = predict_probabilities(model, data.files, batch_size, f"evaluate {split}")[
            :, 1
        ]
        results[split] = (data, probabilities)
    return results


def write_predictions(path: Path, results: Predicted, classes: Sequence[str], root: Path) -> None:
    """predictions.tsv: one row per image of every split, paths relative to `root`."""
    write_tsv(
        path,
        (
            {
                "split": split,
                "path": _relative(file, root),
                "label": classes[int(label)],
                "probability": format(float(probability), ".9g"),
            }
            for split, (data, probabilities) in results.items()
            for file, label, probability in zip(data.files, data.labels, probabilities, strict=True)
        ),
        PREDICTION_COLUMNS,
    )


def write_plot_data(
    out: Path,
    test: LabelledFiles,
    probabilities: np.ndarray,
    curves: Curves,
    classes: Sequence[str],
    threshold: float,
) -> None:
    """The CSVs DVC plots read: the test confusion pairs, ROC and precision-recall points."""
    predicted = predicted_indices(class_probabilities(probabilities), threshold)
    write_csv(
        out / "test_confusion.csv",
        [
            {"actual": classes[int(a)], "predicted": classes[int(p)]}
            for a, p in zip(test.labels, predicted, strict=True)
        ],
        ("actual", "predicted"),
    )
    write_csv(out / "roc.csv", curves.roc, ("fpr", "tpr", "threshold"))
    write_csv(
        out / "precision_recall.csv",
        curves.precision_recall,
        ("recall", "precision", "threshold"),
    )


def draw_test_pngs(
    out: Path,
    test: LabelledFiles,
    probabilities: np.ndarray,
    curves: Curves,
    metrics: Mapping[str, Any],
    classes: Sequence[str],
    params: EvaluateParams,
) -> None:
    """ROC, precision-recall, confusion matrix, calibration and worst-mistakes PNGs of the test
    split (a message PNG where a plot is undefined)."""
    plots.plot_roc(out / "roc.png", curves.roc, metrics.get("roc_auc"))
    plots.plot_precision_recall(out / "precision_recall.png", curves.precision_recall, classes[1])
    if metrics["n"]:
        plots.plot_confusion(out / "confusion_matrix.png", metrics, classes)
        bins = params.calibration_bins
        table = calibration_table(test.labels, probabilities, bins)
        plots.plot_calibration(out / "calibration.png", table, metrics["ece"], classes[1], bins)
    else:
        for name in ("confusion_matrix.png", "calibration.png"):
            plots.message_png(out / name, name.removesuffix(".png"), "the test split is empty")
    grid = params.misclassified_grid
    picked = worst_mistakes(test.labels, probabilities, params.threshold, grid)
    plots.plot_misclassified(
        out / "misclassified.png", test.files, test.labels, probabilities, picked, classes, grid
    )


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """A comma-separated file with a header (DVC plots read these)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _csv_value(row[c]) for c in columns})


def _csv_value(value: Any) -> Any:
    return format(value, ".9g") if isinstance(value, float) else value


def _relative(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(os.path.relpath(path, root)).as_posix()


def log_to_mlflow(
    paths: Paths, params: MlflowParams, metrics: Mapping[str, Mapping[str, Any]], run_id: str
) -> None:
    """Log `{split}_{metric}` values and the PNGs + metrics.json into train's run `run_id`."""
    import mlflow

    from imgclf.tracking import open_run

    # Logged one step after the last epoch: Keras logs a per-epoch `val_accuracy` too, and MLflow
    # shows a metric's latest step, which must be the evaluation of the kept (best) weights.
    epochs = len(paths.history.read_text().splitlines()) - 1 if paths.history.is_file() else 0
    with open_run(params, paths.root, run_id=run_id):
        mlflow.log_metrics(flat_metrics(metrics), step=max(epochs, 0))
        for name in PNG_NAMES:
            if (paths.evaluate_dir / name).is_file():
                mlflow.log_artifact(str(paths.evaluate_dir / name), artifact_path="evaluate")
        if paths.metrics.is_file():
            mlflow.log_artifact(str(paths.metrics), artifact_path="evaluate")
