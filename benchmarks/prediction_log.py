"""The prediction log under a production-sized table (SQLite): what a request pays to log a row,
what the writer sustains, and what the live-accuracy query costs with and without its partial
index (the query every /feedback and every `serve.poll_seconds` runs).

Rows: `--rows` predictions over two model versions, `--labelled` of them with a true label.
Baselines, measured in the same run: a bare `queue.put` for the request path, and the same
live-accuracy query after dropping the index.

    .venv/bin/python benchmarks/prediction_log.py [--rows 300000] [--labelled 0.05]
"""

from __future__ import annotations

import argparse
import datetime as dt
import queue
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.timing import best_rate
from imgclf.monitoring.schema import PredictionRecord, predictions
from imgclf.serving.prediction_log import PredictionLog

WINDOW = 500
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def rows(n: int, labelled: float, seed: int = 0) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    is_labelled = rng.random(n) < labelled
    return [
        {
            "timestamp": T0 + dt.timedelta(seconds=i),
            "request_id": f"{i:032x}",
            "item": 0,
            "sha256": "0" * 64,
            "width": 500,
            "height": 375,
            "label": "cat" if i % 2 else "dog",
            "probability": 0.3,
            "model_version": "7" if i % 4 else "6",
            "latency_ms": 40.0,
            "true_label": ("cat" if i % 3 else "dog") if is_labelled[i] else None,
            "feedback_at": T0 + dt.timedelta(seconds=i + 60) if is_labelled[i] else None,
        }
        for i in range(n)
    ]


def record(i: int) -> PredictionRecord:
    return PredictionRecord(f"r{i}", "0" * 64, 500, 375, "cat", 0.3, "7", 40.0)


def request_path(log: PredictionLog, n: int) -> tuple[float, float]:
    """Rows/s of `log.log()` (what a request pays) against a bare queue.put."""
    bare: queue.Queue[object] = queue.Queue()
    records = [record(i) for i in range(n)]
    logged = best_rate(lambda: [log.log(r) for r in records], n, repeats=3)
    baseline = best_rate(lambda: [bare.put_nowait(r.row()) for r in records], n, repeats=3)
    return logged, baseline


def writer_rate(url: str, n: int) -> float:
    """Rows/s the background writer commits (enqueue n, then close = flush everything)."""
    log = PredictionLog(url)
    start = time.perf_counter()
    for i in range(n):
        log.log(record(i))
    log.close()
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--labelled", type=float, default=0.05)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'log.db'}"
        log = PredictionLog(url)
        with log.engine.begin() as conn:
            conn.execute(sa.insert(predictions), rows(args.rows, args.labelled))

        def query() -> tuple[float | None, int]:
            scores = log.live_scores("7", WINDOW)
            return scores.accuracy, scores.count

        accuracy, count = query()
        indexed = best_rate(query, 1, repeats=20)
        with log.engine.begin() as conn:
            conn.execute(sa.text("DROP INDEX ix_predictions_labelled"))
        assert query() == (accuracy, count)  # same answer, the index only changes the speed
        scanned = best_rate(query, 1, repeats=5)
        logged, bare = request_path(log, 20_000)
        log.close()
        written = writer_rate(f"sqlite:///{Path(folder) / 'writer.db'}", 50_000)

    print(f"table: {args.rows:,} predictions, {args.labelled:.0%} labelled (SQLite)")
    print(f"live accuracy over the last {WINDOW} labels: {accuracy:.4f} on {count}")
    print(
        f"  with the partial index: {1000 / indexed:8.2f} ms   "
        f"without: {1000 / scanned:8.2f} ms   ({indexed / scanned:.0f}x faster)"
    )
    print(
        f"request path, log():      {logged:,.0f} rows/s   bare queue.put: {bare:,.0f} rows/s   "
        f"(ratio {logged / bare:.2f})"
    )
    print(f"background writer:        {written:,.0f} rows/s committed")


if __name__ == "__main__":
    main()
