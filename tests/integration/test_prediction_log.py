"""The prediction log (imgclf/serving/prediction_log.py, its table imgclf/monitoring/schema.py) on
both backends it is meant for: SQLite (the default) and PostgreSQL (a shared log for several
instances; a real server from tests/support/postgres_server.py). Every test runs on each."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from imgclf.monitoring.schema import PredictionRecord, predictions
from imgclf.serving.prediction_log import (
    ConflictingLabel,
    OtherSubject,
    PredictionLog,
    UnknownPrediction,
)

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty prediction-log database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'log.db'}"
        return
    url = request.getfixturevalue("postgres_url")
    engine = sa.create_engine(url)
    predictions.drop(engine, checkfirst=True)  # the server is shared by the session
    engine.dispose()
    yield url


@pytest.fixture
def log(db_url: str) -> Iterator[PredictionLog]:
    log = PredictionLog(db_url, flush_seconds=10)  # only flush()/close() write promptly
    yield log
    log.close()


def count_rows(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(predictions)).scalar_one()
    finally:
        engine.dispose()


def record(
    i: int, label: str = "cat", version: str = "7", item: int = 0, subject: str | None = None
) -> PredictionRecord:
    """A two-class (cat, dog) answer, asked for by `subject`."""
    dog = 0.25 if label == "cat" else 0.75
    return PredictionRecord(
        request_id=f"r{i}",
        item=item,
        sha256="0" * 64,
        width=4,
        height=3,
        label=label,
        probability=dog,
        model_version=version,
        latency_ms=1.5,
        confidence=max(dog, 1 - dog),
        probabilities={"cat": 1 - dog, "dog": dog},
        subject=subject,
    )


def test_rows_are_batched_and_flushed_on_close(db_url: str) -> None:
    log = PredictionLog(db_url, batch_size=50, flush_seconds=10)
    for i in range(1234):
        log.log(record(i))
    log.close()
    assert count_rows(db_url) == 1234 and log.written == 1234 and log.dropped == 0
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        row = conn.execute(sa.select(predictions).where(predictions.c.request_id == "r7")).one()
    engine.dispose()
    assert (row.label, row.model_version, row.width, row.probability) == ("cat", "7", 4, 0.25)
    assert row.confidence == 0.75 and json.loads(row.probabilities) == {"cat": 0.75, "dog": 0.25}
    assert row.true_label is None and row.feedback_at is None
    log.log(record(0))  # after close: counted as dropped, never raises
    assert log.dropped == 1


def test_a_broken_database_drops_rows_and_counts_them(db_url: str) -> None:
    dropped: list[int] = []
    log = PredictionLog(db_url, on_drop=dropped.append)
    predictions.drop(log.engine)  # inserts now fail
    log.log(record(1))
    log.close()
    assert sum(dropped) == 1


def test_flush_waits_for_the_rows_queued_before_it(log: PredictionLog, db_url: str) -> None:
    for i in range(5):
        log.log(record(i))
    assert log.flush(timeout=10)
    assert count_rows(db_url) == 5  # written although the 10 s batching window is still open


def test_flush_on_an_idle_log_does_not_wait(log: PredictionLog) -> None:
    log.log(record(1))
    assert log.flush(timeout=10)
    # Nothing queued or being written: done without waiting (a zero timeout would fail a wait).
    assert log.flush(timeout=0)


def test_a_label_is_stored_once_and_a_different_one_conflicts(log: PredictionLog) -> None:
    log.log(record(1, label="cat"))
    log.log(record(2, label="dog", item=0))
    log.log(record(2, label="cat", item=1))
    log.flush()
    first = log.record_label("r1", 0, "dog", now=T0)
    assert (first.predicted, first.true_label, first.correct, first.recorded) == (
        "cat", "dog", False, True,
    )  # fmt: skip
    assert log.record_label("r1", 0, "dog").recorded is False  # a retry changes nothing
    with pytest.raises(ConflictingLabel):
        log.record_label("r1", 0, "cat")
    assert log.record_label("r2", 1, "cat").correct  # a batch item, by its index
    with pytest.raises(UnknownPrediction):
        log.record_label("r2", 2, "cat")
    with pytest.raises(UnknownPrediction):
        log.record_label("nobody", 0, "cat")


def test_an_owner_labels_only_its_own_predictions(log: PredictionLog) -> None:
    log.log(record(1, subject="alice"))
    log.log(record(2))  # no subject: auth off, or logged before subjects were kept
    log.flush()
    with pytest.raises(OtherSubject):
        log.record_label("r1", 0, "dog", owner="bob")
    with pytest.raises(OtherSubject):
        log.record_label("r2", 0, "dog", owner="bob")
    assert log.record_label("r1", 0, "cat", owner="alice").recorded  # bob's tries took nothing
    with pytest.raises(OtherSubject):  # not ConflictingLabel: that would tell bob the label
        log.record_label("r1", 0, "dog", owner="bob")
    assert log.record_label("r2", 0, "dog").recorded  # no owner: anyone's (feedback:any)
    with pytest.raises(UnknownPrediction):
        log.record_label("nobody", 0, "cat", owner="bob")


def test_live_scores_are_over_the_latest_labels_of_one_version(log: PredictionLog) -> None:
    before = log.live_scores("7", window=10)
    assert (before.accuracy, before.count, before.recall("cat")) == (None, 0, None)
    # version 7: ten predictions of "cat"; the four labelled last are right, six earlier wrong
    for i in range(10):
        log.log(record(i, label="cat", version="7"))
    log.log(record(99, label="dog", version="8"))
    log.flush()
    for i in range(10):
        truth = "dog" if i < 6 else "cat"
        log.record_label(f"r{i}", 0, truth, now=T0 + dt.timedelta(minutes=i))
    log.record_label("r99", 0, "cat", now=T0)
    everything = log.live_scores("7", window=100)
    assert (everything.accuracy, everything.count) == (pytest.approx(0.4), 10)
    # recall per true class: every cat found (4 of 4), no dog (0 of 6)
    assert (everything.recall("cat"), everything.recall("dog")) == (1.0, 0.0)
    latest = log.live_scores("7", window=4)  # the latest four: all cats, all right
    assert (latest.accuracy, latest.count, latest.recall("dog")) == (1.0, 4, None)
    other = log.live_scores("8", window=100)
    assert (other.accuracy, other.count, other.per_class) == (0.0, 1, {"cat": (1, 0)})


def test_concurrent_labellers_cannot_both_win(log: PredictionLog) -> None:
    log.log(record(1))
    log.flush()
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def label(truth: str) -> None:
        barrier.wait()
        try:
            log.record_label("r1", 0, truth)
            outcomes.append("stored")
        except ConflictingLabel:
            outcomes.append("conflict")
        except sa.exc.OperationalError:  # SQLite: the loser may find the file locked
            outcomes.append("conflict")

    threads = [threading.Thread(target=label, args=(truth,)) for truth in ("cat", "dog")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict", "stored"]


def old_release_log(db_url: str, last_column: str) -> None:
    """The table as a release whose last column was `last_column` created it, with one row."""
    names = [column.name for column in predictions.columns]
    old = sa.MetaData()
    table = sa.Table(
        "predictions",
        old,
        *(column.copy() for column in predictions.columns[: names.index(last_column) + 1]),
    )
    engine = sa.create_engine(db_url)
    old.create_all(engine)
    row = {key: value for key, value in record(1).row().items() if key in table.columns}
    with engine.begin() as conn:
        conn.execute(sa.insert(table), [row])
    engine.dispose()


def test_a_log_from_before_feedback_gains_the_later_columns(db_url: str) -> None:
    """The release before feedback had no true_label/feedback_at columns (nor the K-class ones)."""
    old_release_log(db_url, last_column="latency_ms")
    log = PredictionLog(db_url)
    try:
        assert log.record_label("r1", 0, "cat").correct  # the old row can be labelled
        indexes = {index["name"] for index in sa.inspect(log.engine).get_indexes("predictions")}
    finally:
        log.close()
    assert count_rows(db_url) == 1
    assert "ix_predictions_labelled" in indexes  # live accuracy stays an index scan


def test_a_log_from_before_k_classes_stays_readable(db_url: str) -> None:
    """The release before K classes had no confidence/probabilities: its rows read as NULL there,
    beside new rows that fill them."""
    old_release_log(db_url, last_column="feedback_at")
    log = PredictionLog(db_url)
    log.log(record(2, label="dog"))
    log.close()
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(predictions).order_by(predictions.c.id)).all()
    engine.dispose()
    assert [(r.request_id, r.probability, r.confidence) for r in rows] == [
        ("r1", 0.25, None),
        ("r2", 0.75, 0.75),
    ]
    assert rows[0].probabilities is None and json.loads(rows[1].probabilities)["dog"] == 0.75


def test_a_log_from_before_subjects_gains_the_column(db_url: str) -> None:
    """Its rows have no subject: only a labeller of any subject's predictions labels them."""
    old_release_log(db_url, last_column="probabilities")
    log = PredictionLog(db_url)
    try:
        log.log(record(2, subject="alice"))
        log.flush()
        with pytest.raises(OtherSubject):
            log.record_label("r1", 0, "cat", owner="alice")
        assert log.record_label("r1", 0, "cat").recorded
        assert log.record_label("r2", 0, "cat", owner="alice").recorded
    finally:
        log.close()
