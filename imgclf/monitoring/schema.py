"""The prediction log's table: what the service writes and the drift monitor reads.

One definition for both sides, here below serving, so that monitoring never imports the service.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
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
    sa.Column(
        "probability",
        sa.Float,
        nullable=False,
        comment="two classes: P(second class), the model's output; more: the confidence",
    ),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    # Ground truth, filled later by POST /feedback (NULL until someone labels the request).
    sa.Column("true_label", sa.String(64), nullable=True),
    sa.Column("feedback_at", sa.DateTime(timezone=True), nullable=True),
    # The K-class answer (NULL in rows logged before the service answered K classes).
    sa.Column("confidence", sa.Float, nullable=True, comment="probability of the predicted class"),
    sa.Column(
        "probabilities",
        sa.Text,
        nullable=True,
        comment="JSON object class -> probability, every class in the model's order",
    ),
    # Who asked (NULL: auth off, a token without `sub`, or logged before subjects were kept):
    # only that subject may label the prediction, unless its token has the feedback:any scope.
    sa.Column("subject", sa.Text, nullable=True, comment="the bearer token's `sub`"),
)
labelled = predictions.c.true_label.is_not(None)
# Live accuracy reads a version's latest labels: a partial index holds only labelled rows, so
# the query never walks the (many more) unlabelled ones, whatever the table's size.
sa.Index(
    "ix_predictions_labelled",
    predictions.c.model_version,
    predictions.c.feedback_at,
    postgresql_where=labelled,
    sqlite_where=labelled,
)


@dataclass(frozen=True)
class PredictionRecord:
    """One logged prediction, as the service knows it when it answers."""

    request_id: str
    sha256: str
    width: int
    height: int
    label: str
    probability: float  # two classes: P(second class); more: the confidence (column comment)
    model_version: str
    latency_ms: float
    item: int = 0
    timestamp: dt.datetime | None = None
    confidence: float | None = None
    probabilities: Mapping[str, float] | None = None  # class -> probability, the model's order
    subject: str | None = None  # the caller's token `sub`

    def row(self) -> dict[str, Any]:
        row = asdict(self)
        row["timestamp"] = self.timestamp or dt.datetime.now(dt.UTC)
        if self.probabilities is not None:
            row["probabilities"] = json.dumps(dict(self.probabilities))
        return row


def create_or_upgrade(engine: sa.Engine) -> None:
    """Create the table, or upgrade a log created by an older release in place: its columns are
    a prefix of today's, and every later column is nullable, so ADD COLUMN (and the indexes) is
    the whole migration."""
    metadata.create_all(engine)
    present = {column["name"] for column in sa.inspect(engine).get_columns(predictions.name)}
    with engine.begin() as conn:
        for column in predictions.columns:
            if column.name not in present:
                kind = column.type.compile(dialect=engine.dialect)
                conn.execute(
                    sa.text(f"ALTER TABLE {predictions.name} ADD COLUMN {column.name} {kind}")
                )
                logger.warning("prediction log: added column %s", column.name)
        for index in predictions.indexes:
            index.create(conn, checkfirst=True)
