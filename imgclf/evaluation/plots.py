"""The evaluate stage's PNGs (matplotlib, headless): ROC, precision-recall, the K×K confusion
heat map, per-class F1 bars, calibration, the worst-mistakes grid and train's curves. Each
`plot_*` function draws one file."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgclf.evaluation.metrics import row_normalised

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_ANNOTATED_CLASSES = 15  # confusion cells carry numbers up to this many classes


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


def plot_roc(path: Path, rows: list[dict[str, float]], auc: float | None, subject: str) -> None:
    """The ROC curve of `subject` (the positive class, or the micro average of K classes)."""
    if not rows:
        message_png(path, "ROC (test)", "undefined: the test split holds one class only")
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([r["fpr"] for r in rows], [r["tpr"] for r in rows], lw=2, label=f"AUC {auc:.4f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate")
    ax.set(title=f"ROC (test, {subject})", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_precision_recall(path: Path, rows: list[dict[str, float]], subject: str) -> None:
    if not rows:
        message_png(path, "Precision-recall (test)", "undefined: one class only")
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([r["recall"] for r in rows], [r["precision"] for r in rows], lw=2)
    ax.set(xlabel=f"recall ({subject})", ylabel=f"precision ({subject})")
    ax.set(title="Precision-recall (test)", xlim=(0, 1), ylim=(0, 1.01))
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def confusion_figure(counts: np.ndarray, classes: Sequence[str], title: str) -> Figure:
    """K×K heat map coloured by the share of each actual class (so a rare class reads as well
    as a common one); cells carry count and share up to MAX_ANNOTATED_CLASSES classes, past
    that they would be unreadable and the colour alone tells."""
    plt = _pyplot()
    counts = np.asarray(counts)
    shares = row_normalised(counts)
    k = len(classes)
    annotated = k <= MAX_ANNOTATED_CLASSES
    side = max(4.5, 2 + k * (0.6 if annotated else 0.28))  # inches: a cell stays legible
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the actual class")
    if annotated:
        for (i, j), count in np.ndenumerate(counts):
            colour = "white" if shares[i, j] > 0.5 else "black"
            text = f"{count}\n{shares[i, j]:.1%}"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=8)
    ticks = np.arange(k)
    ax.set_xticks(ticks, list(classes), rotation=0 if k <= 2 else 90)
    ax.set_yticks(ticks, list(classes))
    ax.set(xlabel="predicted", ylabel="actual", title=title)
    return fig


def plot_confusion(path: Path, counts: np.ndarray, classes: Sequence[str], title: str) -> None:
    plt = _pyplot()
    fig = confusion_figure(counts, classes, title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_per_class_f1(path: Path, per_class: Mapping[str, Mapping[str, Any]], title: str) -> None:
    """Horizontal F1 bars (`metrics.per_class_table`), worst class on top, support beside each
    name, the macro average as a dashed line (named in the title: a legend would cover bars)."""
    plt = _pyplot()
    ordered = sorted(per_class.items(), key=lambda item: (item[1]["f1"], item[0]))
    fig, ax = plt.subplots(figsize=(7, 1.5 + 0.25 * len(ordered)))
    names = [f"{name} (n={row['support']})" for name, row in ordered]
    ax.barh(names, [row["f1"] for _, row in ordered], color="tab:blue")
    macro = float(np.mean([row["f1"] for _, row in ordered]))
    ax.axvline(macro, ls="--", color="grey")
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="F1", title=f"{title}; dashed: macro F1 {macro:.4f}")
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_calibration(
    path: Path,
    table: list[dict[str, float]],
    ece: float,
    bins: int,
    score: str,
    outcome: str,
) -> None:
    """Reliability curve: mean `score` per bin against the observed fraction of `outcome`."""
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
    ax.set(xlabel=f"mean {score}", ylabel=f"observed fraction {outcome}")
    ax.set(title=f"Calibration (test, {bins} bins; n per bin)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


@dataclass(frozen=True)
class Mistake:
    """One misclassified image as the grid labels it."""

    file: str
    actual: str
    predicted: str
    confidence: float  # probability of the (wrongly) predicted class


def mistake_caption(mistake: Mistake) -> str:
    return (
        f"{Path(mistake.file).name}\ntrue {mistake.actual}, "
        f"predicted {mistake.predicted} ({mistake.confidence:.3f})"
    )


def plot_misclassified(path: Path, mistakes: Sequence[Mistake], grid: int) -> None:
    """Thumbnails of `mistakes`, each captioned by `mistake_caption`."""
    if grid == 0:
        message_png(path, "Misclassified (test)", "grid disabled (evaluate.misclassified_grid: 0)")
        return
    if not mistakes:
        message_png(path, "Misclassified (test)", "no mistakes on the test split")
        return
    from PIL import Image

    plt = _pyplot()
    cols = min(4, len(mistakes))
    rows = math.ceil(len(mistakes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, mistake in zip(axes.ravel(), mistakes, strict=False):
        try:
            with Image.open(mistake.file) as image:
                image.draft("RGB", (256, 256))
                thumb = image.convert("RGB")
                thumb.thumbnail((256, 256))
            ax.imshow(np.asarray(thumb))
        except OSError:
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center")
        ax.set_title(mistake_caption(mistake), fontsize=9)
    fig.suptitle(f"Most confident mistakes (test): {len(mistakes)} shown")
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
