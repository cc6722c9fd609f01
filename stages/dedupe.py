"""DVC stage `dedupe`: artifacts/download/manifest.tsv -> artifacts/dedupe, reports/dedupe.json."""

from __future__ import annotations

from imgclf.config import Paths, load_params
from imgclf.data.dedupe import run_dedupe


def main() -> None:
    params = load_params()
    report = run_dedupe(Paths(), params.dedupe)
    print(
        f"dedupe: {report['images']} images, {report['exact_groups']} exact + "
        f"{report['near_groups']} near groups ({report['images_in_groups']} images), "
        f"{report['removed']} removed, {report['conflicts']} quarantined as label conflicts, "
        f"{report['kept']} kept ({params.dedupe.algorithm}, threshold {params.dedupe.threshold}) "
        f"in {report['seconds']:.1f} s"
    )


if __name__ == "__main__":
    main()
