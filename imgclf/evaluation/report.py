"""The evaluate stage: predict every split, write DVC metrics and plot data, draw the PNGs, log
to MLflow. Any number of classes K >= 2; two classes keep the binary outputs.

Probabilities come from `imgclf.model.inference.predict_probabilities` (the function batch
prediction uses too), an (n, K) matrix in the model's class order, and labels from THE
decision rule, `imgclf.model.decision`.

Outputs of `run_evaluate` (all under Paths().evaluate_dir, built atomically):
    predictions.tsv         split, path (relative to the root), label (class name),
                            [probability: P(second class), two classes only], predicted,
                            confidence (probability of the predicted class), p_<class> per class
    confusion_matrix.json   {"classes": [...], "splits": {split: {"counts", "row_normalised"}}}
    confused_pairs.csv      split, actual, predicted, count, share (of the actual class): the
                            most frequent mistakes, at most MAX_CONFUSED_PAIRS per split
    test_confusion.csv      actual, predicted (class names), one row per test image
    roc.csv                 fpr, tpr, threshold (test, at most MAX_CURVE_POINTS rows)
    precision_recall.csv    recall, precision, threshold (test, at most MAX_CURVE_POINTS rows)
    roc.png, precision_recall.png, confusion_matrix.png, per_class_f1.png, calibration.png,
    misclassified.png, training_curves.png (only when artifacts/train/history.csv exists)
and reports/metrics.json: {"test": {...}, "val": {...}, "train": {...}}, each split's scalars
top-level (`compute_metrics`: the registry gate can compare any of them) and, for a split with
images, its `per_class` table {class: {precision, recall, f1, support}}, which `flat_metrics`
leaves out of MLflow's metrics. Curves and calibration are of the second class for two
classes; for more, the curves are the one-vs-rest micro average and calibration is of the top
class. An engine exported at reduced precision adds "reduced_precision": {"engine",
"precision", "float32_test": the float Keras model's test scalars}, which the register gate
compares the engine's test metric with.
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
    calibration_inputs,
    calibration_table,
    compute_metrics,
    confused_pairs,
    confusion_counts,
    curve_auc,
    curve_inputs,
    flat_metrics,
    per_class_table,
    precision_recall_points,
    roc_points,
    row_normalised,
    worst_mistakes,
)
from imgclf.io import atomic_dir, read_json, write_json, write_tsv
from imgclf.model.dataset import LabelledFiles, read_split
from imgclf.model.decision import confidences, predicted_indices
from imgclf.model.engines import KerasEngine
from imgclf.model.export import exported_engine
from imgclf.model.inference import load_model, predict_probabilities

SPLITS = ("train", "val", "test")
PNG_NAMES = (
    "roc.png",
    "precision_recall.png",
    "confusion_matrix.png",
    "per_class_f1.png",
    "calibration.png",
    "misclassified.png",
    "training_curves.png",
)
TABLE_NAMES = ("confusion_matrix.json", "confused_pairs.csv")


@dataclass(frozen=True)
class SplitPredictions:
    """One split's files and labels, the model's (n, K) class probabilities and THE decision
    rule's answers."""

    data: LabelledFiles
    probabilities: np.ndarray
    predicted: np.ndarray  # class index per image
    confidence: np.ndarray  # probability of the predicted class

    @classmethod
    def of(
        cls, data: LabelledFiles, probabilities: np.ndarray, threshold: float
    ) -> SplitPredictions:
        predicted = predicted_indices(probabilities, threshold)
        return cls(data, probabilities, predicted, confidences(probabilities, threshold))


Predicted = dict[str, SplitPredictions]


@dataclass(frozen=True)
class ClassTables:
    """One non-empty split's per-class table and K×K confusion counts (row = actual class)."""

    per_class: dict[str, dict[str, float | int]]
    counts: np.ndarray

    @classmethod
    def of(cls, result: SplitPredictions, classes: Sequence[str]) -> ClassTables:
        labels, predicted = result.data.labels, result.predicted
        return cls(
            per_class_table(labels, predicted, classes),
            confusion_counts(labels, predicted, len(classes)),
        )


