"""The two sides of a drift comparison: the prediction log's window and the test split.

The live side is the service's prediction log (`imgclf.monitoring.schema.predictions`), rows
with `start <= timestamp < end`. The reference is the test split as the pipeline saw it: test.tsv
(true labels) joined by path with the download manifest (image sizes) and evaluate's
predictions.tsv (class probabilities), turned into labels by the decision rule
(imgclf/model/decision.py). Both sides' confidence is that rule's: the probability of the
predicted class.

Older files stay readable: a predictions.tsv written before class lists has only `probability`
(P(second class) of a two-class model), and a log row written before the service logged
`confidence` is a two-class answer whose confidence follows from its `probability`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from imgclf.io import read_tsv, redact
from imgclf.model.decision import class_probabilities, confidences, predicted_indices
from imgclf.monitoring.schema import predictions


class DriftInputError(Exception):
    """A missing or unreadable input (database, table, reference file)."""


@dataclass(frozen=True, eq=False)
class Predictions:
    """One side of the comparison, one entry per image. Live-only fields are empty for the
    reference; `true_label` holds None where no ground truth is known."""

    label: np.ndarray  # predicted class name (object)
    confidence: np.ndarray  # probability of the predicted class
    width: np.ndarray
    height: np.ndarray
    true_label: np.ndarray  # object: str | None
    timestamp: tuple[dt.datetime, ...] = ()
    latency_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    model_version: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.label)

    @property
    def megapixels(self) -> np.ndarray:
        return self.width * self.height / 1e6

    @property
    def labelled(self) -> np.ndarray:
        """Boolean mask of the predictions with a true label."""
        return np.array([t is not None for t in self.true_label], dtype=bool)

    def accuracy(self) -> float | None:
        mask = self.labelled
        return float(np.mean(self.label[mask] == self.true_label[mask])) if mask.any() else None


def _predictions(
    label: Sequence[str],
    confidence: np.ndarray,
    width: Sequence[int],
    height: Sequence[int],
    true_label: Sequence[str | None],
    **live: Any,
) -> Predictions:
    return Predictions(
        label=np.array(label, dtype=object),
        confidence=confidence,
        width=np.asarray(width, dtype=float),
        height=np.asarray(height, dtype=float),
        true_label=np.array(true_label, dtype=object),
        **live,
    )


def window(now: dt.datetime, days: float) -> tuple[dt.datetime, dt.datetime]:
    """[now - days, now) in UTC; a naive `now` is taken as UTC."""
    end = (now if now.tzinfo else now.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    return end - dt.timedelta(days=days), end


def _engine(url: str) -> sa.Engine:
    """An engine for an existing database: a missing SQLite file is an error, never created."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise DriftInputError(f"not a database URL: {url!r}") from exc
    database = parsed.database or ""
    is_file = parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:")
    if is_file and not database.startswith("file:") and not Path(database).is_file():
        raise DriftInputError(f"no prediction log at {redact(url)} (file not found)")
    try:
        return sa.create_engine(url)
    except Exception as exc:  # unknown dialect, missing driver
        raise DriftInputError(f"cannot open {redact(url)}: {exc}") from exc


LIVE_COLUMNS = (
    "timestamp",
    "label",
    "probability",
    "confidence",
    "width",
    "height",
    "true_label",
    "latency_ms",
    "model_version",
)


def _utc(stamp: dt.datetime) -> dt.datetime:
    """SQLite keeps no time zone: a naive timestamp is the UTC the service wrote."""
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)


