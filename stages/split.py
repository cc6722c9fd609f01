"""DVC stage `split`: kept rows of artifacts/dedupe/manifest.tsv -> artifacts/split/*.tsv and
classes.json (the class list of reports/download.json)."""

from __future__ import annotations

import sys

from imgclf.config import Paths, load_params
from imgclf.data.labels import ClassListError
from imgclf.data.split import SPLITS, run_split


def main() -> int:
    params = load_params()
    try:
        report = run_split(Paths(), params.split)
    except ClassListError as exc:
        # A class too small to split: one line before any training, no traceback.
        print(f"split: {exc}", file=sys.stderr)
        return 1
    parts = ", ".join(
        f"{name} {report['splits'][name]['total']} {report['splits'][name]['classes']}"
        for name in SPLITS
    )
    print(f"split (seed {params.split.seed}): {report['total']} images -> {parts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
