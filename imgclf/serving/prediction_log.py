"""Every prediction, logged to a database through SQLAlchemy, off the request's critical path.

The table is imgclf/monitoring/schema.py's (the drift monitor reads it too); this is the writer.

`PredictionLog.log()` only puts a row on an in-memory queue; one background thread takes rows in
batches (up to `batch_size`, or whatever arrived within `flush_seconds`) and inserts each batch in
one transaction. `close()` drains the queue and flushes before returning, so a graceful shutdown
(SIGTERM) loses nothing. When the queue is full (the database is down or slow), rows are dropped
and counted rather than blocking requests.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from imgclf.monitoring.schema import PredictionRecord, create_or_upgrade, labelled, predictions

logger = logging.getLogger(__name__)


class UnknownPrediction(LookupError):
    """No logged prediction has this request id and index."""


class OtherSubject(PermissionError):
    """The prediction was asked for under another token subject."""


class ConflictingLabel(ValueError):
    """The prediction already carries a different true label."""


@dataclass(frozen=True)
class LabelledPrediction:
    request_id: str
    item: int
    predicted: str
    true_label: str
    model_version: str
    recorded: bool  # False: this very label was there already (a retried feedback call)

    @property
    def correct(self) -> bool:
        return self.predicted == self.true_label


@dataclass(frozen=True)
class LiveScores:
    """Labelled predictions of one version: true class -> (how many, how many predicted right)."""

    per_class: dict[str, tuple[int, int]]

    @property
    def count(self) -> int:
        return sum(count for count, _ in self.per_class.values())

    @property
    def accuracy(self) -> float | None:
        """Share predicted right; None before any feedback."""
        correct = sum(right for _, right in self.per_class.values())
        return correct / self.count if self.count else None

    def recall(self, label: str) -> float | None:
        """Share of the predictions labelled `label` that predicted it; None when none was."""
        count, right = self.per_class.get(label, (0, 0))
        return right / count if count else None


_STOP = object()


class PredictionLog:
    def __init__(
        self,
        url: str,
        *,
        batch_size: int = 256,
        flush_seconds: float = 0.5,
        max_queue: int = 100_000,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        create_or_upgrade(self.engine)
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self.on_drop = on_drop
        self.dropped = 0
        self.written = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def log(self, record: PredictionRecord) -> None:
        """Queue one row; never blocks, never raises."""
        if self._closed:
            self._drop(1)
            return
        try:
            self.queue.put_nowait(record.row())
        except queue.Full:
            self._drop(1)

    def _drop(self, n: int) -> None:
        self.dropped += n
        if self.on_drop is not None:
            self.on_drop(n)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            rows: list[Mapping[str, Any]] = []
            waiters: list[threading.Event] = []
            taken = 1
            stopping = _sort(self.queue.get(), rows, waiters)
            # A flush waiter ends the batch at once: someone is waiting for exactly these rows.
            while not stopping and not waiters and len(rows) < self.batch_size:
                try:
                    item = self.queue.get(timeout=self.flush_seconds if rows else None)
                except queue.Empty:
                    break
                taken += 1
                stopping = _sort(item, rows, waiters)
            if stopping:  # drain whatever is left behind the sentinel's producers
                while True:
                    try:
                        _sort(self.queue.get_nowait(), rows, waiters)
                    except queue.Empty:
                        break
                    taken += 1
            self._write(rows)
            for _ in range(taken):  # unfinished_tasks: queued items not yet written
                self.queue.task_done()
            for waiter in waiters:
                waiter.set()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every row queued before this call is in the database (or was dropped);
        False when that took longer than `timeout`."""
        if self._closed:
            return not self._thread.is_alive()
        if self.queue.unfinished_tasks == 0:  # nothing queued or being written: no wait at all
            return True
        done = threading.Event()
        try:
            self.queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def _write(self, rows: list[Mapping[str, Any]]) -> None:
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            try:
                with self.engine.begin() as conn:
                    conn.execute(sa.insert(predictions), chunk)
                self.written += len(chunk)
            except Exception:
                logger.exception("prediction log: %d rows lost", len(chunk))
                self._drop(len(chunk))

    def record_label(
        self,
        request_id: str,
        item: int,
        true_label: str,
        now: dt.datetime | None = None,
        owner: str | None = None,
    ) -> LabelledPrediction:
        """Store the ground truth beside a logged prediction; with an `owner`, only on a
        prediction that subject asked for (OtherSubject otherwise, before anything else about
        it is told). The same label again is a no-op (recorded=False); a different one raises
        ConflictingLabel: the first answer stands."""
        key = (predictions.c.request_id == request_id) & (predictions.c.item == item)
        unlabelled = key & predictions.c.true_label.is_(None)
        if owner is not None:
            unlabelled &= predictions.c.subject == owner
        with self.engine.begin() as conn:
            # Conditional update first: of two concurrent labellers exactly one gets rowcount 1.
            recorded = (
                conn.execute(
                    sa.update(predictions)
                    .where(unlabelled)
                    .values(true_label=true_label, feedback_at=now or dt.datetime.now(dt.UTC))
                ).rowcount
                > 0
            )
            columns = (
                predictions.c.label,
                predictions.c.model_version,
                predictions.c.true_label,
                predictions.c.subject,
            )
            row = conn.execute(sa.select(*columns).where(key)).first()
        if row is None:
            raise UnknownPrediction(f"no logged prediction {request_id} (index {item})")
        if owner is not None and row.subject != owner:
            raise OtherSubject(f"{request_id} (index {item}) was asked for by another subject")
        if row.true_label != true_label:
            raise ConflictingLabel(
                f"{request_id} (index {item}) is already labelled {row.true_label}"
            )
        return LabelledPrediction(
            request_id, item, row.label, true_label, row.model_version, recorded
        )

    def live_scores(self, model_version: str, window: int) -> LiveScores:
        """The last `window` labelled predictions of a version, counted per true class."""
        recent = (
            sa.select(predictions.c.label, predictions.c.true_label)
            .where(predictions.c.model_version == model_version)
            .where(labelled)
            .order_by(predictions.c.feedback_at.desc(), predictions.c.id.desc())
            .limit(window)
            .subquery()
        )
        hit = sa.case((recent.c.label == recent.c.true_label, 1), else_=0)
        per_class = sa.select(recent.c.true_label, sa.func.count(), sa.func.sum(hit)).group_by(
            recent.c.true_label
        )
        with self.engine.connect() as conn:
            rows = conn.execute(per_class).all()
        return LiveScores({label: (count, int(correct)) for label, count, correct in rows})

    def close(self, timeout: float = 30.0) -> None:
        """Flush every queued row, stop the thread, release the engine. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.queue.put(_STOP, timeout=timeout)  # a full queue and a hung DB must not hang us
        except queue.Full:
            logger.error("prediction log: queue still full after %.0f s; rows lost", timeout)
            return
        self._thread.join(timeout)
        if self._thread.is_alive():  # the writer still holds a connection: leave the engine be
            logger.error("prediction log: writer did not finish within %.0f s", timeout)
            return
        self.engine.dispose()


def _sort(item: Any, rows: list[Mapping[str, Any]], waiters: list[threading.Event]) -> bool:
    """File one queued item under rows or flush waiters; True for the stop sentinel."""
    if item is _STOP:
        return True
    if isinstance(item, threading.Event):
        waiters.append(item)
    else:
        rows.append(item)
    return False


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
