"""DVC stage `export`: artifacts/train/model.keras -> artifacts/export/<engine file> and
reports/export.json (its agreement with Keras on real validation photos).

python -m stages.export
"""

from __future__ import annotations

from imgclf.config import Paths, load_params
from imgclf.data.labels import read_classes
from imgclf.model.export import run_export


def main() -> None:
    params, paths = load_params(), Paths()
    report = run_export(paths, params.export, read_classes(paths.split_classes))
    verdict = {True: "agrees with", False: "DISAGREES with", None: "differs from"}[report["passed"]]
    gate = "" if report["passed"] is not None else " (register gates it on the test metric)"
    print(
        f"export: {report['engine']} {report['precision']} {report['file']} "
        f"({report['bytes'] / 1e6:.1f} MB) {verdict} Keras on {report['images']} photos: "
        f"max |dp| {report['max_abs_diff']:.1e}, {report['flipped']} labels changed{gate}, "
        f"{report['seconds']:.0f} s -> {paths.export_report}"
    )


if __name__ == "__main__":
    main()
