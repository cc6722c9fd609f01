"""Every prediction, logged to a database through SQLAlchemy, off the request's critical path.

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
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa

logger = logging.getLogger(__name__)

metadata = sa.MetaData()
predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("request_id", sa.String(64), nullable=False, index=True),
    sa.Column("item", sa.Integer, nullable=False, default=0),  # position in a batch request
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("label", sa.String(64), nullable=False),
    sa.Column("probability", sa.Float, nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    # Ground truth, filled later by POST /feedback (NULL until someone labels the request).
    sa.Column("true_label", sa.String(64), nullable=True),
    sa.Column("feedback_at", sa.DateTime(timezone=True), nullable=True, index=True),
)


@dataclass(frozen=True)
class PredictionRecord:
    request_id: str
    sha256: str
    width: int
    height: int
    label: str
    probability: float
    model_version: str
    latency_ms: float
    item: int = 0
    timestamp: dt.datetime | None = None

    def row(self) -> dict[str, Any]:
        row = asdict(self)
        row["timestamp"] = self.timestamp or dt.datetime.now(dt.UTC)
        return row


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
        metadata.create_all(self.engine)
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
            item = self.queue.get()
            if item is _STOP:
                stopping = True
            else:
                rows.append(item)
            while not stopping and len(rows) < self.batch_size:
                try:
                    item = self.queue.get(timeout=self.flush_seconds if rows else None)
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                else:
                    rows.append(item)
            if stopping:  # drain whatever is left behind the sentinel's producers
                while True:
                    try:
                        item = self.queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not _STOP:
                        rows.append(item)
            self._write(rows)

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


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def count_rows(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(predictions)).scalar_one()
    finally:
        engine.dispose()