@dataclass(frozen=True)
class Curves:
    """The test split's ROC and precision-recall points, for the CSVs DVC plots and the PNGs."""

    roc: list[dict[str, float]]
    precision_recall: list[dict[str, float]]
    auc: float | None  # area under `roc`
    subject: str  # what the curves are of: the second class, or the micro average

    @classmethod
    def of(cls, labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]) -> Curves:
        outcomes, scores = curve_inputs(labels, probabilities)
        subject = classes[1] if len(classes) == 2 else f"micro average of {len(classes)} classes"
        return cls(
            roc_points(outcomes, scores),
            precision_recall_points(outcomes, scores),
            curve_auc(outcomes, scores),
            subject,
        )


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
    """Predict every split with the export stage's engine (what batch prediction and the service
    run), write artifacts/evaluate/ and reports/metrics.json, and (given `mlflow_params`) log them
    into train's run when artifacts/train/mlflow_run.json names one. `classes`: the model's
    classes, in its order."""
    model = exported_engine(paths)
    results = predict_splits(paths, classes, params, model)
    tables = {
        split: ClassTables.of(result, classes)
        for split, result in results.items()
        if len(result.data)
    }
    metrics = {
        split: split_metrics(result, tables.get(split), params) for split, result in results.items()
    }
    test = results["test"]
    curves = Curves.of(test.data.labels, test.probabilities, classes)
    with atomic_dir(paths.evaluate_dir) as out:
        write_predictions(out / paths.predictions.name, results, classes, paths.root)
        write_class_tables(out, tables, classes)
        write_plot_data(out, test, curves, classes)
        draw_test_pngs(out, test, curves, tables.get("test"), metrics["test"], classes, params)
        plots.plot_training_curves(out / "training_curves.png", paths.history)
    if precision_check := reduced_precision_check(paths, test.data, params):
        metrics["reduced_precision"] = precision_check
    write_json(paths.metrics, metrics)
    if mlflow_params is None or not paths.mlflow_run.is_file():
        return Evaluation(metrics, None)
    run_id = read_json(paths.mlflow_run)["run_id"]
    log_to_mlflow(paths, mlflow_params, metrics, run_id)
    return Evaluation(metrics, run_id)


def split_metrics(
    result: SplitPredictions, tables: ClassTables | None, params: EvaluateParams
) -> dict[str, Any]:
    """metrics.json's section of one split: its scalars, then its per-class table if any."""
    scalars = compute_metrics(
        result.data.labels,
        result.probabilities,
        params.threshold,
        params.calibration_bins,
        params.top_k,
    )
    return scalars if tables is None else scalars | {"per_class": tables.per_class}


def reduced_precision_check(
    paths: Paths, test: LabelledFiles, params: EvaluateParams
) -> dict[str, Any] | None:
    """For an engine exported at reduced precision (export.precision float16 or int8): its
    engine and precision, and the float Keras model's metrics on the same test split, which the
    register gate compares with the engine's. None for float32: that engine agrees with Keras
    to export.tolerance, so Keras is not run again."""
    export = read_json(paths.export_report)
    if export["precision"] == "float32":
        return None
    keras = KerasEngine(load_model(paths.model))
    probabilities = predict_probabilities(keras, test.files, params.batch_size, "evaluate keras")
    return {
        "engine": export["engine"],
        "precision": export["precision"],
        "float32_test": split_metrics(
            SplitPredictions.of(test, probabilities, params.threshold), None, params
        ),
    }


def predict_splits(
    paths: Paths, classes: Sequence[str], params: EvaluateParams, model
) -> Predicted:
    results = {}
    for split in SPLITS:
        data = read_split(paths.split_manifest(split), classes, paths.root)
        probabilities = predict_probabilities(
            model, data.files, params.batch_size, f"evaluate {split}"
        )
        if probabilities.shape[1] != len(classes):
            raise ValueError(
                f"the exported model gives {probabilities.shape[1]} class probabilities for "
                f"{len(classes)} classes {list(classes)}"
            )
        results[split] = SplitPredictions.of(data, probabilities, params.threshold)
    return results


def prediction_columns(classes: Sequence[str]) -> list[str]:
    """predictions.tsv's header: two classes keep `probability` (P(second class)) after label."""
    binary = ["probability"] if len(classes) == 2 else []
    probabilities = [f"p_{name}" for name in classes]
    return ["split", "path", "label", *binary, "predicted", "confidence", *probabilities]


def write_predictions(path: Path, results: Predicted, classes: Sequence[str], root: Path) -> None:
    """predictions.tsv: one row per image of every split, paths relative to `root`."""
    write_tsv(
        path,
        (
            _prediction_row(split, result, i, classes, root)
            for split, result in results.items()
            for i in range(len(result.data))
        ),
        prediction_columns(classes),
    )


def _prediction_row(
    split: str, result: SplitPredictions, i: int, classes: Sequence[str], root: Path
) -> dict[str, str]:
    row = result.probabilities[i]
    binary = {"probability": _number(row[1])} if len(classes) == 2 else {}
    return {
        "split": split,
        "path": _relative(result.data.files[i], root),
        "label": classes[int(result.data.labels[i])],
        **binary,
        "predicted": classes[int(result.predicted[i])],
        "confidence": _number(result.confidence[i]),
        **{f"p_{name}": _number(p) for name, p in zip(classes, row, strict=True)},
    }


