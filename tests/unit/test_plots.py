"""The evaluate stage's PNGs for any number of classes (imgclf/evaluation/plots.py): the K×K
confusion heat map stays readable at K = 50, per-class F1 bars, the worst-mistakes captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.evaluation.metrics import per_class_table
from imgclf.evaluation.plots import (
    MAX_ANNOTATED_CLASSES,
    Mistake,
    confusion_figure,
    mistake_caption,
    plot_confusion,
    plot_misclassified,
    plot_per_class_f1,
)

BINARY = ["cat", "dog"]


@pytest.fixture(autouse=True)
def close_figures():
    """confusion_figure hands its figure to the caller: these tests inspect, then close it."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def confusion_of(k: int, seed: int = 0) -> np.ndarray:
    """Mostly right, some mistakes off the diagonal."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 3, (k, k)) + np.diag(rng.integers(10, 30, k))


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def cell_texts(figure) -> list[str]:
    return [text.get_text() for text in figure.axes[0].texts]


def test_small_confusion_cells_carry_count_and_share() -> None:
    counts = np.array([[8, 2], [1, 9]])
    figure = confusion_figure(counts, BINARY, "Confusion matrix (test, threshold 0.5)")
    assert cell_texts(figure) == ["8\n80.0%", "2\n20.0%", "1\n10.0%", "9\n90.0%"]
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == BINARY
    assert figure.axes[0].get_xticklabels()[0].get_rotation() == 0


def test_fifty_classes_drop_cell_numbers_and_rotate_the_names(tmp_path: Path) -> None:
    classes = [f"class_{i:02d}" for i in range(50)]
    figure = confusion_figure(confusion_of(50), classes, "Confusion matrix (test)")
    assert cell_texts(figure) == []
    axis = figure.axes[0]
    names = axis.get_xticklabels()
    assert [t.get_text() for t in names] == classes
    assert {t.get_rotation() for t in names} == {90}
    assert [t.get_text() for t in axis.get_yticklabels()] == classes

    out = tmp_path / "confusion.png"
    plot_confusion(out, confusion_of(50), classes, "Confusion matrix (test)")
    width, height = png_size(out)
    assert min(width, height) >= 50 * 20  # at least 20 px per class: names do not overlap


@pytest.mark.parametrize("k", [MAX_ANNOTATED_CLASSES, MAX_ANNOTATED_CLASSES + 1])
def test_cell_numbers_stop_past_the_limit(k: int) -> None:
    figure = confusion_figure(confusion_of(k), [f"c{i}" for i in range(k)], "t")
    assert len(cell_texts(figure)) == (k * k if k <= MAX_ANNOTATED_CLASSES else 0)


def test_per_class_f1_bars_grow_with_the_classes(tmp_path: Path) -> None:
    sizes = {}
    for k in (3, 50):
        classes = [f"class_{i:02d}" for i in range(k)]
        labels = np.arange(200) % k
        predicted = np.where(np.arange(200) % 7 == 0, (labels + 1) % k, labels)
        out = tmp_path / f"f1_{k}.png"
        plot_per_class_f1(out, per_class_table(labels, predicted, classes), "Per-class F1 (test)")
        sizes[k] = png_size(out)
    assert sizes[50][1] > 3 * sizes[3][1]  # one bar per class, each as tall as before


def test_mistakes_are_captioned_true_predicted_and_probability(tmp_path: Path) -> None:
    photo = tmp_path / "fox.7.jpg"
    Image.new("RGB", (64, 48), (200, 120, 40)).save(photo)
    mistake = Mistake(str(photo), actual="fox", predicted="dog", confidence=0.91234)
    assert mistake_caption(mistake) == "fox.7.jpg\ntrue fox, predicted dog (0.912)"
    out = tmp_path / "grid.png"
    plot_misclassified(out, [mistake, Mistake("missing.jpg", "cat", "fox", 0.6)], grid=4)
    assert png_size(out)[0] > 300
    plot_misclassified(out, [], grid=4)  # no mistakes: a message instead of an empty grid
    assert png_size(out)[0] > 100
