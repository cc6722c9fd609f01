"""Evaluate stage library: metrics, DVC plot data, PNGs, MLflow logging.

Probabilities come from `imgclf.model.inference.predict_probabilities`, the function batch
prediction uses too.

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
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.config import EvaluateParams, MlflowParams, Paths
from imgclf.io import atomic_dir, read_tsv, write_json, write_tsv
from imgclf.model.dataset import read_split
from imgclf.model.inference import load_model, predict_probabilities

SPLITS = ("train", "val", "test")
PREDICTION_COLUMNS = ("split", "path", "label", "probability")
MAX_CURVE_POINTS = 200
PNG_NAMES = (
    "roc.png",
    "precision_recall.png",
    "confusion_matrix.png",
    "calibration.png",
    "misclassified.png",
    "training_curves.png",
)
# Metrics that are counts, not rates: MLflow still logs them (as floats).
COUNT_KEYS = ("tn", "fp", "fn", "tp", "n")


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def calibration_table(
    labels: np.ndarray, probabilities: np.ndarray, bins: int
) -> list[dict[str, float]]:
    """Equal-width bins of P(class 1) on [0, 1] ([a, b), the last one closed), non-empty only:
    bin edges, count, mean predicted probability, observed fraction of class 1."""
    labels = np.asarray(labels, dtype="float64")
    probabilities = np.asarray(probabilities, dtype="float64")
    index = np.minimum((probabilities * bins).astype(int), bins - 1)
    table = []
    for b in range(bins):
        mask = index == b
        if mask.any():
            table.append(
                {
                    "lower": b / bins,
                    "upper": (b + 1) / bins,
                    "count": int(mask.sum()),
                    "mean_probability": float(probabilities[mask].mean()),
                    "fraction_positive": float(labels[mask].mean()),
                }
            )
    return table


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> float:
    """Sum over bins of (bin share) × |fraction of class 1 − mean P(class 1)|."""
    total = len(labels)
    if total == 0:
        return float("nan")
    return float(
        sum(
            row["count"] / total * abs(row["fraction_positive"] - row["mean_probability"])
            for row in calibration_table(labels, probabilities, bins)
        )
    )


def compute_metrics(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float, calibration_bins: int
) -> dict[str, Any]:
    """Binary metrics at `threshold` (predict class 1 when P >= threshold).

    roc_auc is None when the split holds one class only (undefined).
    """
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        log_loss,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    labels = np.asarray(labels, dtype=int)
    probabilities = np.asarray(probabilities, dtype="float64")
    predicted = (probabilities >= threshold).astype(int)
    n = len(labels)
    if n == 0:
        return {"n": 0}
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(labels, predicted, labels=[0, 1]).ravel())
    both = len(np.unique(labels)) == 2
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "precision": float(precision_score(labels, predicted, zero_division=0)),
        "recall": float(recall_score(labels, predicted, zero_division=0)),
        "f1": float(f1_score(labels, predicted, zero_division=0)),
        "roc_auc": float(roc_auc_score(labels, probabilities)) if both else None,
        "log_loss": float(log_loss(labels, np.clip(probabilities, 1e-7, 1 - 1e-7), labels=[0, 1])),
        "ece": expected_calibration_error(labels, probabilities, calibration_bins),
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "tp": tp,
        "n": n,
        "threshold": float(threshold),
    }


def _downsample(rows: list[dict[str, Any]], max_points: int) -> list[dict[str, Any]]:
    """At most `max_points` rows, evenly spread, first and last kept."""
    if len(rows) <= max_points:
        return rows
    keep = np.unique(np.linspace(0, len(rows) - 1, max_points).round().astype(int))
    return [rows[i] for i in keep]


def roc_points(
    labels: np.ndarray, probabilities: np.ndarray, max_points: int = MAX_CURVE_POINTS
) -> list[dict[str, float]]:
    """ROC curve rows (fpr, tpr, threshold); empty when only one class is present. The first
    threshold is `inf` (nothing predicted class 1), as scikit-learn returns it."""
    from sklearn.metrics import roc_curve

    if len(np.unique(labels)) < 2:
        return []
    fpr, tpr, thresholds = roc_curve(labels, probabilities, drop_intermediate=True)
    rows = [
        {"fpr": float(f), "tpr": float(t), "threshold": float(h)}
        for f, t, h in zip(fpr, tpr, thresholds, strict=True)
    ]
    return _downsample(rows, max_points)


def precision_recall_points(
    labels: np.ndarray, probabilities: np.ndarray, max_points: int = MAX_CURVE_POINTS
) -> list[dict[str, float]]:
    """Precision-recall rows (recall, precision, threshold), recall decreasing; scikit-learn's
    final (recall 0, precision 1) point has no threshold and is left out."""
    from sklearn.metrics import precision_recall_curve

    if len(np.unique(labels)) < 2:
        return []
    precision, recall, thresholds = precision_recall_curve(labels, probabilities)
    rows = [
        {"recall": float(r), "precision": float(p), "threshold": float(h)}
        for r, p, h in zip(recall[:-1], precision[:-1], thresholds, strict=True)
    ]
    return _downsample(rows, max_points)


def worst_mistakes(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float, k: int
) -> list[int]:
    """Indices of at most `k` misclassified items, most confident mistake first (largest
    |label − P(class 1)|; ties by index)."""
    labels = np.asarray(labels, dtype=int)
    probabilities = np.asarray(probabilities, dtype="float64")
    wrong = np.flatnonzero((probabilities >= threshold).astype(int) != labels)
    error = np.abs(labels[wrong] - probabilities[wrong])
    order = np.lexsort((wrong, -error))  # primary key last: error descending, then index
    return [int(i) for i in wrong[order][: max(k, 0)]]


# --------------------------------------------------------------------------------------------
# Files and plots
# --------------------------------------------------------------------------------------------


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """A comma-separated file with a header (DVC plots read these)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _csv_value(row[c]) for c in columns})


