"""The evaluate stage's PNGs (matplotlib, headless): ROC, precision-recall, confusion matrix,
calibration, the worst-mistakes grid and train's curves. Each function draws one file."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def message_png(path: Path, title: str, message: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, wrap=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_roc(path: Path, rows: list[dict[str, float]], auc: float | None) -> None:
    if not rows:
        message_png(path, "ROC (test)", "undefined: the test split holds one class only")
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
        message_png(path, "Precision-recall (test)", "undefined: one class only")
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
        message_png(path, "Misclassified (test)", "grid disabled (evaluate.misclassified_grid: 0)")
        return
    if not picked:
        message_png(path, "Misclassified (test)", "no mistakes on the test split")
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
