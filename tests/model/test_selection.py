"""Backbone selection by cross-validation: every photo scored by heads that never saw it nor its
near-duplicates, and the one-standard-error rule picks the cheapest close candidate."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss

from imgclf.config import TrainParams
from imgclf.model.selection import (
    Scored,
    compare,
    one_standard_error_choice,
    out_of_fold,
    photo_log_losses,
)
from imgclf.model.training import Features

PARAMS = TrainParams(linear_head={"enabled": True, "c": [0.1, 10.0]})


def _features(values: np.ndarray, labels: np.ndarray) -> Features:
    return Features(values[np.newaxis].astype("float32"), labels)


def test_noise_scores_at_chance_out_of_fold_though_the_head_memorises_it() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 240)
    noise = _features(rng.normal(size=(240, 400)), labels)  # more dims than photos: separable
    _, losses, correct = out_of_fold(noise, np.arange(240), PARAMS, units=1, folds=5)
    assert correct.mean() < 0.62
    assert losses.mean() > 0.6


def test_near_duplicates_stay_in_one_fold() -> None:
    # twins share features and label: a fold that split a pair would let the head recall it
    rng = np.random.default_rng(1)
    labels = np.repeat(rng.integers(0, 2, 120), 2)
    twins = _features(np.repeat(rng.normal(size=(120, 400)), 2, axis=0), labels)
    groups = np.repeat(np.arange(120), 2)
    _, _, correct = out_of_fold(twins, groups, PARAMS, units=1, folds=5)
    assert correct.mean() < 0.62
    _, _, leaked = out_of_fold(twins, np.arange(240), PARAMS, units=1, folds=5)
    assert leaked.mean() > 0.9  # the same data split by photo: what the groups prevent


@pytest.mark.parametrize("classes", [2, 3])
def test_separable_classes_score_high(classes: int) -> None:
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(classes), 60)
    centres = rng.normal(scale=4.0, size=(classes, 16))
    values = centres[labels] + rng.normal(size=(len(labels), 16))
    units = 1 if classes == 2 else classes
    c, losses, correct = out_of_fold(_features(values, labels), np.arange(len(labels)), PARAMS,
                                     units=units, folds=4)  # fmt: skip
    assert correct.mean() > 0.95
    assert c in PARAMS.linear_head.c
    assert losses.shape == labels.shape


def test_photo_log_losses_average_to_scikit_learns_log_loss() -> None:
    probabilities = np.array([[0.9, 0.1, 0.0], [0.2, 0.5, 0.3], [0.0, 0.0, 1.0]])
    labels = np.array([0, 2, 0])
    mean = photo_log_losses(probabilities, labels).mean()
    assert mean == pytest.approx(log_loss(labels, probabilities, labels=[0, 1, 2]))


def _scored(name: str, losses: list[float], seconds: float) -> Scored:
    array = np.array(losses)
    return Scored(name, 1.0, array, array < 0.5, seconds)


def test_the_cheapest_candidate_within_one_standard_error_is_chosen() -> None:
    best = _scored("big", [0.10, 0.20, 0.10, 0.30, 0.10, 0.20], seconds=3.0)
    close = _scored("small", [0.12, 0.18, 0.14, 0.30, 0.08, 0.26], seconds=1.0)
    worse = _scored("tiny", [0.90, 0.80, 0.70, 0.90, 0.80, 0.70], seconds=0.5)
    compared = compare([best, close, worse])
    assert [c.scored.name for c in compared] == ["big", "small", "tiny"]
    assert compared[0].difference == 0.0
    assert compared[2].cost == 1.0
    assert one_standard_error_choice(compared).scored.name == "small"


def test_a_cheaper_candidate_clearly_worse_is_not_chosen() -> None:
    best = _scored("big", [0.10, 0.10, 0.10, 0.10], seconds=2.0)
    worse = _scored("small", [0.30, 0.31, 0.29, 0.30], seconds=1.0)
    assert one_standard_error_choice(compare([best, worse])).scored.name == "big"
