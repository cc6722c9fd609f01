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
    verdict = "agrees with" if report["passed"] else "DISAGREES with"
    print(
        f"export: {report['engine']} {report['file']} ({report['bytes'] / 1e6:.1f} MB) {verdict} "
        f"Keras on {report['images']} photos: max |dp| {report['max_abs_diff']:.1e}, "
        f"{report['flipped']} labels changed, {report['seconds']:.0f} s -> {paths.export_report}"
    )


if __name__ == "__main__":
    main()