def load_live(
    url: str,
    start: dt.datetime,
    end: dt.datetime,
    threshold: float,
    model_version: str | None = None,
) -> Predictions:
    """Logged predictions with start <= timestamp < end (aware datetimes), oldest first; only
    those of `model_version` when given. `threshold` is the decision rule's (evaluate.threshold).

    A log written by an older release may lack the nullable feedback and confidence columns:
    read as NULL."""
    engine = _engine(url)
    c = predictions.c
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            if not inspector.has_table(predictions.name):
                raise DriftInputError(f"no table {predictions.name!r} in {redact(url)}")
            present = {column["name"] for column in inspector.get_columns(predictions.name)}
            columns = [
                c[name] if name in present or not c[name].nullable else sa.null().label(name)
                for name in LIVE_COLUMNS
            ]
            query = (
                sa.select(*columns)
                .where(
                    c.timestamp >= start.astimezone(dt.UTC), c.timestamp < end.astimezone(dt.UTC)
                )
                .order_by(c.timestamp)
            )
            if model_version is not None:
                query = query.where(c.model_version == model_version)
            rows = conn.execute(query).all()
    except sa.exc.SQLAlchemyError as exc:
        reason = str(exc).splitlines()[0]
        raise DriftInputError(f"cannot read {redact(url)}: {reason}") from exc
    finally:
        engine.dispose()
    return _predictions(
        [r.label for r in rows],
        _live_confidence([r.probability for r in rows], [r.confidence for r in rows], threshold),
        [r.width for r in rows],
        [r.height for r in rows],
        [r.true_label for r in rows],
        timestamp=tuple(_utc(r.timestamp) for r in rows),
        latency_ms=np.array([r.latency_ms for r in rows], dtype=float),
        model_version=tuple(r.model_version for r in rows),
    )


def _live_confidence(
    probability: Sequence[float], confidence: Sequence[float | None], threshold: float
) -> np.ndarray:
    """The logged confidence; where it is NULL (a two-class answer logged before the service
    logged it) the binary rule's, from P(second class)."""
    binary = confidences(class_probabilities(np.asarray(probability, dtype=float)), threshold)
    logged = np.array([np.nan if c is None else c for c in confidence], dtype=float)
    return np.where(np.isnan(logged), binary, logged)


def _read(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise DriftInputError(f"no reference: {path} not found (run `dvc repro evaluate`)")
    return read_tsv(path)


def load_reference(
    test_tsv: Path,
    manifest_tsv: Path,
    predictions_tsv: Path,
    classes: Sequence[str] | None,
    threshold: float,
) -> tuple[Predictions, list[str]]:
    """The test split: true labels (test.tsv), sizes (download manifest), class probabilities
    (evaluate's predictions.tsv, split == "test"), joined by path; and the evaluated classes,
    in order: those of the `p_<class>` columns, or for a file from before them `classes` (the
    params' list; None: `auto`, which such a file cannot be)."""
    test = _read(test_tsv)
    sizes = {r["path"]: r for r in _read(manifest_tsv)}
    evaluated = [r for r in _read(predictions_tsv) if r["split"] == "test"]
    columns, classes = _probability_columns(evaluated[0] if evaluated else {}, classes)
    probabilities = {r["path"]: [float(r[c]) for c in columns] for r in evaluated}
    if not test:
        raise DriftInputError(f"no reference: {test_tsv} has no rows")
    for name, table in (("the download manifest", sizes), (predictions_tsv.name, probabilities)):
        missing = [r["path"] for r in test if r["path"] not in table]
        if missing:
            raise DriftInputError(
                f"reference out of date: {len(missing)} test images are not in {name} "
                f"(e.g. {missing[0]}; run `dvc repro`)"
            )
    p = class_probabilities(np.array([probabilities[r["path"]] for r in test]))
    if p.shape[1] != len(classes):
        raise DriftInputError(
            f"reference out of date: {predictions_tsv.name} holds two-class probabilities but "
            f"there are {len(classes)} classes (run `dvc repro evaluate`)"
        )
    reference = _predictions(
        [classes[i] for i in predicted_indices(p, threshold)],
        confidences(p, threshold),
        [int(sizes[r["path"]]["width"]) for r in test],
        [int(sizes[r["path"]]["height"]) for r in test],
        [r["label"] for r in test],
    )
    return reference, classes


PROBABILITY_PREFIX = "p_"  # predictions.tsv: p_<class>, one column per class in class order


def _probability_columns(
    row: dict[str, str], classes: Sequence[str] | None
) -> tuple[list[str], list[str]]:
    """The columns holding a predictions.tsv row's class probabilities, and the classes they
    name; a file from before class lists holds `probability` alone, P(second class)."""
    columns = [name for name in row if name.startswith(PROBABILITY_PREFIX)]
    if columns:
        return columns, [name.removeprefix(PROBABILITY_PREFIX) for name in columns]
    if classes is None:
        raise DriftInputError(
            "reference out of date: predictions.tsv names no classes (run `dvc repro`)"
        )
    return ["probability"], list(classes)
