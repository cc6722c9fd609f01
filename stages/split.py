"""DVC stage `split`: kept rows of artifacts/dedupe/manifest.tsv -> artifacts/split/*.tsv."""

from __future__ import annotations

from imgclf.config import Paths, load_params
from imgclf.data.split import SPLITS, run_split


def main() -> None:
    params = load_params()
    report = run_split(Paths(), params.split)
    parts = ", ".join(
        f"{name} {report['splits'][name]['total']} {report['splits'][name]['classes']}"
        for name in SPLITS
    )
    print(f"split (seed {params.split.seed}): {report['total']} images -> {parts}")


if __name__ == "__main__":
    main()
