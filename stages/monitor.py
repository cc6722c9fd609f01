"""Drift report: the last days of the service's prediction log against the test split.

python -m stages.monitor [--db URL] [--days N] [--model-version V] [--out DIR] [--now ISO]
                        [--root DIR]

Writes DIR/report.html (self-contained), DIR/drift.png and DIR/drift.json (default DIR:
artifacts/monitor) and prints a summary. The database defaults to the service's prediction log:
$IMGCLF_PREDICTION_DB_URL, else params serve.prediction_db (a bare file name is a SQLite file in
the current directory, as for the service). Thresholds: params.yaml `monitor:`; the checks are
described in imgclf/monitoring/drift/checks.py.

Exit status: 0 nothing flagged (including "insufficient data"), 1 drift flagged, 2 bad input
(no database, no predictions table, no reference files).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from imgclf.config import PROJECT_ROOT


def _instant(text: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date/time: {text!r}") from exc


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stages.monitor", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--db",
        default=None,
        help="prediction log (SQLAlchemy URL or SQLite file); "
        "default: $IMGCLF_PREDICTION_DB_URL or serve.prediction_db",
    )
    parser.add_argument("--days", type=int, default=None, help="window; default: monitor.days")
    parser.add_argument(
        "--out", type=Path, default=None, help="report folder; default: artifacts/monitor"
    )
    parser.add_argument(
        "--now",
        type=_instant,
        default=None,
        help="end of the window, ISO 8601 (naive = UTC); default: now",
    )
    parser.add_argument(
        "--model-version",
        default=None,
        help="only predictions of this registry version (the one the reference evaluated); "
        "default: all",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=PROJECT_ROOT,
        help="project whose artifacts/ hold the reference (test split); default: this repo",
    )
    args = parser.parse_args(argv)
    if args.days is not None and args.days < 1:
        parser.error("--days must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from imgclf.config import Paths, load_params
    from imgclf.monitoring.drift.inputs import DriftInputError
    from imgclf.monitoring.drift.report import run_monitor, summary_lines
    from imgclf.serving.settings import database_url

    params, paths = load_params(), Paths(args.root)
    db = args.db or os.environ.get("IMGCLF_PREDICTION_DB_URL") or params.serve.prediction_db
    try:
        report, files = run_monitor(
            paths,
            params,
            database_url(db, Path.cwd()),
            args.now or dt.datetime.now(dt.UTC),
            days=args.days,
            model_version=args.model_version,
            out_dir=args.out,
        )
    except DriftInputError as exc:
        print(f"monitor: {exc}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(report)))
    print(f"report: {files['report.html']}")
    return 1 if report.flagged else 0


if __name__ == "__main__":
    sys.exit(main())
