"""Choosing among frozen-backbone candidates (arch, image size, TTA) without the test split:
cross-validated log loss on train + val together, and the one-standard-error rule.

One validation split of a few hundred photos cannot rank candidates whose models each make a
handful of mistakes there; k folds over train + val score every photo of both, out of fold. Each
candidate's frozen features are extracted once (as the train stage does, every view), then per
fold the linear head's regularisation path (`train.linear_head.c`) is fitted on the other folds
and scored on the held-out photos; the strength with the lowest out-of-fold log loss is the
candidate's. Folds keep dedupe's near-duplicate groups whole and the classes stratified.

The rule: the cheapest candidate (measured feature-extraction seconds per photo, every view)
whose log loss is within one standard error of the best's, the error of the paired per-photo
difference. Temperature scaling is left out: it moves log loss by a few 1e-4 (docs/experiments.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from imgclf.config import Paths, TrainParams
from imgclf.io import read_tsv
from imgclf.model.architectures.factory import build_classifier
from imgclf.model.dataset import LabelledFiles, read_split
from imgclf.model.decision import predicted_indices
from imgclf.model.training import Features, frozen_features, head_probabilities, linear_head_path


@dataclass(frozen=True)
class Scored:
    """One candidate's out-of-fold result: per photo of train + val (manifest order) its log
    loss and whether its label was right, at the candidate's best strength `c`."""

    name: str
    c: float
    losses: np.ndarray
    correct: np.ndarray
    seconds_per_photo: float

    @property
    def log_loss(self) -> float:
        return float(self.losses.mean())

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())


@dataclass(frozen=True)
class Compared:
    """A candidate against the best: the paired difference in log loss and its standard error."""

    scored: Scored
    difference: float
    standard_error: float
    cost: float  # seconds per photo against the cheapest candidate's

    def summary(self) -> dict[str, str | float]:
        """The numbers a person compares, without the per-photo arrays."""
        s = self.scored
        return {"candidate": s.name, "c": s.c, "log_loss": s.log_loss, "accuracy": s.accuracy,
                "difference": self.difference, "standard_error": self.standard_error,
                "seconds_per_photo": s.seconds_per_photo, "cost": self.cost}  # fmt: skip


def photo_log_losses(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each photo's log loss, -log p(true class), clipped as scikit-learn's log_loss clips."""
    eps = np.finfo(probabilities.dtype).eps
    return -np.log(np.clip(probabilities[np.arange(len(labels)), labels], eps, 1.0))


def out_of_fold(
    features: Features, groups: np.ndarray, params: TrainParams, units: int, folds: int
) -> tuple[float, np.ndarray, np.ndarray]:
    """(c, per-photo log loss, per-photo correct) of the linear head's path scored out of fold:
    every photo predicted by heads that never saw it nor its near-duplicates."""
    strengths = sorted(params.linear_head.c)
    probabilities = np.zeros((len(strengths), len(features.labels), max(units, 2)))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=params.seed)
    for fit, held in splitter.split(features.labels, features.labels, groups):
        fitted = linear_head_path(_rows(features, fit), strengths, params.class_weights, units)
        for index, (_, kernel, bias) in enumerate(fitted):
            probabilities[index, held] = head_probabilities(features.values[:, held], kernel, bias)
    losses = [photo_log_losses(p, features.labels) for p in probabilities]
    best = int(np.argmin([loss.mean() for loss in losses]))
    correct = predicted_indices(probabilities[best], 0.5) == features.labels
    return strengths[best], losses[best], correct


def _rows(features: Features, index: np.ndarray) -> Features:
    return Features(features.values[:, index], features.labels[index])


def score_candidate(
    name: str,
    params: TrainParams,
    photos: LabelledFiles,
    groups: np.ndarray,
    classes: Sequence[str],
    pretrained_dir: Path,
    folds: int,
) -> Scored:
    """Extract `params`' frozen features of `photos` (timed) and score them out of fold."""
    classifier = build_classifier(params, len(classes), pretrained_dir)
    if not classifier.pretrained or classifier.head is None:
        raise ValueError(
            f"{name}: selection compares pretrained backbones (train.arch: {params.arch})"
        )
    start = time.perf_counter()
    [features] = frozen_features(classifier.backbone, (photos,), params)
    seconds = (time.perf_counter() - start) / len(photos)
    units = classifier.model.output_shape[-1]
    c, losses, correct = out_of_fold(features, groups, params, units, folds)
    return Scored(name, c, losses, correct, seconds)


def compare(scored: Sequence[Scored]) -> list[Compared]:
    """Every candidate against the lowest log loss, paired per photo."""
    best = min(scored, key=lambda s: s.log_loss)
    cheapest = min(s.seconds_per_photo for s in scored)
    compared = []
    for candidate in scored:
        difference = candidate.losses - best.losses
        error = float(difference.std(ddof=1) / np.sqrt(len(difference)))
        cost = candidate.seconds_per_photo / cheapest
        compared.append(Compared(candidate, float(difference.mean()), error, cost))
    return compared


def one_standard_error_choice(compared: Sequence[Compared]) -> Compared:
    """The cheapest candidate within one standard error of the best."""
    close = [c for c in compared if c.difference <= c.standard_error]
    return min(close, key=lambda c: (c.cost, c.difference))


def train_and_val(paths: Paths, classes: Sequence[str]) -> tuple[LabelledFiles, np.ndarray]:
    """The train and val photos as one set, with their near-duplicate group ids."""
    manifests = [paths.split_manifest(name) for name in ("train", "val")]
    parts = [read_split(manifest, classes, paths.root) for manifest in manifests]
    groups = np.array([row["group"] for m in manifests for row in read_tsv(m)])
    photos = LabelledFiles(
        [f for part in parts for f in part.files], np.concatenate([p.labels for p in parts])
    )
    return photos, groups


def run_selection(
    paths: Paths,
    candidates: dict[str, TrainParams],
    classes: Sequence[str],
    folds: int,
) -> tuple[list[Compared], Compared]:
    """Score every candidate on the split's train + val photos; the comparison and the choice."""
    photos, groups = train_and_val(paths, classes)
    scored = [
        score_candidate(name, params, photos, groups, classes, paths.pretrained_dir, folds)
        for name, params in candidates.items()
    ]
    compared = compare(scored)
    return compared, one_standard_error_choice(compared)