def _csv_value(value: Any) -> Any:
    return format(value, ".9g") if isinstance(value, float) else value


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _message_png(path: Path, title: str, message: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, wrap=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_roc(path: Path, rows: list[dict[str, float]], auc: float | None) -> None:
    if not rows:
        _message_png(path, "ROC (test)", "undefined: the test split holds one class only")
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([r["fpr"] for r in rows], [r["tpr"] for r in rows], lw=2, label=f"AUC {auc:.4f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)")
    ax.set(xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_precision_recall(path: Path, rows: list[dict[str, float]], positive: str) -> None:
    if not rows:
        _message_png(path, "Precision-recall (test)", "undefined: one class only")
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([r["recall"] for r in rows], [r["precision"] for r in rows], lw=2)
    ax.set(xlabel=f"recall ({positive})", ylabel=f"precision ({positive})")
    ax.set(title="Precision-recall (test)", xlim=(0, 1), ylim=(0, 1.01))
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_confusion(path: Path, metrics: Mapping[str, Any], classes: Sequence[str]) -> None:
    plt = _pyplot()
    matrix = np.array([[metrics["tn"], metrics["fp"]], [metrics["fn"], metrics["tp"]]])
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        share = count / max(matrix[i].sum(), 1)
        colour = "white" if count > matrix.max() / 2 else "black"
        ax.text(j, i, f"{count}\n{share:.1%}", ha="center", va="center", color=colour)
    ax.set_xticks([0, 1], [classes[0], classes[1]])
    ax.set_yticks([0, 1], [classes[0], classes[1]])
    ax.set(xlabel="predicted", ylabel="actual")
    ax.set_title(f"Confusion matrix (test, threshold {metrics['threshold']:g})")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_calibration(
    path: Path, table: list[dict[str, float]], ece: float, positive: str, bins: int
) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfectly calibrated")
    ax.plot(
        [r["mean_probability"] for r in table],
        [r["fraction_positive"] for r in table],
        "o-",
        label=f"model (ECE {ece:.4f})",
    )
    for row in table:
        ax.annotate(
            str(row["count"]),
            (row["mean_probability"], row["fraction_positive"]),
            textcoords="offset points",
            xytext=(4, -10),
            fontsize=7,
            color="grey",
        )
    ax.set(xlabel=f"mean predicted P({positive})", ylabel=f"observed fraction {positive}")
    ax.set(title=f"Calibration (test, {bins} bins; n per bin)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_misclassified(
    path: Path,
    files: Sequence[str],
    labels: np.ndarray,
    probabilities: np.ndarray,
    picked: Sequence[int],
    classes: Sequence[str],
    grid: int,
) -> None:
    """Thumbnails of `picked` with file name, true label and P(class 1) under each."""
    if grid == 0:
        _message_png(path, "Misclassified (test)", "grid disabled (evaluate.misclassified_grid: 0)")
        return
    if not picked:
        _message_png(path, "Misclassified (test)", "no mistakes on the test split")
        return
    from PIL import Image

    plt = _pyplot()
    cols = min(4, len(picked))
    rows = math.ceil(len(picked) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), picked, strict=False):
        try:
            with Image.open(files[i]) as image:
                image.draft("RGB", (256, 256))
                thumb = image.convert("RGB")
                thumb.thumbnail((256, 256))
            ax.imshow(np.asarray(thumb))
        except OSError:
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center")
        ax.set_title(
            f"{Path(files[i]).name}\ntrue {classes[int(labels[i])]}, "
            f"P({classes[1]}) {probabilities[i]:.3f}",
            fontsize=9,
        )
    fig.suptitle(f"Most confident mistakes (test): {len(picked)} shown")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_training_curves(path: Path, history: Path) -> bool:
    """Loss / accuracy (/ learning rate) per epoch from train's history.csv; False if absent."""
    if not history.is_file():
        return False
    with open(history, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return False
    columns = rows[0].keys()

    def series(name: str) -> list[float]:
        return [float(r[name]) if r.get(name) not in (None, "") else math.nan for r in rows]

    epochs = series("epoch") if "epoch" in columns else list(range(len(rows)))
    panels = [
        (title, [c for c in names if c in columns])
        for title, names in (
            ("loss", ("loss", "val_loss")),
            ("accuracy", ("accuracy", "val_accuracy")),
            ("learning rate", ("lr", "learning_rate")),
        )
    ]
    panels = [(title, names) for title, names in panels if names]
    if not panels:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title, names) in zip(axes[0], panels, strict=True):
        for name in names:
            ax.plot(epochs, series(name), marker=".", label=name)
        ax.set(xlabel="epoch", title=title)
        if title == "learning rate":
            ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def _relative(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(os.path.relpath(path, root)).as_posix()


def run_evaluate(
    paths: Paths, classes: Sequence[str], params: EvaluateParams, model=None
) -> dict[str, dict[str, Any]]:
    """Predict every split, write artifacts/evaluate/ and reports/metrics.json; return metrics.

    `model` defaults to the trained one at paths.model.
    """
    if model is None:
        model = load_model(paths.model)
    results = {}
    for split in SPLITS:
        data = read_split(paths.split_manifest(split), classes, paths.root)
        probabilities = predict_probabilities(
            model, data.files, params.batch_size, desc=f"evaluate {split}"
        )
        results[split] = (data, probabilities)
    metrics = {
        split: compute_metrics(data.labels, probs, params.threshold, params.calibration_bins)
        for split, (data, probs) in results.items()
    }

    test, test_probs = results["test"]
    with atomic_dir(paths.evaluate_dir) as out:
        write_tsv(
            out / paths.predictions.name,
            (
                {
                    "split": split,
                    "path": _relative(path, paths.root),
                    "label": classes[int(label)],
                    "probability": format(float(prob), ".9g"),
                }
                for split, (data, probs) in results.items()
                for path, label, prob in zip(data.files, data.labels, probs, strict=True)
            ),
            PREDICTION_COLUMNS,
        )
        predicted = (test_probs >= params.threshold).astype(int)
        write_csv(
            out / "test_confusion.csv",
            [
                {"actual": classes[int(a)], "predicted": classes[int(p)]}
                for a, p in zip(test.labels, predicted, strict=True)
            ],
            ("actual", "predicted"),
        )
        roc = roc_points(test.labels, test_probs)
        pr = precision_recall_points(test.labels, test_probs)
        write_csv(out / "roc.csv", roc, ("fpr", "tpr", "threshold"))
        write_csv(out / "precision_recall.csv", pr, ("recall", "precision", "threshold"))

        test_metrics = metrics["test"]
        plot_roc(out / "roc.png", roc, test_metrics.get("roc_auc"))
        plot_precision_recall(out / "precision_recall.png", pr, classes[1])
        if test_metrics["n"]:
            plot_confusion(out / "confusion_matrix.png", test_metrics, classes)
            table = calibration_table(test.labels, test_probs, params.calibration_bins)
            plot_calibration(
                out / "calibration.png",
                table,
                test_metrics["ece"],
                classes[1],
                params.calibration_bins,
            )
        else:
            for name in ("confusion_matrix.png", "calibration.png"):
                _message_png(out / name, name.removesuffix(".png"), "the test split is empty")
        picked = worst_mistakes(
            test.labels, test_probs, params.threshold, params.misclassified_grid
        )
        plot_misclassified(
            out / "misclassified.png",
            test.files,
            test.labels,
            test_probs,
            picked,
            classes,
            params.misclassified_grid,
        )
        plot_training_curves(out / "training_curves.png", paths.history)
    write_json(paths.metrics, metrics)
    return metrics


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """predictions.tsv rows with `probability` as a float."""
    return [{**row, "probability": float(row["probability"])} for row in read_tsv(path)]


def flat_metrics(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """{"test": {"accuracy": 0.9}} -> {"test_accuracy": 0.9}; None values (undefined) dropped."""
    return {
        f"{split}_{name}": float(value)
        for split, values in metrics.items()
        for name, value in values.items()
        if value is not None and name != "threshold" and math.isfinite(float(value))
    }


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
