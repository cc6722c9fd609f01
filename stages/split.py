"""DVC stage `split`: kept rows of artifacts/dedupe/manifest.tsv -> artifacts/split/*.tsv."""

from __future__ import annotations

from imgclf.config import Paths, load_params
from imgclf.data.split import SPLITS, run_split


def main() -> None:
    params = load_params().split
    report = run_split(Paths(), params)
    parts = ", ".join(
        f"{name} {report['splits'][name]['total']} {report['splits'][name]['classes']}"
        for name in SPLITS
    )
    print(f"split (seed {params.seed}): {report['total']} images -> {parts}")


if __name__ == "__main__":
    main()