def write_class_tables(
    out: Path, tables: Mapping[str, ClassTables], classes: Sequence[str]
) -> None:
    """confusion_matrix.json and confused_pairs.csv of the splits in `tables`."""
    pairs = [
        {"split": split} | row
        for split, t in tables.items()
        for row in confused_pairs(t.counts, classes)
    ]
    confusion = {
        split: {"counts": t.counts.tolist(), "row_normalised": row_normalised(t.counts).tolist()}
        for split, t in tables.items()
    }
    write_json(out / "confusion_matrix.json", {"classes": list(classes), "splits": confusion})
    write_csv(out / "confused_pairs.csv", pairs, ("split", "actual", "predicted", "count", "share"))


def write_plot_data(
    out: Path, test: SplitPredictions, curves: Curves, classes: Sequence[str]
) -> None:
    """The CSVs DVC plots read: the test confusion pairs, ROC and precision-recall points."""
    write_csv(
        out / "test_confusion.csv",
        [
            {"actual": classes[int(a)], "predicted": classes[int(p)]}
            for a, p in zip(test.data.labels, test.predicted, strict=True)
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
    test: SplitPredictions,
    curves: Curves,
    tables: ClassTables | None,
    metrics: Mapping[str, Any],
    classes: Sequence[str],
    params: EvaluateParams,
) -> None:
    """ROC, precision-recall, confusion matrix, per-class F1, calibration and worst-mistakes
    PNGs of the test split (a message PNG where a plot is undefined; `tables` is None when the
    split is empty)."""
    plots.plot_roc(out / "roc.png", curves.roc, curves.auc, curves.subject)
    plots.plot_precision_recall(
        out / "precision_recall.png", curves.precision_recall, curves.subject
    )
    if tables is not None:
        draw_class_pngs(out, test, tables, metrics["ece"], classes, params)
    else:
        for name in ("confusion_matrix.png", "per_class_f1.png", "calibration.png"):
            plots.message_png(out / name, name.removesuffix(".png"), "the test split is empty")
    grid = params.misclassified_grid
    picked = worst_mistakes(test.data.labels, test.probabilities, params.threshold, grid)
    mistakes = [
        plots.Mistake(
            file=test.data.files[i],
            actual=classes[int(test.data.labels[i])],
            predicted=classes[int(test.predicted[i])],
            confidence=float(test.confidence[i]),
        )
        for i in picked
    ]
    plots.plot_misclassified(out / "misclassified.png", mistakes, grid)


def draw_class_pngs(
    out: Path,
    test: SplitPredictions,
    tables: ClassTables,
    ece: float,
    classes: Sequence[str],
    params: EvaluateParams,
) -> None:
    """The confusion heat map, per-class F1 bars and calibration of a non-empty test split."""
    binary = len(classes) == 2
    threshold = f", threshold {params.threshold:g}" if binary else ""
    title = f"Confusion matrix (test{threshold})"
    plots.plot_confusion(out / "confusion_matrix.png", tables.counts, classes, title)
    plots.plot_per_class_f1(out / "per_class_f1.png", tables.per_class, "Per-class F1 (test)")
    bins = params.calibration_bins
    outcomes, scores = calibration_inputs(test.data.labels, test.probabilities, params.threshold)
    table = calibration_table(outcomes, scores, bins)
    score, outcome = (
        (f"predicted P({classes[1]})", classes[1])
        if binary
        else ("top-class probability", "correct")
    )
    plots.plot_calibration(out / "calibration.png", table, ece, bins, score, outcome)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """A comma-separated file with a header (DVC plots read these)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _csv_value(row[c]) for c in columns})


def _csv_value(value: Any) -> Any:
    return _number(value) if isinstance(value, float) else value


def _number(value: float) -> str:
    return format(float(value), ".9g")


def _relative(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(os.path.relpath(path, root)).as_posix()


def log_to_mlflow(
    paths: Paths, params: MlflowParams, metrics: Mapping[str, Mapping[str, Any]], run_id: str
) -> None:
    """Log `{split}_{metric}` values, the PNGs, the class tables and metrics.json into train's
    run `run_id`."""
    import mlflow

    from imgclf.tracking import open_run

    # Logged one step after the last epoch: Keras logs a per-epoch `val_accuracy` too, and MLflow
    # shows a metric's latest step, which must be the evaluation of the kept (best) weights.
    epochs = len(paths.history.read_text().splitlines()) - 1 if paths.history.is_file() else 0
    with open_run(params, paths.root, run_id=run_id):
        mlflow.log_metrics(flat_metrics(metrics), step=max(epochs, 0))
        for name in (*PNG_NAMES, *TABLE_NAMES):
            if (paths.evaluate_dir / name).is_file():
                mlflow.log_artifact(str(paths.evaluate_dir / name), artifact_path="evaluate")
        if paths.metrics.is_file():
            mlflow.log_artifact(str(paths.metrics), artifact_path="evaluate")
